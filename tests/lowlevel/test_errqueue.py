"""Error-queue parsing: crafted bytes, and real messages captured from the kernel."""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time

import pytest

from tests.conftest import requires_zerocopy
from tests.tx_helpers import tcp_pair, wait_pollerr
from zcnet.lowlevel.constants import (
    IP_RECVERR,
    IPV6_RECVERR,
    MSG_ERRQUEUE,
    MSG_ZEROCOPY,
    SO_EE_ORIGIN_ZEROCOPY,
    SO_ZEROCOPY,
    SOL_IP,
    SOL_IPV6,
)
from zcnet.lowlevel.errqueue import (
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SOCK_EXTENDED_ERR,
    QueuedError,
    ZerocopyCompletion,
    drain_errqueue,
    parse_ancdata,
    parse_extended_err,
)


def ee(errno_: int, origin: int, type_: int, code: int, info: int, data: int) -> bytes:
    return struct.pack("=IBBBBII", errno_, origin, type_, code, 0, info, data)


def test_struct_layout() -> None:
    assert SOCK_EXTENDED_ERR.size == 16
    raw = ee(0, 5, 0, 1, 0x01020304, 0xA0B0C0D0)
    assert raw[4] == 5 and raw[6] == 1  # ee_origin at 4, ee_code at 6
    assert int.from_bytes(raw[8:12], sys.byteorder) == 0x01020304


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (ee(0, 5, 0, 0, 0, 9), ZerocopyCompletion(0, 9, False)),
        (ee(0, 5, 0, 1, 7, 7), ZerocopyCompletion(7, 7, True)),
        (ee(0, 5, 0, 3, 2**32 - 2, 1), ZerocopyCompletion(2**32 - 2, 1, True)),  # wraps
        (ee(111, 2, 3, 3, 0, 0), QueuedError(111, 2, 3, 3, 0, 0, SOL_IP, IP_RECVERR)),
        (ee(90, 1, 0, 0, 1500, 0), QueuedError(90, 1, 0, 0, 1500, 0, SOL_IP, IP_RECVERR)),
        # origin zerocopy but an errno: not a completion
        (ee(12, 5, 0, 0, 0, 3), QueuedError(12, 5, 0, 0, 0, 3, SOL_IP, IP_RECVERR)),
        # trailing offender address is ignored
        (ee(0, 5, 0, 0, 1, 2) + bytes(16), ZerocopyCompletion(1, 2, False)),
    ],
)
def test_parse_crafted(raw: bytes, expected: object) -> None:
    assert parse_extended_err(raw) == expected


def test_parse_too_short() -> None:
    with pytest.raises(ValueError):
        parse_extended_err(bytes(15))


def test_parse_ancdata_levels_and_skips() -> None:
    anc = [
        (SOL_IPV6, IPV6_RECVERR, ee(0, 5, 0, 0, 3, 4)),
        (socket.SOL_SOCKET, 37, bytes(48)),  # SCM_TIMESTAMPING: skipped
        (SOL_IP, IP_RECVERR, ee(113, 2, 3, 1, 0, 0)),
    ]
    events = parse_ancdata(anc)
    assert events == [
        ZerocopyCompletion(3, 4, False),
        QueuedError(113, 2, 3, 1, 0, 0, SOL_IP, IP_RECVERR),
    ]
    assert isinstance(events[1], QueuedError) and events[1].strerror


@requires_zerocopy
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_real_zerocopy_completions(family: int) -> None:
    """MSG_ZEROCOPY over loopback: the kernel's own messages parse as copied completions."""
    c, s = tcp_pair(family)
    with c, s:
        c.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        data = bytes(range(256)) * 256  # 64 KiB
        calls = 5
        for _ in range(calls):
            assert c.send(data, MSG_ZEROCOPY) == len(data)
        got = bytearray()
        while len(got) < calls * len(data):
            got += s.recv(1 << 20)
        assert got == data * calls
        assert wait_pollerr(c)
        # first message read raw, to test the pure parser on what the kernel really wrote
        _, anc, flags, _ = c.recvmsg(0, 256, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        assert flags & MSG_ERRQUEUE
        level, ctype, raw = anc[0]
        expected_cmsg = (SOL_IP, IP_RECVERR) if family == socket.AF_INET else (
            SOL_IPV6, IPV6_RECVERR)
        assert (level, ctype) == expected_cmsg
        assert raw[4] == SO_EE_ORIGIN_ZEROCOPY
        events = parse_ancdata(anc)
        # coalesced ranges: later messages (if any) continue where the first stopped
        deadline = time.monotonic() + 5
        while True:
            events += drain_errqueue(c)
            last = events[-1]
            assert isinstance(last, ZerocopyCompletion)
            if last.hi == calls - 1 or time.monotonic() > deadline:
                break
            wait_pollerr(c, 0.1)
        covered = []
        for ev in events:
            assert isinstance(ev, ZerocopyCompletion)
            assert ev.copied  # loopback always copies
            covered.extend(range(ev.lo, ev.hi + 1))
        assert covered == list(range(calls))
        assert drain_errqueue(c) == []


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_real_icmp_error_is_not_a_completion(family: int) -> None:
    """A UDP port-unreachable (IP_RECVERR) arrives as a QueuedError, never as a completion."""
    addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_DGRAM) as closed:
        closed.bind((addr, 0))
        port = closed.getsockname()[1]
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        if family == socket.AF_INET:
            u.setsockopt(SOL_IP, IP_RECVERR, 1)
        else:
            u.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
        u.settimeout(5.0)  # drain_errqueue must not wait on sockets with a timeout
        u.connect((addr, port))
        u.send(b"anyone?")
        assert wait_pollerr(u)
        events = drain_errqueue(u)
        assert len(events) == 1
        ev = events[0]
        assert isinstance(ev, QueuedError)
        assert ev.errno == errno.ECONNREFUSED
        assert ev.origin == (SO_EE_ORIGIN_ICMP if family == socket.AF_INET else SO_EE_ORIGIN_ICMP6)
        assert drain_errqueue(u) == []


def test_drain_empty_and_max_messages() -> None:
    c, s = tcp_pair()
    with c, s:
        assert drain_errqueue(c) == []
        assert drain_errqueue(c, max_messages=0) == []
