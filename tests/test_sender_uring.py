"""The io_uring send engine's own behaviour: registered pool memory, its refusals, its limits.

The rest of the Sender suite runs on this engine too (scripts/test-every-python.sh sets
``ZCNET_SEND_ENGINE=io_uring`` for a second run of tests/test_sender*.py); these tests choose
the engine explicitly. Refusals are made real in a child process only: a seccomp filter that
refuses the io_uring system calls with EPERM (as a container's profile does), or nobody with a
low RLIMIT_MEMLOCK (tests/restricted_child.py).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.conftest import requires_netns
from tests.restricted_child import (
    io_uring_refusal_unavailable_reason,
    nobody_unavailable_reason,
    run_child_json,
)
from tests.test_sender_netns import _HEADERS, DATAGRAM, _gso_socket, _ifb_rx
from tests.tx_helpers import VerifyingReceiver, pattern_bytes, tcp_pair, udp_pair
from zcnet._core.txpolicy import ENGINE_ENV, resolve_engine
from zcnet.errors import PoolError, SocketClosedError
from zcnet.lowlevel.constants import IP_RECVERR, SOL_IP
from zcnet.lowlevel.uring import (
    AUTO_KEEPS_MSG_ZEROCOPY,
    TABLE_SIZE,
    msg_zerocopy_obstacle,
    open_ring,
    unavailable_reason,
)
from zcnet.netns import Netns
from zcnet.pool import BufferPool, Lease
from zcnet.sender import Sender, SendPolicy

MiB = 1 << 20
URING_SKIP = unavailable_reason()
requires_uring = pytest.mark.skipif(URING_SKIP is not None,
                                    reason=f"the io_uring engine is unavailable: {URING_SKIP}")
REFUSAL_SKIP = io_uring_refusal_unavailable_reason()
requires_refusal = pytest.mark.skipif(REFUSAL_SKIP is not None, reason=REFUSAL_SKIP or "")
NOBODY_SKIP = nobody_unavailable_reason()
requires_nobody = pytest.mark.skipif(NOBODY_SKIP is not None, reason=NOBODY_SKIP or "")
URING = SendPolicy(engine="io_uring", force_zerocopy=True)


def test_engine_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad engine is a ValueError naming it, from the policy or, for the environment's, from
    the Sender before it touches the socket; without either the engine is MSG_ZEROCOPY."""
    with pytest.raises(ValueError, match="engine must be one of"):
        SendPolicy(engine="uring")  # type: ignore[arg-type]
    client, server = tcp_pair()
    with client, server:
        monkeypatch.setenv(ENGINE_ENV, "fast")
        with pytest.raises(ValueError, match=f"{ENGINE_ENV}='fast'"):
            Sender(client)
        assert client.getblocking()
        monkeypatch.delenv(ENGINE_ENV)
        with Sender(client) as sender:
            assert sender.stats.engine == "msg_zerocopy" and sender.stats.engine_reason is None
    assert SendPolicy().engine is None
    assert resolve_engine(None, {ENGINE_ENV: "auto"}) == "auto"
    assert resolve_engine("io_uring", {ENGINE_ENV: "msg_zerocopy"}) == "io_uring"
    assert resolve_engine(None, {}) == "msg_zerocopy"


@requires_uring
def test_tcp_leases_go_out_from_registered_memory() -> None:
    """Pool leases over TCP on io_uring: sent with fixed-buffer SEND_ZC from their slab,
    registered once; every byte arrives in order; every lease comes back to the pool."""
    client, server = tcp_pair()
    rx = VerifyingReceiver(server)
    rx.start()
    sizes = [MiB, 300_001, 4 * MiB - 3, 64 * 1024, 2 * MiB + 17] * 4
    offset = 0
    with BufferPool(hugepages=False) as pool:
        leases = []
        with Sender(client, URING) as sender:
            for n in sizes:
                lease = pool.acquire(n)
                lease.view[:] = pattern_bytes(offset, n)
                offset += n
                leases.append(lease)
                sender.send(lease)
            sender.flush(30)
            st = sender.stats
            sender.shutdown()
        assert all(lease.released for lease in leases)
    rx.finish(offset)
    assert st.engine == "io_uring" and st.engine_reason is None
    assert st.registration_reason is None and st.registered_bytes > 0
    assert st.sends_registered >= len(sizes)  # a lease over 1 MiB goes in several sends
    assert st.sends_zerocopy == st.completions and st.bytes_pending == 0
    assert st.bytes_zerocopy + st.bytes_copied == offset  # (loopback copies: reported copied)


@requires_uring
@pytest.mark.parametrize("engine", ["io_uring", "msg_zerocopy"])
def test_register_pool_registers_the_mapped_slabs_up_front(engine: str) -> None:
    """register_pool registers every slab mapped so far, once (a second call registers
    nothing); the leases then go out from registered memory, every byte in order. On the
    MSG_ZEROCOPY engine nothing is registered. A closed pool or Sender is refused."""
    client, server = tcp_pair()
    rx = VerifyingReceiver(server)
    rx.start()
    slab = 4 * MiB
    with BufferPool(hugepages=False, slab_bytes=slab) as pool:
        leases = []
        offset = 0
        for _ in range(10):  # 10 MiB of 1 MiB leases: three slabs
            lease = pool.acquire(MiB)
            lease.view[:] = pattern_bytes(offset, MiB)
            offset += MiB
            leases.append(lease)
        policy = SendPolicy(engine=engine, force_zerocopy=True)  # type: ignore[arg-type]
        with Sender(client, policy) as sender:
            took = sender.register_pool(pool)
            assert took == (3 * slab if engine == "io_uring" else 0)
            assert sender.register_pool(pool) == 0
            before = sender.stats.registered_bytes
            for lease in leases:
                sender.send(lease)
            sender.flush(30)
            st = sender.stats
            sender.shutdown()
        assert all(lease.released for lease in leases)
    rx.finish(offset)
    assert st.registered_bytes == before  # nothing registered while sending
    if engine == "io_uring":
        assert st.registered_bytes == 3 * slab and st.sends_registered >= len(leases)
    else:
        assert st.registered_bytes == 0 and st.sends_registered == 0
    assert st.bytes_zerocopy + st.bytes_copied == offset
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", 9))
    with Sender(udp, policy) as other, pytest.raises(PoolError, match="closed"):
        other.register_pool(pool)
    with BufferPool() as unused, pytest.raises(SocketClosedError):
        other.register_pool(unused)


def _send_shuffled(sender: Sender, leases: list[Lease], seed: int) -> list[bytes]:
    """Fill ``leases`` and send them in a shuffled order (not slab order), the first half one
    by one, the rest in batches of 16; the datagrams expected, in order."""
    order = list(leases)
    random.Random(seed).shuffle(order)
    payloads = []
    for k, lease in enumerate(order):
        payload = pattern_bytes(k * 65536, lease.size)
        lease.view[:] = payload
        payloads.append(bytes(payload))
    half = len(order) // 2
    for lease in order[:half]:
        sender.send(lease)
    for k in range(half, len(order), 16):
        sender.send_batch(order[k:k + 16])
    sender.flush(30)
    return payloads


@requires_uring
def test_leases_of_hundreds_of_slabs_out_of_order_go_out_registered() -> None:
    """Leases from 300 registered 64 KiB slabs (four 16 KiB leases each), sent in a shuffled
    order, one by one and in batches: the ring finds each one's slab in its table (a search of
    the registered ranges by address), so every datagram goes out registered; each arrives
    whole, in order."""
    slab = 64 * 1024
    u, rx = udp_pair()
    with BufferPool(hugepages=False, slab_bytes=slab) as pool:
        leases = [pool.acquire(12_000 + 97 * (k % 43)) for k in range(1200)]
        assert pool.stats().slabs == 300
        with Sender(u, URING) as sender:
            assert sender.register_pool(pool) == 300 * slab
            payloads = _send_shuffled(sender, leases, seed=20261204)
            st = sender.stats
        rx.finish(payloads)
        assert all(lease.released for lease in leases)
    assert st.registration_reason is None and st.registered_bytes == 300 * slab
    assert st.sends_registered == len(leases) == st.sends_zerocopy == st.completions


@requires_uring
@pytest.mark.parametrize("up_front", [True, False])
def test_slabs_beyond_the_table_go_out_unregistered_and_stats_say_why(
    up_front: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool of six slabs more than the ring's table holds (one lease a slab), registered up
    front by register_pool or by each slab's first send: TABLE_SIZE slabs are registered, the
    other six slabs' leases go out unregistered (plain SEND_ZC), every datagram whole and in
    order, and registration_reason says the table is full. Compiled, the send path asks the
    registry about an unregistered slab once after that, not at every send."""
    from zcnet._accel import speedups
    from zcnet.lowlevel.uring import SlabRegistry

    refusals: list[int] = []
    index_of = SlabRegistry.index_of

    def counted(self: SlabRegistry, slab: Any) -> int:
        index = index_of(self, slab)
        if index < 0:
            refusals.append(index)
        return index

    monkeypatch.setattr(SlabRegistry, "index_of", counted)
    page = mmap.PAGESIZE
    extra = 6
    u, rx = udp_pair()
    with BufferPool(hugepages=False, slab_bytes=page) as pool:
        leases = [pool.acquire(page - 17 * (k % 11)) for k in range(TABLE_SIZE + extra)]
        assert pool.stats().slabs == len(leases)
        with Sender(u, SendPolicy(engine="io_uring", force_zerocopy=True,
                                  zerocopy_threshold=0)) as sender:
            if up_front:
                assert sender.register_pool(pool) == TABLE_SIZE * page
                assert sender.stats.registration_reason is not None
            payloads = _send_shuffled(sender, leases, seed=1024)
            st = sender.stats
        rx.finish(payloads)
        assert all(lease.released for lease in leases)
    assert st.registered_bytes == TABLE_SIZE * page
    assert st.registration_reason == (
        f"io_uring buffer table full: {TABLE_SIZE} slabs ({TABLE_SIZE * page / MiB:g} MiB) "
        "registered; later slabs go out unregistered")
    assert st.sends_registered == TABLE_SIZE
    assert st.sends_zerocopy == st.completions == len(leases)  # the others: plain SEND_ZC
    if speedups is not None:
        assert len(refusals) == (2 if up_front else 1)  # (register_pool's, then the send's)


@requires_uring
def test_ring_finds_the_registered_buffer_of_any_range() -> None:
    """The ring's own lookup (start_send with fixed_index -1), over buffers registered in an
    order unrelated to their addresses: a range inside one goes out registered, one reaching
    past its end or in no buffer does not; a buffer unset (length 0) or replaced is no longer
    found, its replacement is. Every datagram arrives whole."""
    size = 16 * 1024
    maps = [mmap.mmap(-1, 2 * size) for _ in range(6)]  # registered: the first half of each
    for k, m in enumerate(maps):
        m[:] = pattern_bytes(k * 2 * size, 2 * size)
    anchors = [ctypes.c_char.from_buffer(m) for m in maps]
    addresses = [ctypes.addressof(a) for a in anchors]
    del anchors
    views = [memoryview(m) for m in maps]
    ring = open_ring()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        r.bind(("127.0.0.1", 0))
        r.settimeout(10)
        u.connect(r.getsockname())

        def registered(buf: memoryview | bytes) -> bool:
            before = ring.sends_registered
            seq = ring.start_send(u.fileno(), buf, -1, 0)
            deadline = time.monotonic() + 10
            while (took := ring.result(seq)) is None:
                assert time.monotonic() < deadline
                ring.wait(0.25)
            assert took == len(buf) and r.recv(2 * size) == bytes(buf)
            return bool(ring.sends_registered == before + 1)

        ring.register_table(8)
        for index, k in [(5, 0), (0, 1), (3, 2), (7, 3), (1, 4)]:  # maps[5]: not registered
            ring.register_buffer(index, addresses[k], size)
        for k in range(5):
            v = views[k]
            assert registered(v[:size]) and registered(v[size - 100:size])
            assert registered(v[1234:1234 + 4000]) and registered(v[size - 1:size])
            assert not registered(v[size - 100:size + 1]) and not registered(v[size:])
        assert not registered(views[5][:size]) and not registered(pattern_bytes(0, 3000))
        ring.register_buffer(3, 0, 0)  # maps[2] unset
        ring.register_buffer(7, addresses[5], size)  # maps[3] replaced by maps[5]
        assert not registered(views[2][100:200]) and not registered(views[3][100:200])
        assert registered(views[5][100:200]) and registered(views[4][100:200])
        assert registered(views[0][:10]) and registered(views[1][size - 10:size])
        deadline = time.monotonic() + 10
        while ring.awaiting:  # the notifications: then the kernel is done with the memory
            assert time.monotonic() < deadline
            ring.wait(0.25)
            ring.completions()
        ring.close()
    for v, m in zip(views, maps, strict=True):
        v.release()
        m.close()


@requires_uring
@requires_netns
def test_batches_of_leases_to_the_ifb_sink_are_registered_and_uncopied(ifb_netns: Netns) -> None:
    """send_batch of pool leases toward the ifb sink: one linked submission per batch, every
    datagram from registered memory, every completion not copied; the sink counted exactly
    our datagrams."""
    u = _gso_socket(ifb_netns)
    count = 96
    packets0, bytes0 = _ifb_rx(ifb_netns)
    with BufferPool(hugepages=False) as pool:
        leases = []
        for k in range(count):
            lease = pool.acquire(DATAGRAM)
            lease.view[:] = bytes([k]) * DATAGRAM
            leases.append(lease)
        with Sender(u, SendPolicy(engine="io_uring")) as sender:
            tickets = []
            for k in range(0, count, 32):
                tickets += sender.send_batch(leases[k:k + 32])
            sender.flush(30)
            st = sender.stats
        assert all(lease.released for lease in leases)
    total = count * DATAGRAM
    assert all(t.done and t.zerocopy and t.copied is False and t.error is None for t in tickets)
    assert st.sends_registered == count == st.sends_zerocopy == st.completions
    assert (st.bytes_zerocopy, st.bytes_copied, st.bytes_plain) == (total, 0, 0)
    packets1, bytes1 = _ifb_rx(ifb_netns)
    assert packets1 - packets0 == count
    assert bytes1 - bytes0 == total + _HEADERS * count


# The child's transfer: ``nbytes`` of a known stream over TCP loopback through a Sender made
# with ``policy``, read by a thread that checks every byte; prints the outcome as JSON.
_CHILD_TRANSFER = """
import json, os, socket, threading
from zcnet.errors import ZerocopyUnavailable
from zcnet.errors import PoolError, SocketClosedError
from zcnet.pool import BufferPool
from zcnet.sender import Sender, SendPolicy

ls = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(ls.getsockname())
s, _ = ls.accept()
data = bytes(range(251)) * ({nbytes} // 251 + 1)
data = data[:{nbytes}]
got = bytearray()

def read():
    while True:
        b = s.recv(1 << 20)
        if not b:
            return
        got.extend(b)

reader = threading.Thread(target=read)
reader.start()
probe = socket.create_connection(ls.getsockname())
try:
    Sender(probe, SendPolicy(engine="io_uring")).close()
    explicit = None
except ZerocopyUnavailable as e:
    explicit = str(e)
    probe.close()
out = {{"explicit": explicit}}
with BufferPool(hugepages=False, slab_bytes=4 << 20) as pool:
    with Sender(c, {policy}) as sender:
        pos = 0
        for n in {sizes}:
            n = min(n, len(data) - pos)
            if {leases}:
                lease = pool.acquire(n)
                lease.view[:] = data[pos:pos + n]
                sender.send(lease)
            else:
                sender.send(data[pos:pos + n])
            pos += n
        sender.flush(30)
        st = sender.stats
        sender.shutdown()
reader.join(30)
{extra}
out.update(intact=bytes(got) == data, received=len(got), engine=st.engine,
           engine_reason=st.engine_reason, registration_reason=st.registration_reason,
           sends_registered=st.sends_registered, sends_zerocopy=st.sends_zerocopy,
           enobufs=st.enobufs, mode=st.mode)
print(json.dumps(out))
"""
# Appended to the transfer: a UDP Sender with IP_RECVERR, where "auto" wants io_uring.
_CHILD_AUTO_WANTS_URING = """
from zcnet.lowlevel.constants import IP_RECVERR, SOL_IP
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.bind(("127.0.0.1", 0))
r.settimeout(10)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(r.getsockname())
u.setsockopt(SOL_IP, IP_RECVERR, 1)
with Sender(u, SendPolicy(engine="auto", force_zerocopy=True)) as us:
    us.send(data[:60000])
    us.flush(10)
    ust = us.stats
out.update(udp_engine=ust.engine, udp_reason=ust.engine_reason, udp_mode=ust.mode,
           udp_intact=r.recv(65536) == data[:60000])
r.close()
"""
_CHILD_MODULES = ["encodings.idna", "json", "socket", "threading", "zcnet.errors", "zcnet.pool",
                  "zcnet.sender"]


@requires_uring
@requires_refusal
def test_io_uring_refused_auto_falls_back_explicit_raises() -> None:
    """io_uring refused by a seccomp filter, in a child: an explicit ``engine="io_uring"``
    raises ZerocopyUnavailable saying why; ``"auto"`` sends with MSG_ZEROCOPY and says why."""
    code = _CHILD_TRANSFER.format(nbytes=8 * MiB, sizes=[MiB] * 8, leases=False,
                                  policy='SendPolicy(engine="auto", force_zerocopy=True)',
                                  extra=_CHILD_AUTO_WANTS_URING)
    out = run_child_json(code, refuse_io_uring=True)
    assert out["explicit"] is not None and "EPERM" in out["explicit"]
    # TCP: auto keeps MSG_ZEROCOPY by measurement, without trying io_uring
    assert out["engine"] == "msg_zerocopy" and out["engine_reason"] == AUTO_KEEPS_MSG_ZEROCOPY
    assert out["intact"] and out["received"] == 8 * MiB
    assert out["sends_zerocopy"] > 0
    # UDP with IP_RECVERR: auto wants io_uring, which is refused: MSG_ZEROCOPY, and why
    assert out["udp_engine"] == "msg_zerocopy" and out["udp_reason"] == out["explicit"]
    assert out["udp_intact"] and out["udp_mode"] == "copy"


@requires_uring
def test_auto_keeps_msg_zerocopy_unless_it_cannot_send_uncopied() -> None:
    """"auto" sends with MSG_ZEROCOPY (measured as cheap or cheaper) and says why; on a UDP
    socket with IP_RECVERR, where MSG_ZEROCOPY would copy, it takes io_uring: every datagram
    arrives whole."""
    client, server = tcp_pair()
    with client, server, Sender(client, SendPolicy(engine="auto")) as sender:
        assert sender.stats.engine == "msg_zerocopy"
        assert sender.stats.engine_reason == AUTO_KEEPS_MSG_ZEROCOPY
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        r.bind(("127.0.0.1", 0))
        r.settimeout(10)
        u.connect(r.getsockname())
        u.setsockopt(SOL_IP, IP_RECVERR, 1)
        assert msg_zerocopy_obstacle(u) is not None
        with Sender(u, SendPolicy(engine="auto", force_zerocopy=True)) as sender:
            sizes = [20_000, 60_000, 33_333]
            for k, n in enumerate(sizes):
                sender.send(pattern_bytes(k * 65536, n))
            sender.flush(10)
            st = sender.stats
        for k, n in enumerate(sizes):
            assert r.recv(65536) == pattern_bytes(k * 65536, n)
    assert st.engine == "io_uring" and st.engine_reason is None and st.sends_zerocopy == 3


@requires_uring
@requires_netns
def test_auto_takes_io_uring_where_optmem_holds_no_notification(netns: Netns) -> None:
    """With net.core.optmem_max 0 every MSG_ZEROCOPY call would fail with ENOBUFS; io_uring's
    notifications are not charged there, so "auto" takes io_uring: zero-copy, every byte in
    order, no ENOBUFS."""
    netns.sysctl("net.core.optmem_max", 0)
    with netns.entered():
        client, server = tcp_pair()
        rx = VerifyingReceiver(server)
        rx.start()
        with Sender(client, SendPolicy(engine="auto", force_zerocopy=True)) as sender:
            for k in range(6):
                sender.send(pattern_bytes(k * MiB, MiB))
            sender.flush(30)
            st = sender.stats
            sender.shutdown()
        rx.finish(6 * MiB)
    assert st.engine == "io_uring" and st.enobufs == 0 and st.sends_zerocopy > 0


@requires_uring
@requires_nobody
def test_registration_refused_under_a_low_memlock_limit() -> None:
    """Nobody with a 1 MiB RLIMIT_MEMLOCK cannot register a 4 MiB slab: the leases go out
    unregistered (plain SEND_ZC), every byte intact, and stats say why."""
    code = _CHILD_TRANSFER.format(nbytes=6 * MiB, sizes=[256 * 1024] * 24, leases=True,
                                  policy='SendPolicy(engine="io_uring", force_zerocopy=True)',
                                  extra="")
    out = run_child_json(code, as_nobody=True, memlock_bytes=MiB, preimport=_CHILD_MODULES)
    assert out["explicit"] is None and out["engine"] == "io_uring"
    assert out["intact"] and out["received"] == 6 * MiB
    assert out["registration_reason"] is not None
    assert "RLIMIT_MEMLOCK" in out["registration_reason"]
    assert out["sends_registered"] == 0 and out["sends_zerocopy"] > 0


@requires_uring
@requires_nobody
def test_locked_memory_back_pressure_loses_nothing() -> None:
    """Without CAP_IPC_LOCK, SEND_ZC charges the pages it sends to RLIMIT_MEMLOCK until their
    notification: a 1 MiB send under a 768 KiB limit is refused (ENOMEM, handled as the
    ENOBUFS back-pressure of MSG_ZEROCOPY: reap, retry, then copy that piece) while the smaller
    ones go zero-copy; every byte arrives, in order."""
    sizes = [256 * 1024, MiB, 128 * 1024] * 8
    code = _CHILD_TRANSFER.format(nbytes=sum(sizes), sizes=sizes, leases=False,
                                  policy='SendPolicy(engine="io_uring", force_zerocopy=True)',
                                  extra="")
    out = run_child_json(code, as_nobody=True, memlock_bytes=768 * 1024,
                         preimport=_CHILD_MODULES)
    assert out["engine"] == "io_uring"
    assert out["intact"] and out["received"] == sum(sizes)
    assert out["enobufs"] > 0 and out["sends_zerocopy"] > 0


@requires_uring
def test_udp_datagrams_on_io_uring_keep_their_boundaries() -> None:
    """Zero-copy datagrams on io_uring, one send each: every datagram arrives whole, in order."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        payloads = [pattern_bytes(k * 977, 12_000 + 3_001 * (k % 17)) for k in range(40)]
        with Sender(u, URING) as sender:
            for p in payloads:
                sender.send(p)
                assert r.recv(70_000) == p
            sender.flush(10)
            st = sender.stats
    assert st.engine == "io_uring" and st.sends_zerocopy == len(payloads) == st.completions


@requires_uring
@requires_netns
def test_interrupted_batch_records_exactly_what_went() -> None:
    """SIGINT while a send_batch waits for room (a slow qdisc in front of the ifb sink fills
    the send buffer): the ring cancels the rest of the linked submission, the Sender counts
    exactly the datagrams that went, their completions arrive, the sink sees exactly those, and
    the Sender goes on sending."""
    with Netns(ifb_sink=True) as ns:
        subprocess.run(ns.exec_argv(["tc", "qdisc", "replace", "dev", "ifb0", "root", "tbf",
                                     "rate", "20mbit", "burst", "64k", "limit", "8m"]),
                       check=True, capture_output=True)
        u = _gso_socket(ns)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        packets0, bytes0 = _ifb_rx(ns)
        bufs = [bytes([k]) * DATAGRAM for k in range(60)]  # about 1.6 s at 20 Mbit/s
        with Sender(u, URING) as sender:
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    sender.send_batch(bufs)
            finally:
                timer.cancel()
            went = sender.stats.sends_zerocopy
            assert 0 < went < len(bufs) and sender.failure is None
            assert sender.stats.bytes_pending + sender.stats.bytes_zerocopy == went * DATAGRAM
            more = sender.send_batch(bufs[:4])  # still usable
            sender.flush(30)
            st = sender.stats
        assert all(t.done and t.error is None for t in more)
        assert st.sends_zerocopy == st.completions == went + 4
        total = (went + 4) * DATAGRAM
        deadline = time.monotonic() + 10
        while _ifb_rx(ns)[1] - bytes0 < total and time.monotonic() < deadline:
            time.sleep(0.05)  # the qdisc drains at its rate
        packets, nbytes = (a - b for a, b in zip(_ifb_rx(ns), (packets0, bytes0), strict=True))
    # tbf cuts each GSO datagram into its 44 segments; each one carries 42 bytes of headers
    assert packets == (went + 4) * 44
    assert nbytes == total + packets * 42


@requires_uring
def test_views_of_registered_memory_go_out_registered() -> None:
    """Once a lease's slab is registered, any buffer inside it (another lease, a view of one)
    goes out as a fixed-buffer send, from send() and send_batch() alike; every datagram
    arrives whole."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r, BufferPool(hugepages=False) as pool:
        r.bind(("127.0.0.1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        first = pool.acquire(40_000)
        first.view[:] = pattern_bytes(0, 40_000)
        second = pool.acquire(60_000)  # the same slab
        second.view[:] = pattern_bytes(40_000, 60_000)
        with Sender(u, URING) as sender:
            sender.send_batch([first])
            assert r.recv(70_000) == pattern_bytes(0, 40_000)
            assert sender.stats.sends_registered == 1
            view = second.view
            sender.send(view[:30_000])
            sender.send_batch([view[30_000:], bytes(pattern_bytes(0, 20_000))])
            got = [r.recv(70_000) for _ in range(3)]
            sender.flush(10)
            st = sender.stats
            del view
            second.release()
        assert got == [pattern_bytes(40_000, 30_000), pattern_bytes(70_000, 30_000),
                       pattern_bytes(0, 20_000)]
        assert st.sends_registered == 3 and st.sends_zerocopy == 4 == st.completions
