"""TCP_ZEROCOPY_RECEIVE: the struct, the libc call, and receive windows.

Theory of operation (net/ipv4/tcp.c ``tcp_zerocopy_receive``, ``do_tcp_getsockopt``;
tools/testing/selftests/net/tcp_mmap.c): a *window* is a read-only shared mapping of the TCP
socket itself (``mmap(PROT_READ, MAP_SHARED, sockfd)``). ``getsockopt(IPPROTO_TCP,
TCP_ZEROCOPY_RECEIVE)`` with a :class:`TcpZerocopyReceive` whose ``address``/``length`` describe a
window maps whole received pages there (first zapping whatever the previous call mapped at that
address, unless ``TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT`` says the caller already did with
``madvise(MADV_DONTNEED)``). On return ``length`` is the number of bytes mapped, ``copybuf_len``
the bytes copied into ``copybuf_address`` right after them, and ``recv_skip_hint`` the bytes that
follow and must be read with ``recv``. The call never blocks. ``EIO`` with nothing queued is EOF.

Python's ``socket.getsockopt`` cannot pass an input struct, so libc's ``getsockopt`` is called
through ctypes with a preallocated struct and length (no allocation per call).

Windows are Python :class:`mmap.mmap` objects: memoryviews exported from them are counted by
CPython, and ``resize`` on a read-only map raises ``BufferError`` while exports exist and
``TypeError`` otherwise, which gives a side-effect-free "is any view of this window alive" probe
(:meth:`Window.busy`). The window's address is read once through ``PyObject_GetBuffer``.

A window holds no file descriptor. ``mmap.mmap(sockfd, ...)`` would ``dup()`` the socket's fd
for every window (CPython's mmapmodule.c; only 3.13 can opt out, with ``trackfd=False``), up to
``max_windows`` extra fds per connection. Instead the window is created as an *anonymous*
read-only shared ``mmap.mmap(-1, size)`` (no fd), and libc's ``mmap`` then replaces those pages
with the socket mapping in place (``MAP_FIXED`` at the same address and length, mm/mmap.c
``mmap_region``: the old pages are unmapped as part of the new mapping). The Python object keeps
counting exports and unmaps the range at ``close()`` (or when collected), which now unmaps the
socket pages. ``tcp_mmap`` (net/ipv4/tcp.c) accepts the mapping because it is shared and neither
writable nor executable; ``find_tcp_vma`` then finds it by its ``vm_ops``, as for any window.
Replacing our own mapping with ``MAP_FIXED`` cannot clobber anyone else's: the range is ours
until it is unmapped.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
from typing import Final

from zcnet.lowlevel._libc import errno_error, libc_function
from zcnet.lowlevel.bufaddr import buffer_address
from zcnet.lowlevel.constants import TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT, TCP_ZEROCOPY_RECEIVE

__all__ = [
    "PAGE_SIZE",
    "TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT",
    "TCP_ZEROCOPY_RECEIVE",
    "TcpZerocopyReceive",
    "Window",
    "ZerocopyCall",
    "buffer_address",
]

PAGE_SIZE: Final = mmap.PAGESIZE


class TcpZerocopyReceive(ctypes.Structure):
    """``struct tcp_zerocopy_receive`` (include/uapi/linux/tcp.h), 64 bytes."""

    _fields_ = (
        ("address", ctypes.c_uint64),
        ("length", ctypes.c_uint32),
        ("recv_skip_hint", ctypes.c_uint32),
        ("inq", ctypes.c_uint32),
        ("err", ctypes.c_int32),
        ("copybuf_address", ctypes.c_uint64),
        ("copybuf_len", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("msg_control", ctypes.c_uint64),
        ("msg_controllen", ctypes.c_uint64),
        ("msg_flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    )


_EXPECTED_OFFSETS: Final = {
    "address": 0, "length": 8, "recv_skip_hint": 12, "inq": 16, "err": 20,
    "copybuf_address": 24, "copybuf_len": 32, "flags": 36, "msg_control": 40,
    "msg_controllen": 48, "msg_flags": 56, "reserved": 60,
}
assert ctypes.sizeof(TcpZerocopyReceive) == 64
for _name, _off in _EXPECTED_OFFSETS.items():
    assert getattr(TcpZerocopyReceive, _name).offset == _off, _name


_getsockopt = libc_function(
    "getsockopt", (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p),
    ctypes.c_int)
_mmap = libc_function(
    "mmap", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
             ctypes.c_long), ctypes.c_void_p)
_MAP_FAILED: Final = ctypes.c_void_p(-1).value
_MAP_FIXED: Final = 0x10  # include/uapi/asm-generic/mman-common.h (every Linux architecture)
_get_errno = ctypes.get_errno


class ZerocopyCall:
    """One connection's preallocated ``tcp_zerocopy_receive`` struct and copy buffer.

    Args:
        fd: the TCP socket's file descriptor (not owned).
        copybuf_len: size of the copy buffer for the unmappable tail; must stay below one page,
            or the kernel turns every call into a plain copy (see docs/ARCHITECTURE.md,
            'Receive: copybuf').
    """

    __slots__ = ("_copybuf_len", "_fd", "_len", "_len_addr", "_zc_addr", "copybuf", "zc")

    def __init__(self, fd: int, copybuf_len: int = PAGE_SIZE - 1) -> None:
        if not 0 <= copybuf_len < PAGE_SIZE:
            raise ValueError(f"copybuf_len must be in [0, {PAGE_SIZE}), got {copybuf_len}")
        self._fd = fd
        self._copybuf_len = copybuf_len
        self.zc = TcpZerocopyReceive()
        self.copybuf = bytearray(max(copybuf_len, 1))
        self._len = ctypes.c_uint32(ctypes.sizeof(TcpZerocopyReceive))
        self._zc_addr = ctypes.addressof(self.zc)
        self._len_addr = ctypes.addressof(self._len)
        self.zc.copybuf_address = ctypes.addressof(ctypes.c_char.from_buffer(self.copybuf))

    def __call__(self, address: int, length: int, flags: int = 0,
                 copybuf: bool = True) -> TcpZerocopyReceive:
        """Run one ``TCP_ZEROCOPY_RECEIVE``: map up to ``length`` bytes at ``address``.

        ``copybuf=False`` offers no copy buffer for this call (see the Receiver for why).
        Returns the (reused) struct with the kernel's answer; raises ``OSError`` on failure.
        """
        zc = self.zc
        zc.address = address
        zc.length = length
        zc.recv_skip_hint = 0
        zc.inq = 0
        zc.err = 0
        zc.copybuf_len = self._copybuf_len if copybuf else 0
        zc.flags = flags
        self._len.value = 64
        if _getsockopt(self._fd, socket.IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE,
                       self._zc_addr, self._len_addr) != 0:
            err = _get_errno()
            raise OSError(err, os.strerror(err))
        return zc


class Window:
    """A read-only shared mapping of a TCP socket into which pages are received.

    The window holds no file descriptor (see the module docstring): the mapping keeps the
    socket's file alive by itself, and it is unmapped by :meth:`close` or by the GC.

    Args:
        fd: the socket's file descriptor (not owned, not duplicated).
        size: window size in bytes, a multiple of the page size.

    Raises:
        OSError: reserving the range (``ENOMEM``: address-space limit or ``vm.max_map_count``)
            or mapping the socket there (``ENODEV``, ``EPERM``, ...) failed.
    """

    __slots__ = ("address", "mm", "size")

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"window size must be a positive multiple of {PAGE_SIZE}, got {size}")
        self.size = size
        # An anonymous, read-only, shared reservation: no fd, and its readonly-ness makes
        # resize() raise TypeError (not resize) when no export is alive (see busy()).
        mm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        address = buffer_address(mm)
        got = _mmap(address, size, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
        if got != address:
            err = errno_error("mmap of the socket") if got == _MAP_FAILED else OSError(
                f"mmap of the socket: MAP_FIXED returned {got:#x}, not {address:#x}")
            # do_mmap (mm/mmap.c) rejects a socket without mmap (ENODEV), bad flags and limits
            # before the range is touched, so the reservation is still ours and close() unmaps
            # only it. (A failure past that point, e.g. tcp_mmap's EPERM, which our flags never
            # trigger, leaves the range empty on kernels before 6.12; munmap of an empty range
            # is harmless.)
            mm.close()
            raise err
        self.mm = mm
        self.address = address

    def busy(self) -> bool:
        """Whether any memoryview of this window (or a slice of one) is still alive."""
        try:
            self.mm.resize(self.size)
        except BufferError:
            return True
        except TypeError:
            return False
        return False  # pragma: no cover - a read-only map never resizes

    def view(self, length: int) -> memoryview:
        """A read-only view of the first ``length`` bytes (counted as an export)."""
        return memoryview(self.mm)[:length]

    def dontneed(self) -> None:
        """Drop the pages mapped in the window (``madvise(MADV_DONTNEED)``)."""
        self.mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> bool:
        """Unmap the window; ``False`` if views are alive (then the GC unmaps it after them)."""
        try:
            self.mm.close()
        except BufferError:
            return False
        return True
