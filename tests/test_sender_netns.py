"""Sender in network namespaces: real zero-copy toward an ifb sink; ENOBUFS back-pressure."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.conftest import requires_netns, requires_zerocopy
from tests.tx_helpers import (
    PATTERN,
    DatagramReceiver,
    VerifyingReceiver,
    msg_zerocopy_only,
    pattern_slices,
)
from zcnet._core.txpolicy import ENOBUFS_COPIES_BEFORE_FALLBACK
from zcnet.lowlevel.constants import SOL_UDP, UDP_SEGMENT
from zcnet.netns import IFB_SINK_ADDR, Netns
from zcnet.sender import Sender, SendPolicy

GSO_SIZE = 1472
DATAGRAM = 44 * GSO_SIZE  # 64768 bytes: the largest multiple of 1472 under the 64 KB IP limit

_optmem_only = msg_zerocopy_only(
    "net.core.optmem_max is the budget of its notifications; io_uring's are not charged to it")


def _ifb_rx(ns: Netns) -> tuple[int, int]:
    out = subprocess.run(
        ["ip", "-n", ns.name, "-s", "-j", "link", "show", "ifb0"],
        capture_output=True, text=True, check=True,
    ).stdout
    stats = json.loads(out)[0]["stats64"]["rx"]
    return int(stats["packets"]), int(stats["bytes"])


@requires_netns
@requires_zerocopy
def test_udp_gso_to_ifb_sink_completes_uncopied(ifb_netns: Netns) -> None:
    """Toward a device that frees packets without copying, completions arrive NOT copied."""
    with ifb_netns.entered():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((IFB_SINK_ADDR, 9000))
    try:
        u.setsockopt(SOL_UDP, UDP_SEGMENT, GSO_SIZE)
    except OSError as e:  # pragma: no cover - kernels before 4.18
        u.close()
        pytest.skip(f"UDP_SEGMENT unsupported: {e}")
    packets0, bytes0 = _ifb_rx(ifb_netns)
    count = 400
    buffers = [bytes([i]) * DATAGRAM for i in range(4)]
    with Sender(u) as sender:
        tickets = [sender.send(buffers[i % 4]) for i in range(count)]
        sender.flush(30)
        st = sender.stats
    total = count * DATAGRAM
    assert all(t.done and t.zerocopy and t.copied is False for t in tickets)
    assert st.mode == "zerocopy" and st.fallback_reason is None
    assert (st.bytes_zerocopy, st.bytes_copied, st.bytes_plain, st.bytes_pending) == (
        total, 0, 0, 0,
    )
    assert st.sends_zerocopy == count == st.completions
    assert st.notifications <= count  # coalesced
    packets1, bytes1 = _ifb_rx(ifb_netns)
    # every super-datagram reached the sink (as one GSO packet), payload plus headers
    assert packets1 - packets0 >= count
    assert bytes1 - bytes0 >= total


@_optmem_only
@requires_netns
@requires_zerocopy
@pytest.mark.parametrize("optmem", [0, 2048])
def test_enobufs_is_absorbed(optmem: int) -> None:
    """A tiny notification budget makes zero-copy sends fail with ENOBUFS; nothing is raised,
    every byte arrives."""
    total = 48 << 20
    with Netns(lo_mtu=None) as ns:
        ns.sysctl("net.core.optmem_max", optmem)
        with ns.entered():
            ls = socket.create_server(("127.0.0.1", 0))
            c = socket.create_connection(ls.getsockname())
            s, _ = ls.accept()
            ls.close()
        rx = VerifyingReceiver(s, delay=0.002, slow_reads=200)  # slow at first
        rx.start()
        with Sender(c, SendPolicy(force_zerocopy=True)) as sender:
            tickets = [
                sender.send(v) for v in pattern_slices(total, [65536, 200_000, 20_000, 1 << 20])
            ]
            sender.flush(60)
            st = sender.stats
            assert st.enobufs > 0, "the test needs ENOBUFS to happen"
            assert all(t.done and t.error is None for t in tickets)
            assert st.bytes_copied + st.bytes_plain == total and st.bytes_pending == 0
            assert st.mode == "zerocopy"  # forced: ENOBUFS never turns it off
            if optmem:
                assert st.sends_zerocopy > 0  # some notifications fit: zero-copy went on
            c.shutdown(socket.SHUT_WR)
        rx.finish(total)


def _gso_socket(ns: Netns) -> socket.socket:
    with ns.entered():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((IFB_SINK_ADDR, 9000))
    try:
        u.setsockopt(SOL_UDP, UDP_SEGMENT, GSO_SIZE)
    except OSError as e:  # pragma: no cover - kernels before 4.18
        u.close()
        pytest.skip(f"UDP_SEGMENT unsupported: {e}")
    # no IPv6 chatter (router solicitations, MLD) on the sink: its counters then count only ours
    ns.sysctl("net.ipv6.conf.ifb0.disable_ipv6", 1)
    return u


#: Ethernet + IPv4 + UDP headers: what the ifb counts per (GSO super-)datagram beyond the payload
_HEADERS = 14 + 20 + 8


@requires_netns
@requires_zerocopy
def test_udp_gso_batches_to_ifb_sink_complete_uncopied(ifb_netns: Netns) -> None:
    """send_batch toward the ifb sink: one counter value per datagram, every completion NOT
    copied, and the sink saw exactly our datagrams (packets and bytes)."""
    u = _gso_socket(ifb_netns)
    sizes = [DATAGRAM, 20 * GSO_SIZE + 100, DATAGRAM, 30_001, GSO_SIZE]
    backing = bytearray(PATTERN[: 8 * DATAGRAM])
    bufs = [memoryview(backing)[k * 997 : k * 997 + sizes[k % len(sizes)]] for k in range(160)]
    packets0, bytes0 = _ifb_rx(ifb_netns)
    tickets = []
    with Sender(u) as sender:
        for n in (32, 100, 1, 27):  # 160 datagrams; one batch above BATCH_MAX
            tickets += sender.send_batch(bufs[len(tickets) : len(tickets) + n])
        sender.flush(30)
        st = sender.stats
    total = sum(b.nbytes for b in bufs)
    assert len(tickets) == len(bufs)
    small = [t for t in tickets if t.nbytes < SendPolicy().zerocopy_threshold]  # GSO_SIZE ones
    big = [t for t in tickets if t not in small]
    zc_total = sum(t.nbytes for t in big)
    assert small and all(t.done and not t.zerocopy and t.error is None for t in small)
    assert all(t.done and t.zerocopy and t.copied is False and t.error is None for t in big)
    assert st.mode == "zerocopy" and st.fallback_reason is None
    assert (st.bytes_zerocopy, st.bytes_copied, st.bytes_plain, st.bytes_pending) == (
        zc_total, 0, total - zc_total, 0,
    )
    assert st.sends_zerocopy == len(big) == st.completions
    assert st.sends_plain == len(small)
    assert st.notifications < len(big)  # coalesced
    packets1, bytes1 = _ifb_rx(ifb_netns)
    assert packets1 - packets0 == len(bufs)
    assert bytes1 - bytes0 == total + _HEADERS * len(bufs)
    bufs.clear()
    backing.extend(b"x")  # the Sender released its views of it with the tickets


@_optmem_only
@requires_netns
@requires_zerocopy
@pytest.mark.parametrize("optmem", [0, 1024])
def test_batch_enobufs_to_ifb_sink_loses_nothing(optmem: int) -> None:
    """A tiny notification budget: sendmmsg stops at the datagram that got ENOBUFS, the Sender
    reaps and retries or copies it; every datagram reaches the sink exactly once. (With 1024
    bytes, measured on Linux 6.18, one unread notification fills the budget: nearly every
    sendmmsg sends one datagram and stops at ENOBUFS on the next, which succeeds after a reap.)"""
    with Netns(ifb_sink=True) as ns:
        ns.sysctl("net.core.optmem_max", optmem)
        u = _gso_socket(ns)
        bufs = [bytes([k]) * DATAGRAM for k in range(16)] * 30  # 480 datagrams
        packets0, bytes0 = _ifb_rx(ns)
        with Sender(u, SendPolicy(force_zerocopy=True)) as sender:
            tickets = []
            for k in range(0, len(bufs), 48):
                tickets += sender.send_batch(bufs[k : k + 48])
            sender.flush(30)
            st = sender.stats
        total = len(bufs) * DATAGRAM
        assert st.enobufs > 0, "the test needs ENOBUFS to happen"
        assert all(t.done and t.error is None for t in tickets) and len(tickets) == len(bufs)
        assert st.bytes_zerocopy + st.bytes_copied + st.bytes_plain == total
        assert st.bytes_pending == 0 and st.completions == st.sends_zerocopy
        assert st.sends_zerocopy + st.sends_plain == len(bufs)
        if optmem:
            assert st.sends_zerocopy > 0  # some notifications fit
        packets1, bytes1 = _ifb_rx(ns)
        assert packets1 - packets0 == len(bufs)
        assert bytes1 - bytes0 == total + _HEADERS * len(bufs)


@_optmem_only
@requires_netns
@requires_zerocopy
def test_batch_enobufs_over_loopback_every_byte() -> None:
    """No notification budget at all, default policy: zero-copy datagrams get ENOBUFS, go out
    as copies, then the socket switches to copy mode; every datagram arrives intact, in order."""
    with Netns(lo_mtu=None) as ns:
        ns.sysctl("net.core.optmem_max", 0)
        with ns.entered():
            r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            r.bind(("127.0.0.1", 0))
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.connect(r.getsockname())
        rx = DatagramReceiver(r)
        rx.start()
        payloads = [PATTERN[k * 991 : k * 991 + (20_000 + 7 * k)] for k in range(300)]
        with Sender(u) as sender:
            tickets = []
            for k in range(0, len(payloads), 40):
                tickets += sender.send_batch(payloads[k : k + 40])
            sender.flush(30)
            st = sender.stats
        assert st.enobufs >= ENOBUFS_COPIES_BEFORE_FALLBACK
        assert st.mode == "copy" and "ENOBUFS" in (st.fallback_reason or "")
        assert st.sends_zerocopy == 0 and st.bytes_plain == sum(map(len, payloads))
        assert all(t.done and t.error is None and not t.zerocopy for t in tickets)
        rx.finish(payloads)
