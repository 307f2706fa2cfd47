"""Counters of every ``zc://`` transport of this process, open or closed.

Theory of operation: a transport registers itself when it is made and hands in its final
:class:`~zcnet.contrib.dask.transport.TransportStats` when it closes; :func:`process_stats` adds
the closed ones' totals to a fresh snapshot of the open ones (held weakly, so a dropped transport
is not kept alive by the count). ``Client.run(process_stats)`` shows what each worker moved and
how.
"""

from __future__ import annotations

import weakref

from zcnet.contrib.dask.transport import COUNTERS, FrameTransport, TransportStats

__all__ = ["process_stats", "register_transport", "retire_transport"]

_LIVE: weakref.WeakSet[FrameTransport] = weakref.WeakSet()
_FINISHED: dict[str, int] = dict.fromkeys(("connections", *COUNTERS), 0)


def register_transport(t: FrameTransport) -> None:
    """Count ``t`` in :func:`process_stats` while it is open."""
    _LIVE.add(t)
    _FINISHED["connections"] += 1


def retire_transport(t: FrameTransport, final: TransportStats) -> None:
    """``t`` closed: keep its ``final`` counters in :func:`process_stats`."""
    if t in _LIVE:
        _LIVE.discard(t)
        for name in COUNTERS:
            _FINISHED[name] += getattr(final, name)


def process_stats() -> dict[str, int]:
    """Counters summed over every ``zc://`` transport of this process, open or closed.

    Handy with ``Client.run(process_stats)`` to see what each worker moved and how.
    """
    total = dict(_FINISHED)
    for t in list(_LIVE):
        st = t.stats()
        for name in COUNTERS:
            total[name] += getattr(st, name)
    return total
