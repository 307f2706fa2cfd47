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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "COPY_REASONS",
    "Request",
    "RxDecider",
    "RxLedger",
    "RxMode",
]

RxMode = Literal["zerocopy", "copy"]

#: Why bytes were copied rather than mapped.
COPY_REASONS: Final = (
    "copybuf_tail",   # the kernel copied an unmappable tail into the copy buffer
    "skip_hint",      # unmappable bytes read with recv_into after the kernel's recv_skip_hint
    "small_request",  # the caller asked for less than one page
    "windows_busy",   # every window was held by live chunks and the ring was full
    "copy_mode",      # the connection had switched to recv_into
    "user_buffer",    # Receiver.recv_into: the caller's buffer is the destination
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
    """

    __slots__ = ("_copied", "_cut", "_mapped", "_probes", "_run_start", "_seen",
                 "cut_warmup", "fallback_reason", "force_zerocopy", "min_cut_run",
                 "min_map_bytes", "min_mapped_fraction", "mode", "page_size", "probe_calls")

    def __init__(self, *, page_size: int = 4096, probe_calls: int = 8,
                 force_zerocopy: bool = False, min_mapped_fraction: float = 0.1,
                 min_cut_run: int = 256 * 1024, min_map_bytes: int = 0,
                 cut_warmup: int = 1 << 20) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        if probe_calls < 1:
            raise ValueError(f"probe_calls must be >= 1, got {probe_calls}")
        if not 0.0 <= min_mapped_fraction <= 1.0:
            raise ValueError(f"min_mapped_fraction must be in [0, 1], got {min_mapped_fraction}")
        if min_cut_run < 0 or cut_warmup < 0 or min_map_bytes < 0:
            raise ValueError(f"min_cut_run, min_map_bytes and cut_warmup must be >= 0, got "
                             f"{min_cut_run}, {min_map_bytes}, {cut_warmup}")
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

    @property
    def probing(self) -> bool:
        """Whether the detector is still judging the connection (in zero-copy mode, unforced)."""
        return self.mode == "zerocopy" and not self.force_zerocopy

    def request(self, max_bytes: int, window_size: int) -> Request | None:
        """The zero-copy call to make for ``recv(max_bytes)``, or ``None`` to copy instead.

        ``None`` means: copy mode, or less than one page (nothing could be mapped) or than
        ``min_map_bytes`` requested.
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if self.mode != "zerocopy":
            return None
        map_len = min(max_bytes, window_size) & ~(self.page_size - 1)
        if map_len == 0 or map_len < self.min_map_bytes:
            return None
        return Request(map_len)

    def copy_reason(self, max_bytes: int) -> str:
        """The reason to record when :meth:`request` returned ``None`` for ``max_bytes``."""
        return "copy_mode" if self.mode != "zerocopy" else "small_request"

    def observe(self, mapped: int, copied: int) -> bool:
        """Feed one zero-copy call's outcome (bytes mapped; bytes copied or hinted for recv).

        Calls that returned no data are ignored. Returns ``True`` if this call made the
        connection switch to copy mode (see :attr:`fallback_reason`).
        """
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
