"""Receive decisions for TCP_ZEROCOPY_RECEIVE, without I/O (sans-I/O; reused by zcnet.aio).

Theory of operation (net/ipv4/tcp.c ``tcp_zerocopy_receive``; docs/ARCHITECTURE.md, 'Receive:
mappable pages'): one zero-copy call maps whole pages into a window, copies a short unmappable tail
into the copy buffer and hints how many following bytes must be read with ``recv``
(``recv_skip_hint``). Pages are mappable only if the sender's segments are page-aligned order-0
frags; otherwise every call degenerates into a tiny copy that costs more than a plain ``recv_into``.
:class:`RxLedger` counts mapped and copied bytes, each copy with its reason. :class:`RxDecider`
sizes each request and judges every run of ``probe_calls`` zero-copy calls that returned data, for
the connection's whole life (a sender may stop using MSG_ZEROCOPY after its first copied completion,
making the pages unmappable later), switching to copy mode for good, unless zero-copy is forced,
when:

* (almost) nothing was mapped (a copying sender, an MSS that is not a page multiple); or
* the mapped runs are short and cut by unmappable bytes: at the default loopback MTU each
  segment maps 15 pages and leaves a 4024-byte tail, so ~94 % of bytes are mapped yet every
  call costs a zero-copy call plus a ``recv`` per segment, measured at 8x the CPU of a copy.

Failures to map are of two kinds (:func:`map_error_kind`). A kernel or socket that cannot do it
(``EOPNOTSUPP``, ``ENODEV``, ``EINVAL`` from an old kernel, ...) will not start doing it later:
the connection switches to copy mode for good. A shortage of a resource
(:data:`TRANSIENT_MAP_ERRNOS`: the address space or ``vm.max_map_count`` for a window's
``mmap``, page-table memory in ``vm_insert_pages``) may pass: :meth:`RxDecider.map_failed` has
that one receive copy and the next ``1, 2, 4, ...`` (at most ``max_backoff``) receives that would
map copy too (``"map_backoff"``), then mapping is tried again; a successful zero-copy call resets
the backoff. Counting receives rather than time keeps this free of clocks.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "COPY_REASONS",
    "TRANSIENT_MAP_ERRNOS",
    "UNSUPPORTED_MAP_ERRNOS",
    "MapErrorKind",
    "Request",
    "RxDecider",
    "RxLedger",
    "RxMode",
    "map_error_kind",
]

RxMode = Literal["zerocopy", "copy"]
MapErrorKind = Literal["transient", "unsupported", "other"]

#: Errors of a window ``mmap`` or a ``TCP_ZEROCOPY_RECEIVE`` call that say a resource ran short
#: for now: ``ENOMEM`` (``RLIMIT_AS``, ``vm.max_map_count``, kernel memory), ``EAGAIN`` (mmap:
#: locked-memory limit), ``EMFILE``/``ENFILE`` (a mapping path that needs a file descriptor,
#: e.g. CPython's ``mmap.mmap(fd)``, which dups it). Retried after a backoff.
TRANSIENT_MAP_ERRNOS: Final = frozenset({errno.ENOMEM, errno.EAGAIN, errno.EMFILE, errno.ENFILE})

#: Errors that say this kernel or socket cannot map received pages at all: ``ENOPROTOOPT`` or
#: ``EINVAL`` (kernel without ``TCP_ZEROCOPY_RECEIVE``, or a struct it does not accept),
#: ``EOPNOTSUPP``/``ENODEV`` (no ``mmap`` for this socket), ``EACCES``/``EPERM`` (refused by a
#: security module or seccomp). The connection copies for good.
UNSUPPORTED_MAP_ERRNOS: Final = frozenset({
    errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.ENODEV, errno.EACCES, errno.EPERM,
})


def map_error_kind(code: int | None) -> MapErrorKind:
    """Classify the ``errno`` of a failed window ``mmap`` or zero-copy call.

    ``"transient"``: retry later (:data:`TRANSIENT_MAP_ERRNOS`); ``"unsupported"``: copy for
    good (:data:`UNSUPPORTED_MAP_ERRNOS`); ``"other"``: neither (e.g. a connection error, which
    the caller raises).
    """
    if code in TRANSIENT_MAP_ERRNOS:
        return "transient"
    if code in UNSUPPORTED_MAP_ERRNOS:
        return "unsupported"
    return "other"

#: Why bytes were copied rather than mapped.
COPY_REASONS: Final = (
    "copybuf_tail",   # the kernel copied an unmappable tail into the copy buffer
    "skip_hint",      # unmappable bytes read with recv_into after the kernel's recv_skip_hint
    "small_request",  # the caller asked for less than one page
    "windows_busy",   # every window was held by live chunks and the ring was full
    "copy_mode",      # the connection had switched to recv_into
    "user_buffer",    # Receiver.recv_into: the caller's buffer is the destination
    "map_backoff",    # mapping failed for want of a resource (EMFILE, ENOMEM, ...): retried later
)


@dataclass(slots=True)
class RxLedger:
    """Running totals of one connection's received bytes."""

    bytes_mapped: int = 0
    bytes_copied: int = 0
    calls: int = 0
    copy_reasons: dict[str, int] = field(default_factory=dict)

    def mapped(self, nbytes: int) -> None:
        """Count ``nbytes`` mapped into a window."""
        self.bytes_mapped += nbytes

    def copied(self, nbytes: int, reason: str) -> None:
        """Count ``nbytes`` copied, for ``reason`` (one of :data:`COPY_REASONS`)."""
        if reason not in COPY_REASONS:
            raise ValueError(f"unknown copy reason {reason!r}")
        if nbytes:
            self.bytes_copied += nbytes
            self.copy_reasons[reason] = self.copy_reasons.get(reason, 0) + nbytes

    @property
    def mapped_fraction(self) -> float:
        """Mapped bytes over all bytes received (0.0 before any byte)."""
        total = self.bytes_mapped + self.bytes_copied
        return self.bytes_mapped / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Request:
    """How to issue one zero-copy call: ``map_len`` bytes of window (a page multiple)."""

    map_len: int


class RxDecider:
    """Per-connection receive decisions: request sizes and the copy-fallback detector.

    Args:
        page_size: the kernel's page size.
        probe_calls: zero-copy calls returning data per judgement (the detector judges every
            such run of calls, not only the first).
        force_zerocopy: never switch to copy mode.
        min_mapped_fraction: below this fraction of bytes mapped in a run, switch.
        min_cut_run: when at least half the calls of a run had their mapping cut short by
            unmappable bytes, switch unless they mapped at least this many bytes per call.
        min_map_bytes: requests smaller than this are copied, not mapped: a zero-copy call costs
            a system call, page-table updates and a TLB flush whatever its size, a copy of a
            few pages costs less (measured here: 4 KB requests mapped cost 1.5x the server CPU
            of copies). The receive side's counterpart of the send threshold.
        cut_warmup: bytes received before runs are judged by ``min_cut_run``: a connection's
            first segments are short whatever the MSS (measured here: the first eight calls
            map 7 pages and copy a tail), so only the steady state is judged.
        max_backoff: the most receives copied after a transient mapping failure before mapping
            is tried again (the backoff doubles from 1 up to this; see :meth:`map_failed`).

    Attributes:
        transient_failures: transient mapping failures seen (each one copied one receive).
        retries: mapping attempts made after a backoff ran out.
    """

    __slots__ = ("_backoff_left", "_backoff_next", "_copied", "_cut", "_mapped", "_probes",
                 "_retry_pending", "_run_start", "_seen", "_why_none", "cut_warmup",
                 "fallback_reason", "force_zerocopy", "max_backoff", "min_cut_run",
                 "min_map_bytes", "min_mapped_fraction", "mode", "page_size", "probe_calls",
                 "retries", "transient_failures")

    def __init__(self, *, page_size: int = 4096, probe_calls: int = 8,
                 force_zerocopy: bool = False, min_mapped_fraction: float = 0.1,
                 min_cut_run: int = 256 * 1024, min_map_bytes: int = 0,
                 cut_warmup: int = 1 << 20, max_backoff: int = 64) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        if probe_calls < 1:
            raise ValueError(f"probe_calls must be >= 1, got {probe_calls}")
        if not 0.0 <= min_mapped_fraction <= 1.0:
            raise ValueError(f"min_mapped_fraction must be in [0, 1], got {min_mapped_fraction}")
        if min_cut_run < 0 or cut_warmup < 0 or min_map_bytes < 0:
            raise ValueError(f"min_cut_run, min_map_bytes and cut_warmup must be >= 0, got "
                             f"{min_cut_run}, {min_map_bytes}, {cut_warmup}")
        if max_backoff < 1:
            raise ValueError(f"max_backoff must be >= 1, got {max_backoff}")
        self.page_size = page_size
        self.probe_calls = probe_calls
        self.force_zerocopy = force_zerocopy
        self.min_mapped_fraction = min_mapped_fraction
        self.min_cut_run = min_cut_run
        self.min_map_bytes = min_map_bytes
        self.cut_warmup = cut_warmup
        self.mode: RxMode = "zerocopy"
        self.fallback_reason: str | None = None
        self._probes = 0
        self._mapped = 0
        self._copied = 0
        self._cut = 0
        self._seen = 0  # bytes observed so far
        self._run_start = 0  # _seen when the current run of calls began
        self.max_backoff = max_backoff
        self.transient_failures = 0
        self.retries = 0
        self._backoff_left = 0  # receives still to copy before mapping is tried again
        self._backoff_next = 1  # the backoff after the next transient failure
        self._retry_pending = False  # the next mapping attempt follows a backoff
        self._why_none = "small_request"  # copy reason of the last request() that said None

    @property
    def probing(self) -> bool:
        """Whether the detector is still judging the connection (in zero-copy mode, unforced)."""
        return self.mode == "zerocopy" and not self.force_zerocopy

    def request(self, max_bytes: int, window_size: int) -> Request | None:
        """The zero-copy call to make for ``recv(max_bytes)``, or ``None`` to copy instead.

        ``None`` means: copy mode, or less than one page (nothing could be mapped) or than
        ``min_map_bytes`` requested, or a backoff after a transient mapping failure
        (:meth:`copy_reason` says which).
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if self.mode != "zerocopy":
            self._why_none = "copy_mode"
            return None
        map_len = min(max_bytes, window_size) & ~(self.page_size - 1)
        if map_len == 0 or map_len < self.min_map_bytes:
            self._why_none = "small_request"
            return None
        if self._backoff_left:
            self._backoff_left -= 1
            self._why_none = "map_backoff"
            if not self._backoff_left:
                self._retry_pending = True
            return None
        if self._retry_pending:
            self._retry_pending = False
            self.retries += 1
        return Request(map_len)

    def copy_reason(self, max_bytes: int) -> str:
        """The reason to record when :meth:`request` returned ``None`` for ``max_bytes``."""
        if self.mode != "zerocopy":
            return "copy_mode"
        return self._why_none

    @property
    def backing_off(self) -> bool:
        """Whether receives are being copied after a transient mapping failure."""
        return self._backoff_left > 0

    def map_failed(self, code: int | None) -> bool:
        """Feed a failed window ``mmap`` or zero-copy call (its ``errno``).

        Returns ``True`` if the failure is transient (:data:`TRANSIENT_MAP_ERRNOS`): the caller
        copies this receive, and :meth:`request` answers ``None`` (``"map_backoff"``) for the
        next 1, 2, 4, ... (at most ``max_backoff``) receives that would map, doubling with each
        failure in a row. Returns ``False`` otherwise, changing nothing: the caller decides
        (:func:`map_error_kind`; :meth:`fall_back` for an unsupported kernel).
        """
        if map_error_kind(code) != "transient":
            return False
        self.transient_failures += 1
        self._retry_pending = False
        self._backoff_left = self._backoff_next
        self._backoff_next = min(2 * self._backoff_next, self.max_backoff)
        return True

    def observe(self, mapped: int, copied: int) -> bool:
        """Feed one zero-copy call's outcome (bytes mapped; bytes copied or hinted for recv).

        Any successful call ends a run of transient mapping failures (the next backoff starts
        at one receive again); calls that returned no data are otherwise ignored. Returns
        ``True`` if this call made the connection switch to copy mode (see
        :attr:`fallback_reason`).
        """
        self._backoff_next = 1
        if mapped + copied == 0 or not self.probing:
            return False
        self._probes += 1
        self._mapped += mapped
        self._copied += copied
        self._seen += mapped + copied
        if mapped and copied:
            self._cut += 1
        if self._probes < self.probe_calls:
            return False
        return self._judge()

    def _judge(self) -> bool:
        """Judge the run of ``probe_calls`` calls just counted by :meth:`observe` (the compiled
        receive path counts mapped-only calls itself and calls this when a run is complete)."""
        calls, mapped_sum, cut = self._probes, self._mapped, self._cut
        total = mapped_sum + self._copied
        steady = self._run_start >= self.cut_warmup
        self._probes = self._mapped = self._copied = self._cut = 0
        self._run_start = self._seen
        if mapped_sum < self.min_mapped_fraction * total:
            self.fall_back(
                f"{mapped_sum} of {total} bytes mapped in {calls} zero-copy calls: the received "
                "pages are not mappable (the sender must use MSG_ZEROCOPY and the MSS must be a "
                "multiple of the page size; see docs/receive.md)"
            )
            return True
        if steady and 2 * cut >= calls and mapped_sum < self.min_cut_run * calls:
            self.fall_back(
                f"{cut} of {calls} zero-copy calls had their mapping cut by unmappable bytes "
                f"after {mapped_sum // calls} bytes on average: the MSS is not a multiple of the "
                "page size, and mapping such short runs costs more than copying"
            )
            return True
        return False

    def fall_back(self, reason: str) -> None:
        """Switch to copy mode for good, recording ``reason`` (first reason wins)."""
        if self.mode == "zerocopy":
            self.mode = "copy"
            self.fallback_reason = reason
