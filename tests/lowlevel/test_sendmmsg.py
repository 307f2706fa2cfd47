"""sendmmsg layouts and calls; buffer addresses without copies."""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket

import pytest

from zcnet.lowlevel.bufaddr import BufferAddresser
from zcnet.lowlevel.sendmmsg import UIO_MAXIOV, MmsgBatch, Mmsghdr, sendmmsg_available

pytestmark = pytest.mark.skipif(
    sendmmsg_available() is not None, reason=str(sendmmsg_available())
)


def test_layout_and_preset_entries() -> None:
    assert ctypes.sizeof(Mmsghdr) == 64
    b = MmsgBatch(4)
    for i in range(4):
        hdr = b._msgs[i].msg_hdr
        assert hdr.msg_iovlen == 1 and not hdr.msg_name and not hdr.msg_control
        assert hdr.msg_iov == ctypes.addressof(b._iov) + 16 * i
    b.set(2, 0x1234, 99)
    assert (b._iov[2].iov_base, b._iov[2].iov_len) == (0x1234, 99)
    for bad in (0, UIO_MAXIOV + 1):
        with pytest.raises(ValueError):
            MmsgBatch(bad)
    for start, count in ((-1, 1), (0, 0), (3, 2)):
        with pytest.raises(ValueError):
            b.send(0, start, count, 0)


def test_addresses_are_the_objects_own_memory() -> None:
    ba = BufferAddresser()
    data = bytearray(b"0123456789")
    addr = ba(data)
    assert ctypes.string_at(addr, 10) == b"0123456789"
    data[0:1] = b"X"  # the same memory, not a copy
    assert ctypes.string_at(addr, 1) == b"X"
    frozen = b"read-only bytes"
    assert ctypes.string_at(ba(frozen), len(frozen)) == frozen
    view = memoryview(frozen)[5:9]
    assert ctypes.string_at(ba(view), 4) == b"only"
    with mmap.mmap(-1, 4096) as mm:
        mm[:4] = b"mmap"
        assert ctypes.string_at(ba(mm), 4) == b"mmap"
    for bad in ("text", 5):
        with pytest.raises(TypeError):
            ba(bad)


def test_partial_batch_returns_count_then_reports_the_error() -> None:
    """A refused message stops the call; its error comes from the next call starting there."""
    ba = BufferAddresser()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        r.bind(("127.0.0.1", 0))
        r.settimeout(5)
        u.connect(r.getsockname())
        msgs = [b"first", b"second", bytes(70_000), b"fourth"]
        b = MmsgBatch(8)
        for i, m in enumerate(msgs):
            b.set(i, ba(m), len(m))
        assert b.send(u.fileno(), 0, 4, 0) == 2
        assert b.sent_len(1) == 6
        with pytest.raises(OSError) as info:
            b.send(u.fileno(), 2, 2, 0)
        assert info.value.errno == errno.EMSGSIZE
        assert b.send(u.fileno(), 3, 1, 0) == 1
        assert [r.recv(100) for _ in range(3)] == [b"first", b"second", b"fourth"]
