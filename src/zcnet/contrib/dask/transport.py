"""What a ``zc://`` comm needs from the connection below it, and the counters it reports.

Theory of operation: the comm (:mod:`zcnet.contrib.dask.backend`) talks to a
:class:`FrameTransport` — send a segment of buffers, receive into a prepared buffer, receive one
frame into a buffer of the transport's choosing, close, abort — so the Dask side never touches a
socket; while no message is being read, the transport watches for the peer's close so an idle
comm notices it. The one implementation is
:class:`zcnet.contrib.dask.aio_transport.AioTransport`, which puts it on a
:class:`zcnet.aio.ZcStream` (the library's one send engine: zero-copy policy, completions, errno
translation). :class:`TransportStats` is the snapshot every transport returns;
:mod:`zcnet.contrib.dask.stats` sums them over a process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import Protocol

__all__ = ["COUNTERS", "FrameTransport", "TransportStats"]


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters of one transport (a snapshot).

    ``bytes_zerocopy`` were handed to the kernel with ``MSG_ZEROCOPY``; of those, completions so
    far reported ``bytes_zc_copied`` as copied by the kernel and ``bytes_zc_uncopied`` as sent
    from the pinned pages, and ``bytes_in_flight`` are not completed yet. ``send_calls`` counts
    the ``send(2)`` calls of either kind (``zerocopy_calls`` of them with ``MSG_ZEROCOPY``).
    """

    bytes_sent: int
    bytes_received: int
    bytes_zerocopy: int
    bytes_zc_copied: int
    bytes_zc_uncopied: int
    zerocopy_calls: int
    send_calls: int
    completions: int
    enobufs: int
    bytes_in_flight: int
    mode: str
    fallback_reason: str | None


#: The numeric fields of :class:`TransportStats`, which add up over transports.
COUNTERS: tuple[str, ...] = tuple(f.name for f in fields(TransportStats)
                                  if f.name not in ("mode", "fallback_reason"))


class FrameTransport(Protocol):
    """What a ``zc://`` comm needs from the connection below it."""

    async def send(self, buffers: Sequence[memoryview], large: bool) -> None:
        """Send the buffers back to back (sendall semantics); ``large`` marks a big frame."""

    async def recv_into(self, view: memoryview) -> None:
        """Fill ``view`` completely; raises :class:`ConnectionResetByPeer` at EOF."""

    async def recv_frame(self, nbytes: int) -> memoryview:
        """Receive the next ``nbytes`` as one frame, into a fresh buffer of exactly that size."""

    def receiving(self) -> AbstractContextManager[None]:
        """Bracket the reading of one message (the end-of-file watch stands aside meanwhile)."""

    def watch_eof(self, on_eof: Callable[[], None]) -> None:
        """Call ``on_eof()`` once if the peer closes the connection while it is idle."""

    async def close(self) -> None:
        """Graceful close: wait (bounded) for outstanding sends, then close the connection."""

    def abort(self) -> None:
        """Close at once; with sends outstanding, reset the connection first."""

    @property
    def closed(self) -> bool:
        """Whether close() or abort() was called."""

    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
