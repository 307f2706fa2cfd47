"""Receive decisions for TCP_ZEROCOPY_RECEIVE, without I/O (sans-I/O; reused by zcnet.aio).

Theory of operation (net/ipv4/tcp.c ``tcp_zerocopy_receive``; shared/DESIGN.md "Receive"): one
zero-copy call maps whole pages into a window, copies a short unmappable tail into the copy buffer
and hints how many following bytes must be read with ``recv`` (``recv_skip_hint``). Pages are
mappable only if the sender's segments are page-aligned order-0 frags; otherwise every call
degenerates into a tiny copy that costs more than a plain ``recv_into``. :class:`RxLedger` counts
mapped and copied bytes, each copy with its reason. :class:`RxDecider` sizes each request and,
after ``probe_calls`` zero-copy calls that returned data, switches the connection to copy mode if
(almost) nothing was mapped, unless zero-copy is forced.
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
        probe_calls: zero-copy calls returning data after which mappability is judged.
        force_zerocopy: never switch to copy mode.
        min_mapped_fraction: below this fraction of bytes mapped during the probe, switch.
    """

    __slots__ = ("_probe_calls", "_probe_copied", "_probe_mapped", "_probes", "fallback_reason",
                 "force_zerocopy", "min_mapped_fraction", "mode", "page_size", "probe_calls")

    def __init__(self, *, page_size: int = 4096, probe_calls: int = 8,
                 force_zerocopy: bool = False, min_mapped_fraction: float = 0.1) -> None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, got {page_size}")
        if probe_calls < 1:
            raise ValueError(f"probe_calls must be >= 1, got {probe_calls}")
        if not 0.0 <= min_mapped_fraction <= 1.0:
            raise ValueError(f"min_mapped_fraction must be in [0, 1], got {min_mapped_fraction}")
        self.page_size = page_size
        self.probe_calls = probe_calls
        self.force_zerocopy = force_zerocopy
        self.min_mapped_fraction = min_mapped_fraction
        self.mode: RxMode = "zerocopy"
        self.fallback_reason: str | None = None
        self._probes = 0
        self._probe_mapped = 0
        self._probe_copied = 0

    @property
    def probing(self) -> bool:
        """Whether the detector is still judging the connection."""
        return self.mode == "zerocopy" and self._probes < self.probe_calls

    def request(self, max_bytes: int, window_size: int) -> Request | None:
        """The zero-copy call to make for ``recv(max_bytes)``, or ``None`` to copy instead.

        ``None`` means: copy mode, or fewer than one page requested (nothing could be mapped).
        """
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if self.mode != "zerocopy":
            return None
        map_len = min(max_bytes, window_size) & ~(self.page_size - 1)
        if map_len == 0:
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
        self._probe_mapped += mapped
        self._probe_copied += copied
        if self._probes < self.probe_calls or self.force_zerocopy:
            return False
        total = self._probe_mapped + self._probe_copied
        if self._probe_mapped >= self.min_mapped_fraction * total:
            return False
        self.fall_back(
            f"{self._probe_mapped} of {total} bytes mapped in the first {self._probes} zero-copy "
            "calls: the received pages are not mappable (the sender must use MSG_ZEROCOPY and "
            "the MSS must be a multiple of the page size; see docs/receive.md)"
        )
        return True

    def fall_back(self, reason: str) -> None:
        """Switch to copy mode for good, recording ``reason`` (first reason wins)."""
        if self.mode == "zerocopy":
            self.mode = "copy"
            self.fallback_reason = reason
