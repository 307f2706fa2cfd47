"""Sender in network namespaces: real zero-copy toward an ifb sink; ENOBUFS back-pressure."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.conftest import requires_netns, requires_zerocopy
from tests.tx_helpers import VerifyingReceiver, pattern_slices
from zcnet.lowlevel.constants import SOL_UDP, UDP_SEGMENT
from zcnet.netns import IFB_SINK_ADDR, Netns
from zcnet.sender import Sender, SendPolicy

GSO_SIZE = 1472
DATAGRAM = 44 * GSO_SIZE  # 64768 bytes: the largest multiple of 1472 under the 64 KB IP limit


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
