"""What a TCP socket's sender side holds, and how to abort it without closing the descriptor.

Theory of operation (include/uapi/linux/tcp.h ``struct tcp_info``; net/ipv4/tcp.c ``tcp_ioctl``,
``tcp_disconnect``):

* :func:`queued_bytes` is the number of bytes ever handed to the socket's send side:
  ``tcpi_bytes_acked`` (bytes the peer acknowledged, plus one for the SYN) plus ``SIOCOUTQ``
  (``write_seq - snd_una``: queued, not yet acknowledged). The two are read until the
  acknowledged count is the same before and after, so an ACK arriving in between cannot skew
  the sum. The difference between two readings is exactly what send calls queued in between,
  which tells how much an interrupted ``send(2)`` queued when its result was lost
  (docs/ARCHITECTURE.md, 'Transmit: interrupted sends').
* :func:`abort` resets the connection but keeps the descriptor: ``connect(AF_UNSPEC)`` runs
  ``tcp_disconnect``, which sends a RST and purges the write queue. Purging frees the pinned
  pages, so the zero-copy completions of everything still queued land on the error queue,
  where they can still be read (measured on Linux 6.18: one notification covering every
  outstanding call, reported copied).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct
import termios
from typing import Final

from zcnet.lowlevel._libc import errno_error, libc_function

__all__ = ["QueuedSince", "abort", "queued_bytes"]

#: ``SIOCOUTQ`` (== ``TIOCOUTQ``): bytes in the send queue not yet acknowledged.
SIOCOUTQ: Final = termios.TIOCOUTQ
#: Offset of ``__u64 tcpi_bytes_acked`` in ``struct tcp_info`` (Linux 4.1+), and the size read.
_BYTES_ACKED_OFFSET: Final = 120
_TCP_INFO_LEN: Final = 128
_U64: Final = struct.Struct("=Q")
_INT: Final = struct.Struct("=i")
# struct sockaddr with sa_family = AF_UNSPEC
_UNSPEC: Final = struct.pack("=H14x", socket.AF_UNSPEC)


def _bytes_acked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    if len(info) < _BYTES_ACKED_OFFSET + 8:
        raise OSError(errno.ENOPROTOOPT, "struct tcp_info has no tcpi_bytes_acked")
    return int(_U64.unpack_from(info, _BYTES_ACKED_OFFSET)[0])


def queued_bytes(sock: socket.socket) -> int:
    """Bytes ever queued on ``sock``'s send side (plus one for the SYN): see the module docs.

    Raises:
        OSError: not a connected TCP socket, or the kernel lacks ``tcpi_bytes_acked``.
    """
    fd = sock.fileno()
    buf = bytearray(_INT.size)
    for _ in range(100):
        before = _bytes_acked(sock)
        fcntl.ioctl(fd, SIOCOUTQ, buf)
        if _bytes_acked(sock) == before:
            return before + int(_INT.unpack(buf)[0])
    raise OSError(errno.EAGAIN, "the acknowledged byte count kept moving")


class QueuedSince:
    """What a TCP socket has queued since this object was made (see :func:`queued_bytes`).

    Made when a sender takes a socket over; after an interruption, :meth:`unrecorded` tells how
    many bytes the kernel queued beyond those the sender recorded.
    """

    __slots__ = ("_base", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._base: int | None
        try:
            self._base = queued_bytes(sock)
        except OSError:  # not TCP, or no tcpi_bytes_acked: unknown from the start
            self._base = None

    def unrecorded(self, recorded: int) -> int | None:
        """Bytes queued since creation minus ``recorded``, or ``None`` if the kernel cannot
        tell (then a lost call's result stays unknown)."""
        if self._base is None:
            return None
        try:
            return queued_bytes(self._sock) - self._base - recorded
        except OSError:
            return None


_connect = libc_function("connect", (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint), ctypes.c_int)


def abort(sock: socket.socket) -> None:
    """Reset ``sock``'s connection (RST, send queue purged) and keep its descriptor open.

    Raises:
        OSError: the kernel refused (the socket is left as it was).
    """
    if _connect(sock.fileno(), _UNSPEC, len(_UNSPEC)) != 0:
        raise errno_error("connect(AF_UNSPEC)")
