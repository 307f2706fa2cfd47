"""Verifiable payloads: a stream whose every byte is a function of its offset.

A random block of a prime length (so no power-of-two reordering of pages or segments can map the
stream onto itself) is repeated; the bytes at ``[offset, offset + n)`` are a slice of a pre-tiled
buffer, so producing and checking a block costs one memcmp-like comparison, not Python loops.
"""

from __future__ import annotations

import random

__all__ = ["StreamPattern"]

_PERIOD = 65_521  # the largest prime below 2**16


class StreamPattern:
    """The expected content of a byte stream, checkable block by block.

    Args:
        max_block: the largest block :meth:`block` will be asked for.
        seed: selects the pseudo-random period (same seed, same stream).
    """

    def __init__(self, max_block: int = 4 * 1024 * 1024, seed: int = 0x5A) -> None:
        if max_block <= 0:
            raise ValueError(f"max_block must be positive, got {max_block}")
        period = random.Random(seed).randbytes(_PERIOD)
        reps = (max_block + _PERIOD - 1) // _PERIOD + 1
        self._tiled_bytes = period * reps
        self._tiled = memoryview(self._tiled_bytes)
        self.max_block = max_block

    @property
    def period(self) -> int:
        """The stream repeats every ``period`` bytes (a prime)."""
        return _PERIOD

    def block(self, offset: int, size: int) -> memoryview:
        """The ``size`` bytes at stream ``offset`` (a read-only view; do not keep it for long)."""
        if size > self.max_block or size < 0 or offset < 0:
            raise ValueError(f"block({offset}, {size}) outside 0..{self.max_block} bytes")
        start = offset % _PERIOD
        return self._tiled[start : start + size]

    def matches(self, offset: int, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` is exactly the stream's content at ``offset``."""
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            n = min(self.max_block, len(view) - pos)
            start = (offset + pos) % _PERIOD
            # startswith() is a memcmp against any buffer, with no copy; memoryview equality
            # unpacks item by item (about 20 times slower)
            if not self._tiled_bytes.startswith(view[pos : pos + n], start):
                return False
            pos += n
        return True
