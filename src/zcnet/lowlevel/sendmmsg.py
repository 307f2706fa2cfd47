"""``sendmmsg(2)``: many datagrams in one system call, through ctypes with reusable arrays.

Theory of operation (net/socket.c ``__sys_sendmmsg``; include/linux/socket.h ``struct mmsghdr``;
man 2 sendmmsg): ``sendmmsg(fd, msgvec, vlen, flags)`` runs one ``sendmsg`` per entry, in order,
with the same ``flags`` (``MSG_BATCH`` added to all but the last), and stops at the first failure.
It returns how many messages were sent; the error of the failed one is returned only when that
was the first message (``-1`` and ``errno``), otherwise it is dropped, and the caller learns of it
by calling again from the first unsent message. ``vlen`` is capped at ``UIO_MAXIOV`` (1024) by the
kernel. Every message sent is a full ``udp_sendmsg`` call: with ``MSG_ZEROCOPY`` each one takes
its own value of the socket's zero-copy counter (net/core/skbuff.c ``msg_zerocopy_alloc``), a
failed one none (``msg_zerocopy_put_abort`` gives it back).

:class:`MmsgBatch` preallocates ``capacity`` ``struct mmsghdr`` entries, each pointing at its own
single ``struct iovec`` and with no address (connected sockets), so a call only writes the
``iov_base``/``iov_len`` pairs, through a flat ``u64`` view of the iovec array. Layouts are those
of 64-bit Linux (LP64) and are checked at import.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Final

from zcnet.lowlevel._libc import libc_function

__all__ = ["UIO_MAXIOV", "Iovec", "MmsgBatch", "Mmsghdr", "Msghdr", "sendmmsg_available"]

#: The kernel's cap on ``vlen`` (include/uapi/linux/uio.h).
UIO_MAXIOV: Final = 1024


class Iovec(ctypes.Structure):
    """``struct iovec`` (16 bytes)."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class Msghdr(ctypes.Structure):
    """``struct msghdr`` as seen by user space (56 bytes on LP64)."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class Mmsghdr(ctypes.Structure):
    """``struct mmsghdr`` (64 bytes on LP64): a msghdr and the bytes sent for it."""

    _fields_ = (("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint))


_LP64: Final = ctypes.sizeof(ctypes.c_void_p) == 8
if _LP64:
    assert ctypes.sizeof(Iovec) == 16 and Iovec.iov_len.offset == 8
    assert ctypes.sizeof(Msghdr) == 56
    for _name, _off in (("msg_name", 0), ("msg_namelen", 8), ("msg_iov", 16), ("msg_iovlen", 24),
                        ("msg_control", 32), ("msg_controllen", 40), ("msg_flags", 48)):
        assert getattr(Msghdr, _name).offset == _off, _name
    assert ctypes.sizeof(Mmsghdr) == 64 and Mmsghdr.msg_len.offset == 56

_MMSG_SIZE: Final = ctypes.sizeof(Mmsghdr)


def _load() -> tuple[Any, str | None]:
    if not sys.platform.startswith("linux"):
        return None, f"sendmmsg needs Linux (platform is {sys.platform})"
    if not _LP64:
        return None, "the sendmmsg layouts here are for 64-bit platforms"
    try:
        fn = libc_function("sendmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int),
                           ctypes.c_int)
    except AttributeError:  # pragma: no cover - glibc >= 2.14 and musl have it
        return None, "libc has no sendmmsg"
    return fn, None


_sendmmsg, _UNAVAILABLE = _load()
_get_errno = ctypes.get_errno


def sendmmsg_available() -> str | None:
    """``None`` if :class:`MmsgBatch` can be used here, else why not."""
    return _UNAVAILABLE


class MmsgBatch:
    """Reusable ``mmsghdr``/``iovec`` arrays for up to ``capacity`` one-buffer datagrams.

    Fill entry ``i`` with :meth:`set` (or write ``words[2*i]``/``words[2*i+1]`` directly), then
    :meth:`send` a run of entries. Not thread-safe.
    """

    __slots__ = ("_base", "_fn", "_iov", "_msgs", "capacity", "words")

    def __init__(self, capacity: int = 64) -> None:
        if _UNAVAILABLE is not None:
            raise OSError(_UNAVAILABLE)
        if not 1 <= capacity <= UIO_MAXIOV:
            raise ValueError(f"capacity must be in [1, {UIO_MAXIOV}], got {capacity}")
        self.capacity = capacity
        self._iov = (Iovec * capacity)()
        self._msgs = (Mmsghdr * capacity)()
        iov0 = ctypes.addressof(self._iov)
        for i in range(capacity):
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = iov0 + i * ctypes.sizeof(Iovec)
            hdr.msg_iovlen = 1
        #: flat u64 view of the iovecs: ``words[2*i]`` is iov_base, ``words[2*i+1]`` iov_len
        self.words = memoryview(self._iov).cast("B").cast("Q")
        self._base = ctypes.addressof(self._msgs)
        self._fn = _sendmmsg

    def set(self, i: int, address: int, length: int) -> None:
        """Point entry ``i`` at ``length`` bytes at ``address``."""
        w = self.words
        w[2 * i] = address
        w[2 * i + 1] = length

    def sent_len(self, i: int) -> int:
        """Bytes the kernel reported sent for entry ``i`` by the last call that sent it."""
        return int(self._msgs[i].msg_len)

    def send(self, fd: int, start: int, count: int, flags: int) -> int:
        """``sendmmsg(fd, &msgs[start], count, flags)``: returns the messages sent (>= 1).

        Raises:
            OSError: the first message failed (nothing was sent).
        """
        if not (start >= 0 and count >= 1 and start + count <= self.capacity):
            raise ValueError(f"entries [{start}, {start + count}) outside [0, {self.capacity})")
        n: int = self._fn(fd, self._base + start * _MMSG_SIZE, count, flags)
        if n < 0:
            err = _get_errno()
            raise OSError(err, os.strerror(err))
        return n
