"""io_uring for the send engine: whether this process can use it, and pool slabs registered once.

Theory of operation (docs/ARCHITECTURE.md, 'Transmit: the io_uring engine'):

* The ring itself is compiled code (``zcnet._speedups.Ring``, ``src/zcnet/_ext/uring.c``): raw
  ``io_uring_setup``/``io_uring_enter``/``io_uring_register`` system calls, no liburing. Without
  the extension, on a kernel without io_uring or ``IORING_OP_SEND_ZC`` (Linux 6.0), or where
  ``io_uring_setup`` is refused (``kernel.io_uring_disabled``, a container's seccomp profile,
  ``EPERM``), :func:`open_ring` raises :class:`~zcnet.errors.ZerocopyUnavailable` with a
  one-line reason, and :func:`unavailable_reason` returns it.
* Choosing: ``engine="auto"`` takes io_uring only where ``MSG_ZEROCOPY`` cannot send a socket's
  data uncopied and ``SEND_ZC`` can (:func:`msg_zerocopy_obstacle`: ``IP_RECVERR`` on a UDP
  socket, an ``optmem_max`` that keeps at most one notification outstanding). Elsewhere
  ``MSG_ZEROCOPY`` measures as cheap or cheaper on this kind of machine (docs/ARCHITECTURE.md,
  'Transmit: the io_uring engine'), and :func:`open_engine_ring` says so in the Sender's
  ``engine_reason``.
* :class:`SlabRegistry` registers each pool slab a Sender sends from with the ring the first
  time one of its leases is sent (``IORING_REGISTER_BUFFERS_UPDATE`` into a sparse table), so
  the kernel pins its pages once instead of at every send. Registration is charged to
  ``RLIMIT_MEMLOCK`` unless the process has ``CAP_IPC_LOCK``; once the kernel refuses, leases
  are sent unregistered (plain ``SEND_ZC``) and :attr:`SlabRegistry.refused` says why, as it
  does once the table's :data:`TABLE_SIZE` slots are taken. The registry holds the slab
  objects, so a registered address range is never matched by a later mapping at the same
  address; the kernel keeps the pages pinned until the ring is closed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, Final, Protocol

from zcnet._accel import speedups
from zcnet._core.txpolicy import SenderStats
from zcnet.errors import ZerocopyUnavailable
from zcnet.lowlevel.constants import IP_RECVERR, IPV6_RECVERR, SOL_IP, SOL_IPV6
from zcnet.lowlevel.probes import NOTIFICATION_ADMISSION, NOTIFICATION_CHARGE_HERE

__all__ = ["AUTO_KEEPS_MSG_ZEROCOPY", "OPTMEM_FOR_ONE_NOTIFICATION", "RING_ENTRIES", "TABLE_SIZE",
           "Slab", "SlabRegistry", "msg_zerocopy_obstacle", "open_engine_ring", "open_ring",
           "recverr_enabled", "unavailable_reason"]

#: Submission queue entries of a Sender's ring (a send_batch submits at most one less).
RING_ENTRIES: Final = 64
#: Registered-buffer slots per ring: slabs beyond this many are sent unregistered.
TABLE_SIZE: Final = 1024
_MIB: Final = 1 << 20

_SYSCTL: Final = "/proc/sys/kernel/io_uring_disabled"
_OPTMEM: Final = "/proc/sys/net/core/optmem_max"
#: ``net.core.optmem_max`` below this keeps at most one ``MSG_ZEROCOPY`` notification
#: outstanding: each is an skb charged to the socket's option memory (net/core/skbuff.c
#: ``msg_zerocopy_alloc``, ``sock_omalloc`` in net/core/sock.c), admitted while
#: :data:`~zcnet.lowlevel.probes.NOTIFICATION_ADMISSION` more bytes fit and then holding
#: :data:`~zcnet.lowlevel.probes.NOTIFICATION_CHARGE_HERE`, so every zero-copy call made while
#: one is pending fails with ``ENOBUFS`` (below the admission alone, every call does).
#: io_uring's notifications are not charged there.
OPTMEM_FOR_ONE_NOTIFICATION: Final = NOTIFICATION_ADMISSION + NOTIFICATION_CHARGE_HERE
#: ``engine_reason`` when ``"auto"`` keeps ``MSG_ZEROCOPY``.
AUTO_KEEPS_MSG_ZEROCOPY: Final = (
    "auto: MSG_ZEROCOPY, which costs as little as io_uring or less here except for batches of "
    "fresh pool leases (docs/ARCHITECTURE.md, 'Transmit: the io_uring engine')")


def _sysctl_hint() -> str:
    try:
        with open(_SYSCTL) as f:
            value = f.read().strip()
    except OSError:
        return ""
    if value == "2":
        return " (kernel.io_uring_disabled=2: io_uring is off for every process)"
    if value == "1":
        return (" (kernel.io_uring_disabled=1: only processes in the group "
                "kernel.io_uring_group may use it)")
    return " (kernel.io_uring_disabled=0, so a seccomp filter, e.g. a container's, refused it)"


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSYS:
        return "io_uring_setup: the kernel has no io_uring (ENOSYS)"
    if e.errno == errno.EPERM:
        return f"io_uring_setup refused with EPERM{_sysctl_hint()}"
    if e.errno is None:  # the ring's own probe: no SEND_ZC
        return str(e)
    name = errno.errorcode.get(e.errno, str(e.errno))
    return f"io_uring_setup failed: {os.strerror(e.errno)} ({name})"


def open_ring(entries: int = RING_ENTRIES) -> Any:
    """A new ``zcnet._speedups.Ring`` for ``SEND_ZC`` sends.

    Raises:
        ZerocopyUnavailable: io_uring or its ``SEND_ZC`` cannot be used here; the message says
            why in one line.
    """
    if not sys.platform.startswith("linux"):
        raise ZerocopyUnavailable(f"io_uring needs Linux (platform is {sys.platform})")
    ring_type = getattr(speedups, "Ring", None) if speedups is not None else None
    if ring_type is None:
        why = ("zcnet runs without its compiled extension, which holds the io_uring engine"
               if speedups is None else
               "zcnet's extension was built without <linux/io_uring.h>")
        raise ZerocopyUnavailable(why)
    try:
        return ring_type(entries)
    except OSError as e:
        raise ZerocopyUnavailable(_reason(e)) from e


def recverr_enabled(sock: socket.socket) -> bool:
    """Whether ``IP_RECVERR`` (or ``IPV6_RECVERR``) is set on ``sock``."""
    level, name = ((SOL_IPV6, IPV6_RECVERR) if sock.family == socket.AF_INET6
                   else (SOL_IP, IP_RECVERR))
    try:
        return bool(sock.getsockopt(level, name))
    except OSError:
        return False


def msg_zerocopy_obstacle(sock: socket.socket) -> str | None:
    """Why ``MSG_ZEROCOPY`` cannot send ``sock``'s data uncopied where io_uring's ``SEND_ZC``
    can, or ``None``."""
    if sock.type == socket.SOCK_DGRAM and recverr_enabled(sock):
        return "IP_RECVERR is set on this UDP socket (MSG_ZEROCOPY would copy)"
    try:
        with open(_OPTMEM) as f:
            optmem = int(f.read())
    except (OSError, ValueError):
        return None
    if optmem < OPTMEM_FOR_ONE_NOTIFICATION:
        return (f"net.core.optmem_max={optmem} keeps at most one MSG_ZEROCOPY notification "
                "outstanding (a zero-copy call while one is pending fails with ENOBUFS)")
    return None


def open_engine_ring(engine: str, sock: socket.socket) -> tuple[Any, str | None]:
    """The ring of a sender on ``sock`` whose resolved engine is ``engine`` (None: send with
    ``MSG_ZEROCOPY``), and why ``"auto"`` did not take io_uring.

    Raises:
        ZerocopyUnavailable: ``engine`` is ``"io_uring"`` and io_uring cannot be used here.
    """
    if engine == "msg_zerocopy":
        return None, None
    if engine == "auto" and msg_zerocopy_obstacle(sock) is None:
        return None, AUTO_KEEPS_MSG_ZEROCOPY
    try:
        return open_ring(), None
    except ZerocopyUnavailable as e:
        if engine == "io_uring":
            raise
        return None, str(e)


def unavailable_reason() -> str | None:
    """Why this process cannot use the io_uring send engine, or ``None`` if it can."""
    try:
        open_ring(2).close()
    except ZerocopyUnavailable as e:
        return str(e)
    return None


class Slab(Protocol):
    """A mapped range that leases are carved from (``zcnet.pool``'s slabs)."""

    @property
    def address(self) -> int: ...
    @property
    def size(self) -> int: ...


class SlabRegistry:
    """The pool slabs registered with one ring, registered the first time a lease is sent."""

    __slots__ = ("_index", "_ring", "_slabs", "refused", "registered_bytes")

    def __init__(self, ring: Any) -> None:
        self._ring = ring
        self._index: dict[int, int] = {}  # id(slab) -> table index
        self._slabs: list[object] = []  # held: their ids stay unique while registered
        self.refused: str | None = None
        self.registered_bytes = 0
        try:
            ring.register_table(TABLE_SIZE)
        except OSError as e:
            self.refused = f"io_uring buffer table refused: {os.strerror(e.errno or 0)}"

    def index_of(self, slab: Slab) -> int:
        """The table index of ``slab`` (registering it now), or -1 to send it unregistered."""
        index = self._index.get(id(slab))
        if index is not None:
            return index
        if self.refused is not None:
            return -1
        index = len(self._slabs)
        if index >= TABLE_SIZE:
            mib = self.registered_bytes / _MIB
            self.refused = (f"io_uring buffer table full: {index} slabs ({mib:g} MiB) "
                            "registered; later slabs go out unregistered")
            return -1
        try:
            self._ring.register_buffer(index, slab.address, slab.size)
        except OSError as e:
            what = os.strerror(e.errno or 0)
            if e.errno in (errno.ENOMEM, errno.EPERM):
                what += (f": registration is charged to RLIMIT_MEMLOCK, which is too low for a "
                         f"{slab.size}-byte slab without CAP_IPC_LOCK")
            self.refused = f"io_uring buffer registration refused ({what})"
            return -1
        self._slabs.append(slab)
        self._index[id(slab)] = index
        self.registered_bytes += slab.size
        return index

    def register_all(self, slabs: Sequence[Slab]) -> int:
        """Register each of ``slabs`` not registered yet (see :meth:`index_of`); returns the
        bytes this call registered."""
        before = self.registered_bytes
        for slab in slabs:
            if self.index_of(slab) < 0:
                break  # refused (see refused) or the table is full
        return self.registered_bytes - before

    @staticmethod
    def register_pool(registry: SlabRegistry | None, pool: Any) -> int:
        """``Sender.register_pool`` and ``ZcStream.register_pool``: the slabs ``pool`` has
        mapped so far (PoolError if it is closed, on either engine), registered with
        ``registry`` (None: the ``MSG_ZEROCOPY`` engine, nothing to register); the bytes
        registered."""
        slabs = pool._mapped_slabs()
        return 0 if registry is None else registry.register_all(slabs)

    def stats_of(self, stats: SenderStats, sends_registered: int) -> SenderStats:
        """``stats`` of a sender on this ring's io_uring engine, with the registration figures
        (``sends_registered``: the ring's count of sends from registered memory)."""
        return dataclasses.replace(stats, engine="io_uring", sends_registered=sends_registered,
                                   registered_bytes=self.registered_bytes,
                                   registration_reason=self.refused)
