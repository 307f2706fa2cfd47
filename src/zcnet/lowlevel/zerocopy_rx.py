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

With the compiled extension (:mod:`zcnet._accel`) every window and copy buffer also has a
``PinGroup``, and the chunks over it are ``BufferBase`` objects counted in that group: "busy" is
then one integer test (``group.count``), exact for every export of a chunk, instead of the
``resize`` probe; the receive calls themselves run in C (``_speedups.ZerocopyReceive``, built by
:func:`zerocopy_call`). :class:`ZerocopyCall` is their pure-Python reference.

Copy buffers (:class:`CopyBuffer`, :class:`CopyBuffers`): copy-mode receives ``recv`` into a few
reusable ``bytearray`` buffers instead of a fresh ``bytes`` per call; a buffer is reused only
when no chunk or export of it is alive (its PinGroup, or a bytearray's own resize probe).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from zcnet._accel import speedups
from zcnet.lowlevel._libc import errno_error, libc_function
from zcnet.lowlevel.bufaddr import buffer_address
from zcnet.lowlevel.constants import TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT, TCP_ZEROCOPY_RECEIVE

__all__ = [
    "PAGE_SIZE",
    "TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT",
    "TCP_ZEROCOPY_RECEIVE",
    "CopyBuffer",
    "CopyBuffers",
    "TcpZerocopyReceive",
    "Window",
    "ZerocopyCall",
    "buffer_address",
    "zerocopy_call",
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

_C = TypeVar("_C")
_COPYBUF_END: Final = TcpZerocopyReceive.copybuf_len.offset + 4


class ZerocopyCall(Generic[_C]):
    """One connection's preallocated ``tcp_zerocopy_receive`` struct and copy buffer.

    The pure-Python reference of ``_speedups.ZerocopyReceive`` (same :meth:`receive` and
    :meth:`recv_copy`); :func:`zerocopy_call` picks the active one.

    Args:
        fd: the TCP socket's file descriptor (not owned).
        copybuf_len: size of the copy buffer for the unmappable tail; must stay below one page,
            or the kernel turns every call into a plain copy (see docs/ARCHITECTURE.md,
            'Receive: copybuf').
        chunk_type: builds the chunk handed out, from a read-only view and ``mapped``.
    """

    __slots__ = ("_chunk_type", "_copybuf_len", "_fd", "_len", "_len_addr", "_zc_addr",
                 "copybuf", "zc")

    def __init__(self, fd: int, copybuf_len: int = PAGE_SIZE - 1,
                 chunk_type: Callable[[memoryview, bool], _C] | None = None) -> None:
        if not 0 <= copybuf_len < PAGE_SIZE:
            raise ValueError(f"copybuf_len must be in [0, {PAGE_SIZE}), got {copybuf_len}")
        self._fd = fd
        self._chunk_type = chunk_type
        self._copybuf_len = copybuf_len
        self.zc = TcpZerocopyReceive()
        # a private anonymous page, so that the export probe tells whether a chunk over it is
        # alive (then it is not offered: the kernel would overwrite that chunk's bytes)
        self.copybuf = mmap.mmap(-1, PAGE_SIZE, access=mmap.ACCESS_COPY)
        self._len = ctypes.c_uint32(ctypes.sizeof(TcpZerocopyReceive))
        self._zc_addr = ctypes.addressof(self.zc)
        self._len_addr = ctypes.addressof(self._len)
        self.zc.copybuf_address = buffer_address(self.copybuf)

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
        if self._len.value < _COPYBUF_END:  # before Linux 5.11: no copy buffer, field untouched
            zc.copybuf_len = 0
        return zc

    def _chunk(self, view: memoryview, mapped: bool) -> _C:
        if self._chunk_type is None:
            raise TypeError("this ZerocopyCall was made without a chunk_type")
        return self._chunk_type(view, mapped)

    def receive(self, window: Window, length: int,
                copybuf: bool) -> tuple[_C | None, int, _C | None, int, int, int]:
        """One call into ``window``: ``(chunk, length, tail, recv_skip_hint, inq, err)``.

        ``chunk`` is the mapped pages (``None`` when none were mapped), ``tail`` the bytes copied
        into the copy buffer (``None`` when none); the rest is the kernel's answer. The copy
        buffer is offered only if ``copybuf`` and no chunk over it is alive. Raises ``OSError``
        when the call fails.
        """
        offer = copybuf and not _exported(self.copybuf)
        zc = self(window.address, length, copybuf=offer)
        n = zc.length
        chunk = self._chunk(window.view(n), True) if n else None
        copied = zc.copybuf_len
        tail = self._chunk(memoryview(self.copybuf)[:copied].toreadonly(), False) \
            if copied > 0 else None
        return chunk, n, tail, zc.recv_skip_hint, zc.inq, zc.err

    def recv_copy(self, buffer: CopyBuffer, nbytes: int) -> _C | None:
        """``recv`` up to ``nbytes`` into ``buffer``: the chunk over them (empty at EOF), or
        ``None`` when nothing is there. Raises ``OSError`` on failure."""
        view = memoryview(buffer.memory)
        try:
            # os.readv: a read(2) on a TCP socket is recv(2) without flags (fd only, no object)
            got = os.readv(self._fd, (view[:nbytes],))
        except (BlockingIOError, InterruptedError):
            return None
        return self._chunk(view.toreadonly()[:got], False)


def zerocopy_call(fd: int, copybuf_len: int,
                  chunk_type: Callable[[memoryview, bool], _C]) -> ZerocopyCall[_C]:
    """The active implementation's receive calls for ``fd``: ``_speedups.ZerocopyReceive`` (then
    ``chunk_type`` must subclass ``_speedups.ChunkBase``) or :class:`ZerocopyCall`."""
    if speedups is not None:
        call: ZerocopyCall[_C] = speedups.ZerocopyReceive(fd, copybuf_len, chunk_type)
        return call
    return ZerocopyCall(fd, copybuf_len, chunk_type)


def _new_group() -> Any:
    return speedups.PinGroup() if speedups is not None else None


def _exported(mm: mmap.mmap) -> bool:
    # resize of a read-only or copy-on-write map raises BufferError while exports exist and
    # TypeError otherwise (CPython's mmapmodule.c is_resizeable): a side-effect-free probe.
    try:
        mm.resize(len(mm))
    except BufferError:
        return True
    except TypeError:
        return False
    return False  # pragma: no cover - a read-only or private map never resizes


def _view(mm: mmap.mmap, group: Any, length: int) -> memoryview:
    if group is not None and speedups is not None:
        # counted in the group like a chunk: the window is busy until this view (and every
        # slice of it) is gone
        return memoryview(speedups.BufferBase(mm, 0, length, readonly=True, group=group))
    return memoryview(mm)[:length]


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

    __slots__ = ("address", "group", "memory", "mm", "size")

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
        self.memory = mm  # the name the receive calls use for windows and copy buffers alike
        self.address = address
        self.group: Any = _new_group()

    def busy(self) -> bool:
        """Whether any chunk or view of this window (or a slice of one) is still alive."""
        group = self.group
        if group is not None:  # compiled: the chunks over it are counted exactly
            return bool(group.count)
        return _exported(self.mm)

    def view(self, length: int) -> memoryview:
        """A read-only view of the first ``length`` bytes (counted as an export)."""
        return _view(self.mm, self.group, length)

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


class CopyBuffer:
    """A reusable receive buffer for copies (``memory``, a ``bytearray``)."""

    __slots__ = ("group", "memory", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.memory = bytearray(size)
        self.group: Any = _new_group()
        if self.group is None:
            self.busy()  # the probe's one reallocation (to over-allocated), now

    def busy(self) -> bool:
        """Whether any chunk over this buffer (or an export of one) is still alive."""
        group = self.group
        if group is not None:  # compiled: the chunks over it are counted exactly
            return bool(group.count)
        # A bytearray refuses to change size while exported (BufferError, Objects/
        # bytearrayobject.c _canresize); growing it by one byte and back is the cheap probe
        # (no exception when free; its over-allocation makes it no realloc after the first).
        memory = self.memory
        try:
            memory.append(0)
        except BufferError:
            return True
        del memory[-1]
        return False

    def close(self) -> None:
        """Drop the buffer (chunks still over it keep it alive until they are gone)."""
        self.memory = bytearray()


class CopyBuffers:
    """Up to ``count`` :class:`CopyBuffer` of at most ``max_size`` bytes, made on demand.

    :meth:`get` returns the first buffer no live chunk refers to (so a receiver whose chunks
    are released in time reuses one warm buffer), growing it if it is too small.
    """

    __slots__ = ("_bufs", "count", "max_size")

    def __init__(self, count: int, max_size: int) -> None:
        self.count = count
        self.max_size = max_size
        self._bufs: list[CopyBuffer] = []

    def get(self, nbytes: int) -> CopyBuffer | None:
        """A free buffer of ``min(nbytes, max_size)`` bytes or more, or ``None`` (all busy, or
        mapping one failed)."""
        bufs = self._bufs
        if bufs:  # the common case first: the first buffer, free and big enough
            buf = bufs[0]
            group = buf.group
            if ((not group.count) if group is not None else not buf.busy()) and (
                    buf.size >= nbytes or buf.size >= self.max_size):
                return buf
        for i, buf in enumerate(bufs):
            if not buf.busy():
                if buf.size >= nbytes or buf.size >= self.max_size:
                    return buf
                buf.close()
                return self._make(nbytes, i)
        if len(bufs) < self.count:
            return self._make(nbytes, None)
        return None

    def _make(self, nbytes: int, index: int | None) -> CopyBuffer | None:
        size = -(-min(nbytes, self.max_size) // PAGE_SIZE) * PAGE_SIZE
        try:
            buf = CopyBuffer(size)
        except OSError:
            if index is not None:
                del self._bufs[index]
            return None
        if index is None:
            self._bufs.append(buf)
        else:
            self._bufs[index] = buf
        return buf

    def busy(self) -> int:
        """How many buffers are held by live chunks."""
        return sum(1 for b in self._bufs if b.busy())

    def close(self) -> None:
        """Drop every buffer (one held by live chunks stays alive until they are gone)."""
        for buf in self._bufs:
            buf.close()
        self._bufs.clear()
