"""A pool's book of the leases in flight (pure logic; the reference implementation).

A lease handed to ``Sender.send`` (or :meth:`zcnet.pool.Lease.release_when_done`) is *in
flight* until its ticket is done: the kernel may still read its memory, so it cannot be released
by hand and its bytes count as ``"pinned"``. The book keeps what the pool needs to know about
those leases: how many there are, each one's ticket (a waiting ``acquire`` asks whether any of
them can still come back), and, per (thread, Sender), how many a waiting ``acquire`` in that
thread may bring back by reaping that Sender.

Lease states (``Lease._state``): :data:`LEASED` (the caller's), :data:`IN_FLIGHT`,
:data:`RELEASED` (back in the pool), :data:`HELD` (its ticket completed while an export of its
memory was alive; the pool takes it back once the export is gone).

Two implementations with the same API: :class:`FlightBook` here, which does its bookkeeping under
the lock it is given (the pool's), and ``zcnet._speedups.FlightBook`` (src/zcnet/_ext/lease.c),
which needs none: each of its calls runs under the GIL without running Python code in between.
A compiled ticket (``zcnet._speedups.TicketBase``) carries its lease and lands it itself, so the
compiled book registers no callback for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol

from zcnet.errors import BufferLifetimeError

__all__ = ["HELD", "IN_FLIGHT", "LEASED", "MIN_CLASS", "RELEASED", "FlightBook"]

LEASED: Final = 0
IN_FLIGHT: Final = 1
RELEASED: Final = 2
HELD: Final = 3
#: The smallest size class; class ``k`` holds ``MIN_CLASS << k`` bytes.
MIN_CLASS: Final = 4096


class _Lease(Protocol):
    _state: int
    _reaper: tuple[int, int] | None

    @property
    def _pool(self) -> Any: ...
    @property
    def _block(self) -> Any: ...
    def _on_done(self, ticket: object, /) -> None: ...


class _Pool(Protocol):
    def _check_mine(self, lease: Any, /) -> None: ...


class FlightBook:
    """The leases of one pool in flight (see the module docstring)."""

    def __init__(self, lock: AbstractContextManager[Any]) -> None:
        self._lock = lock
        self.in_flight = 0
        #: each lease in flight -> its ticket (copy it under the lock before iterating)
        self.flying: dict[Any, object] = {}
        #: (thread, id(Sender)) -> [Sender, leases in flight it may bring back]
        self.reapers: dict[tuple[int, int], list[Any]] = {}

    def check(self, pool: _Pool, leases: Sequence[Any]) -> int:
        """The bytes of the size classes of ``leases``, each a lease of ``pool`` that is simply
        leased and appears once; else :class:`PoolError` (``pool._check_mine``) or
        :class:`BufferLifetimeError`, with nothing changed."""
        total = 0
        for lease in leases:
            pool._check_mine(lease)
            if lease._state != LEASED:
                raise BufferLifetimeError(
                    f"{lease!r} cannot go in flight: it is not simply leased")
            total += MIN_CLASS << lease._block.cls
        if len(set(map(id, leases))) != len(leases):
            raise BufferLifetimeError("the same lease twice in one batch")
        return total

    def take_off(self, leases: Sequence[_Lease], tickets: Sequence[Any],
                 key: tuple[int, int] | None, sender: object) -> None:
        """The checked ``leases`` go in flight, each until its ticket is done: counted, listed
        and under ``key`` (the (thread, id(Sender)) whose waiting ``acquire`` may reap
        ``sender``), then each ticket gets ``lease._on_done`` as a done callback."""
        if len(leases) != len(tickets):
            raise ValueError(f"{len(leases)} leases for {len(tickets)} tickets")
        with self._lock:
            self.in_flight += len(leases)
            self.flying.update(zip(leases, tickets))  # noqa: B905 (lengths checked above)
            if key is not None and leases:
                entry = self.reapers.setdefault(key, [sender, 0])
                entry[1] += len(leases)
            for lease in leases:
                lease._reaper = key
                lease._state = IN_FLIGHT
        for lease, ticket in zip(leases, tickets):  # noqa: B905 (lengths checked above)
            ticket.add_done_callback(lease._on_done)

    def land(self, lease: _Lease) -> None:
        """The flight of ``lease`` is over (its ticket is done): no longer counted, listed or
        reaped for. Its state stays :data:`IN_FLIGHT` until the pool claims it back (or holds
        it back). Raises :class:`BufferLifetimeError` if it was not in flight."""
        if lease._state != IN_FLIGHT:
            raise BufferLifetimeError(f"{lease!r}: completion for a lease not in flight")
        with self._lock:
            self.in_flight -= 1
            self.flying.pop(lease, None)
            key, lease._reaper = lease._reaper, None
            if key is not None:
                entry = self.reapers[key]
                entry[1] -= 1
                if not entry[1]:
                    del self.reapers[key]
