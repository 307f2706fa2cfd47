"""Serial-number arithmetic on the kernel's wrapping u32 zero-copy counter (RFC 1982 style).

Theory of operation: every successful ``MSG_ZEROCOPY`` send call takes the next value of a
per-socket ``u32`` counter (``sk->sk_zckey``, net/core/skbuff.c ``msg_zerocopy_realloc``) and
completions name inclusive ranges of those values (Documentation/networking/msg_zerocopy.rst).
The counter wraps at 2**32, so values are compared as serial numbers: ``a`` precedes ``b`` when
the forward distance from ``a`` to ``b`` is in ``1 .. 2**31 - 1``. Distances of exactly ``2**31``
are ambiguous (RFC 1982 leaves them undefined) and compare as neither before nor after.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HALF", "MASK", "MOD", "add", "distance", "lt", "le", "range_width"]

MOD: Final = 1 << 32
MASK: Final = MOD - 1
HALF: Final = 1 << 31


def add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32 (``n`` may be negative)."""
    return (a + n) & MASK


def distance(a: int, b: int) -> int:
    """Forward distance from ``a`` to ``b``: the ``d`` in ``0 .. 2**32 - 1`` with ``a + d == b``."""
    return (b - a) & MASK


def lt(a: int, b: int) -> bool:
    """``a`` strictly precedes ``b`` in serial order."""
    return 0 < distance(a, b) < HALF


def le(a: int, b: int) -> bool:
    """``a`` precedes or equals ``b`` in serial order."""
    return a == b or lt(a, b)


def range_width(lo: int, hi: int) -> int:
    """Number of values in the inclusive, possibly wrapping range ``[lo, hi]`` (1 .. 2**32)."""
    return distance(lo, hi) + 1
