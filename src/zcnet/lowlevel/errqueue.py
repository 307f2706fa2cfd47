"""The socket error queue: ``struct sock_extended_err`` and zero-copy completion messages.

Theory of operation (include/uapi/linux/errqueue.h, Documentation/networking/msg_zerocopy.rst,
net/ipv4/ip_sockglue.c ``ip_recv_error``, net/ipv6/datagram.c ``ipv6_recv_error``): the kernel
queues ``MSG_ZEROCOPY`` notifications, ICMP errors (with ``IP_RECVERR``) and timestamps on a per
socket error queue, read with ``recvmsg(..., MSG_ERRQUEUE)``. Each message carries one control
message of level/type ``SOL_IP/IP_RECVERR`` (IPv4) or ``SOL_IPV6/IPV6_RECVERR`` (IPv6) whose
payload starts with::

    struct sock_extended_err {      /* 16 bytes */
        __u32 ee_errno; __u8 ee_origin; __u8 ee_type; __u8 ee_code; __u8 ee_pad;
        __u32 ee_info; __u32 ee_data;
    };

followed by the offender's address (``SO_EE_OFFENDER``). A zero-copy notification has
``ee_errno == 0`` and ``ee_origin == SO_EE_ORIGIN_ZEROCOPY`` (5) and covers the inclusive counter
range ``[ee_info, ee_data]``; ``ee_code & SO_EE_CODE_ZEROCOPY_COPIED`` says the kernel copied.
Anything else is reported as a :class:`QueuedError`, never as a completion. Reading never
blocks here (``MSG_DONTWAIT``); a non-empty queue keeps ``POLLERR`` raised on the socket.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from zcnet._core.tracker import ZerocopyCompletion
from zcnet.lowlevel.constants import (
    IP_RECVERR,
    IPV6_RECVERR,
    MSG_ERRQUEUE,
    SO_EE_CODE_ZEROCOPY_COPIED,
    SO_EE_ORIGIN_ZEROCOPY,
    SOL_IP,
    SOL_IPV6,
)

__all__ = [
    "ERRQUEUE_CMSGS",
    "SOCK_EXTENDED_ERR",
    "SO_EE_ORIGIN_ICMP",
    "SO_EE_ORIGIN_ICMP6",
    "SO_EE_ORIGIN_LOCAL",
    "SO_EE_ORIGIN_NONE",
    "SO_EE_ORIGIN_TIMESTAMPING",
    "SO_EE_ORIGIN_TXSTATUS",
    "ErrqueueEvent",
    "QueuedError",
    "ZerocopyCompletion",
    "drain_errqueue",
    "parse_ancdata",
    "parse_extended_err",
]

SO_EE_ORIGIN_NONE: Final = 0
SO_EE_ORIGIN_LOCAL: Final = 1
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3
SO_EE_ORIGIN_TXSTATUS: Final = 4
SO_EE_ORIGIN_TIMESTAMPING: Final = 4

SOCK_EXTENDED_ERR: Final = struct.Struct("=IBBBBII")
assert SOCK_EXTENDED_ERR.size == 16, "struct sock_extended_err is 16 bytes"

#: (level, type) pairs that carry a ``struct sock_extended_err``.
ERRQUEUE_CMSGS: Final = frozenset({(SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)})

# sock_extended_err + sockaddr_in6 offender (44 bytes) fits in CMSG_SPACE(44) = 64; leave room.
_ANCBUFSIZE: Final = 256
_FLAGS: Final = MSG_ERRQUEUE | socket.MSG_DONTWAIT


@dataclass(frozen=True, slots=True)
class QueuedError:
    """A non-zero-copy error-queue message (an ICMP error, a local error, a timestamp...)."""

    errno: int
    origin: int
    type: int
    code: int
    info: int
    data: int
    level: int
    cmsg_type: int

    @property
    def strerror(self) -> str:
        """``os.strerror`` of :attr:`errno` (``"Success"`` for 0)."""
        return os.strerror(self.errno)


ErrqueueEvent = ZerocopyCompletion | QueuedError


def parse_extended_err(
    data: bytes, level: int = SOL_IP, cmsg_type: int = IP_RECVERR
) -> ErrqueueEvent:
    """Decode the ``struct sock_extended_err`` at the start of a control message's payload."""
    if len(data) < SOCK_EXTENDED_ERR.size:
        raise ValueError(
            f"sock_extended_err needs {SOCK_EXTENDED_ERR.size} bytes, control message has "
            f"{len(data)}"
        )
    ee_errno, origin, ee_type, code, _pad, info, ee_data = SOCK_EXTENDED_ERR.unpack_from(data)
    if origin == SO_EE_ORIGIN_ZEROCOPY and ee_errno == 0:
        return ZerocopyCompletion(info, ee_data, bool(code & SO_EE_CODE_ZEROCOPY_COPIED))
    return QueuedError(ee_errno, origin, ee_type, code, info, ee_data, level, cmsg_type)


def parse_ancdata(ancdata: Iterable[tuple[int, int, bytes]]) -> list[ErrqueueEvent]:
    """Events in the ancillary data of one ``recvmsg(..., MSG_ERRQUEUE)``.

    Control messages of other levels/types (e.g. timestamps) are skipped.
    """
    return [
        parse_extended_err(data, level, ctype)
        for level, ctype, data in ancdata
        if (level, ctype) in ERRQUEUE_CMSGS
    ]


def drain_errqueue(sock: socket.socket, max_messages: int | None = None) -> list[ErrqueueEvent]:
    """Read the socket's error queue without blocking until it is empty; return its events.

    Args:
        sock: any socket; its blocking mode and timeout do not matter.
        max_messages: stop after this many messages (``None``: until ``EAGAIN``).

    Raises:
        OSError: any error other than "queue empty" (``EAGAIN``).
    """
    if sock.gettimeout() is not None:
        # Python waits for POLLIN before recvmsg on sockets with a timeout; read through a
        # timeout-less wrapper of the same descriptor instead (MSG_DONTWAIT never blocks).
        tmp = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
        try:
            return drain_errqueue(tmp, max_messages)
        finally:
            tmp.detach()
    events: list[ErrqueueEvent] = []
    recvmsg = sock.recvmsg
    n = 0
    while max_messages is None or n < max_messages:
        try:
            _, ancdata, _, _ = recvmsg(0, _ANCBUFSIZE, _FLAGS)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                break
            raise
        n += 1
        for level, ctype, data in ancdata:
            if (level, ctype) in ERRQUEUE_CMSGS:
                events.append(parse_extended_err(data, level, ctype))
    return events
