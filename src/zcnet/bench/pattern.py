"""Verification of benchmark transfers against the shared stream pattern.

Theory of operation: every transfer carries :class:`zcnet._core.pattern.StreamPattern` bytes
(stream byte ``i`` is a function of ``i``; the period is a prime, so lost, duplicated or
reordered pages never line up again). Senders send ``block()`` views directly (immutable memory,
safe for MSG_ZEROCOPY). Two checks: :meth:`Verifier.verify` compares every byte (as ``bytes``,
a memcmp at tens of GB/s; comparing memoryviews element-wise is ~20x slower), used outside the
CPU window; :meth:`Verifier.spot` checks the first and last byte of each chunk, cheap enough to
run inside the timed window of the timed repetitions.
"""

from __future__ import annotations

from typing import Final

from zcnet._core.pattern import StreamPattern

__all__ = ["DEFAULT_SPAN", "PERIOD", "PatternMismatch", "Source", "Verifier"]

DEFAULT_SPAN: Final = 4 * 1024 * 1024


class PatternMismatch(AssertionError):
    """Received bytes differ from the pattern: data was lost, reordered or corrupted."""


class Verifier:
    """Stream pattern windows of up to ``span`` bytes and checks against them."""

    def __init__(self, span: int = DEFAULT_SPAN, seed: int = 0x5A) -> None:
        self.span = span
        self.pattern = StreamPattern(max_block=span, seed=seed)

    def window(self, offset: int, length: int) -> memoryview:
        """The stream bytes ``[offset, offset + length)`` as a read-only view (no copy)."""
        return self.pattern.block(offset, length)

    def verify(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Check every byte of ``data`` (stream bytes from ``offset``); raise on mismatch."""
        n = len(data)
        pos = 0
        while pos < n:
            step = min(self.span, n - pos)
            got = bytes(data[pos : pos + step])
            if got != self.pattern.block(offset + pos, step).tobytes():
                raise PatternMismatch(
                    f"stream bytes [{offset + pos}, {offset + pos + step}) differ from the pattern"
                )
            pos += step

    def spot(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Check the first and last byte of ``data`` only; raise on mismatch."""
        n = len(data)
        if n and (
            data[0] != self.pattern.block(offset, 1)[0]
            or data[n - 1] != self.pattern.block(offset + n - 1, 1)[0]
        ):
            raise PatternMismatch(f"spot check failed in stream bytes [{offset}, {offset + n})")


#: The period of :class:`StreamPattern` (its stream is periodic; checked by :class:`Source`).
PERIOD: Final = 65521


class Source:
    """The stream's bytes laid out over ``size`` bytes of memory, for senders.

    ``window(offset, n)`` returns the stream bytes at ``offset`` from position
    ``offset % (k * PERIOD)`` of a buffer of about ``size`` bytes, so consecutive messages come
    from different memory: with ``size`` larger than the CPU caches, a copying send pays the
    cache misses it pays when sending a large array, instead of copying one hot buffer over and
    over (netperf's default). ``size`` up to the verifier's span keeps the hot buffer.
    """

    def __init__(self, verifier: Verifier, size: int, max_msg: int) -> None:
        self.verifier = verifier
        self.size = size
        self._view: memoryview | None = None
        self._wrap = 0
        if size <= verifier.span:
            return
        probe = min(4096, verifier.span - PERIOD) if verifier.span > PERIOD else 0
        if probe <= 0 or bytes(verifier.window(0, probe)) != bytes(verifier.window(PERIOD, probe)):
            return  # the pattern's period changed: keep the hot buffer rather than lie
        self._wrap = max(1, size // PERIOD) * PERIOD
        total = self._wrap + max_msg
        buf = bytearray(total)
        step = verifier.span
        for pos in range(0, total, step):
            n = min(step, total - pos)
            buf[pos : pos + n] = verifier.window(pos, n)
        self._view = memoryview(buf).toreadonly()

    @property
    def cold(self) -> bool:
        """Whether messages walk through the large buffer (else the verifier's hot one)."""
        return self._view is not None

    def window(self, offset: int, length: int) -> memoryview:
        """The stream bytes ``[offset, offset + length)`` (read-only, never written)."""
        if self._view is None:
            return self.verifier.window(offset, length)
        start = offset % self._wrap
        return self._view[start : start + length]
