"""ZcStream on the io_uring send engine, on asyncio and uvloop: the ring's eventfd wakes the loop.

The rest of the aio suite runs on this engine too (scripts/test-every-python.sh sets
``ZCNET_SEND_ENGINE=io_uring`` for a second run); these tests choose the engine explicitly.
Every byte is verified. A refusal is made real in a child process only (a seccomp filter that
refuses the io_uring system calls with EPERM, tests/restricted_child.py).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tests.conftest import requires_netns
from tests.restricted_child import io_uring_refusal_unavailable_reason, run_child_json
from zcnet._core.pattern import StreamPattern
from zcnet.errors import ConnectionResetByPeer, SendError, SocketClosedError
from zcnet.lowlevel.uring import AUTO_KEEPS_MSG_ZEROCOPY, unavailable_reason
from zcnet.netns import Netns
from zcnet.pool import BufferPool
from zcnet.sender import SendPolicy

from .conftest import Runner
from .helpers import read_verified, send_pattern, stream_pair

MiB = 1 << 20
P = StreamPattern(4 * MiB)
URING_SKIP = unavailable_reason()
pytestmark = pytest.mark.skipif(URING_SKIP is not None,
                                reason=f"the io_uring engine is unavailable: {URING_SKIP}")
REFUSAL_SKIP = io_uring_refusal_unavailable_reason()
URING = SendPolicy(engine="io_uring", force_zerocopy=True)
LINGER0 = struct.pack("ii", 1, 0)


def test_every_byte_from_buffers_and_registered_leases(run: Runner) -> None:
    """Buffers and pool leases in pieces of many sizes: every byte arrives in order, the leases
    go out from registered memory and come back to the pool, the loop is woken by the ring."""
    sizes = (MiB, 3000, 200_001, 4 * MiB, 65536)

    async def main() -> None:
        pool = BufferPool(hugepages=False)
        client, server = await stream_pair(mappable=True, send_policy=URING)
        async with client, server:
            reader = asyncio.create_task(read_verified(server, P))
            tickets = await send_pattern(client, P, 0, 12 * MiB + 7, sizes)
            pos = 12 * MiB + 7
            leases = []
            for n in (MiB, 300_000, 4096, 2 * MiB + 5):
                lease = pool.acquire(n)
                lease.view[:] = P.block(pos, n)
                leases.append(lease)
                pos += n
            assert client.register_pool(pool) > 0
            registered = client.send_stats.registered_bytes
            for lease in leases[:-1]:
                tickets.append(await client.send(lease))
            by_leases = client.send_stats.sends_registered
            tickets.append(await client.send(leases[-1].view))  # a view: found registered
            assert client.send_stats.sends_registered > by_leases >= 2
            await client.drain()
            assert all(t.done and t.error is None for t in tickets)
            leases[-1].release()
            client.close()
            await client.wait_closed()
            assert await reader == pos
            tx = client.send_stats
        assert tx.engine == "io_uring" and tx.mode == "zerocopy"
        assert tx.bytes_zerocopy + tx.bytes_copied + tx.bytes_plain == pos  # small: plain
        assert tx.bytes_pending == 0 and tx.bytes_plain < 20_000
        assert tx.registered_bytes == registered > 0
        assert pool.stats().outstanding == 0 and pool.stats().in_flight == 0
        pool.close()

    run(main())


def test_a_send_waiting_for_room_does_not_block_the_loop(run: Runner) -> None:
    """The peer reads nothing for a while: the send waits in the kernel (MSG_WAITALL) while the
    loop runs other tasks; once the peer reads, the ring's eventfd wakes the send."""
    async def main() -> None:
        client, server = await stream_pair(sndbuf=64 * 1024, rcvbuf=64 * 1024, send_policy=URING)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with client, server:
            tick_task = asyncio.create_task(ticker())
            send = asyncio.create_task(send_pattern(client, P, 0, 8 * MiB, (4 * MiB,)))
            await asyncio.sleep(0.3)
            assert not send.done()  # waiting in the kernel for room...
            assert ticks >= 10  # ...while the loop goes on
            reader = asyncio.create_task(read_verified(server, P))
            tickets = await send
            await client.drain()
            client.close()
            await client.wait_closed()
            assert await reader == 8 * MiB
            assert all(t.done for t in tickets)
            assert client._ring is not None and client._ring.wakeups > 0
            tick_task.cancel()

    run(main())


def test_cancelled_send_records_exactly_what_the_kernel_took(run: Runner) -> None:
    """A send cancelled while the kernel holds it is cancelled in the ring: what it took is
    recorded, the stream refuses further sends, and the peer reads exactly that prefix."""
    size = 4 * MiB

    async def main() -> None:
        pool = BufferPool(max_size=size, hugepages=False)
        client, server = await stream_pair(sndbuf=256 * 1024, rcvbuf=256 * 1024,
                                           send_policy=URING)
        lease = pool.acquire(size)
        lease.view[:] = P.block(0, size)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.send(lease)  # the peer is not reading: only part fits
        assert lease.in_flight
        with pytest.raises(SendError, match="cancelled after"):
            await client.send(b"x" * 20_000)
        async with client, server:
            client.close()
            got = await read_verified(server, P)
            await client.wait_closed()
        tx = client.send_stats
        assert got == tx.bytes_copied + tx.bytes_zerocopy
        assert 0 < got < size
        assert lease.released and pool.stats().outstanding == 0
        pool.close()

    run(main())


def test_abort_fails_a_send_the_kernel_holds(run: Runner) -> None:
    """abort() while a send waits in the kernel: the send is cancelled in the ring and raises
    SocketClosedError; the peer reads a verified prefix."""
    async def main() -> None:
        client, server = await stream_pair(sndbuf=64 * 1024, rcvbuf=64 * 1024, send_policy=URING)
        send = asyncio.create_task(client.send(P.block(0, 4 * MiB)))
        await asyncio.sleep(0.1)
        assert not send.done()
        client.abort()
        with pytest.raises(SocketClosedError):
            await send
        got = await read_verified(server, P)
        assert 0 < got < 4 * MiB
        await server.aclose()

    run(main())


def test_peer_reset_mid_send(run: Runner) -> None:
    """The peer resets while a send waits in the kernel: ConnectionResetByPeer, then the stream
    refuses further sends."""
    async def main() -> None:
        client, server = await stream_pair(sndbuf=64 * 1024, rcvbuf=64 * 1024, send_policy=URING)
        async with client:
            send = asyncio.create_task(client.send(P.block(0, 4 * MiB)))
            await asyncio.sleep(0.1)
            raw: socket.socket = server.get_extra_info("socket")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            server.abort()
            with pytest.raises(ConnectionResetByPeer):
                await send
            with pytest.raises(ConnectionResetByPeer):
                await client.send(b"after")

    run(main())


_CHILD = """
import asyncio, json, socket
from zcnet.aio import ZcStream
from zcnet.errors import ZerocopyUnavailable
from zcnet.sender import SendPolicy

async def main():
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    try:
        ZcStream(a, send_policy=SendPolicy(engine="io_uring"))
        explicit = None
    except ZerocopyUnavailable as e:
        explicit = str(e)
    blocking = a.getblocking()
    client = ZcStream(a, send_policy=SendPolicy(engine="auto", force_zerocopy=True))
    server = ZcStream(b, send_policy=SendPolicy(engine="msg_zerocopy"))
    data = bytes(range(251)) * 8000
    reader = asyncio.ensure_future(server.readexactly(len(data)))
    await client.send(data)
    await client.drain()
    got = await reader
    st = client.send_stats
    client.close()
    server.close()
    await client.wait_closed()
    await server.wait_closed()
    return dict(explicit=explicit, blocking=blocking, intact=got == data, engine=st.engine,
                engine_reason=st.engine_reason)

print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.skipif(REFUSAL_SKIP is not None, reason=REFUSAL_SKIP or "")
def test_io_uring_refused_explicit_raises_auto_keeps_msg_zerocopy() -> None:
    """io_uring refused by a seccomp filter, in a child: an explicit ``engine="io_uring"``
    raises ZerocopyUnavailable saying why before the socket is touched; ``"auto"`` sends with
    MSG_ZEROCOPY (as it does wherever MSG_ZEROCOPY can send uncopied) and says why."""
    out = run_child_json(_CHILD, refuse_io_uring=True)
    assert out["explicit"] is not None and "EPERM" in out["explicit"]
    assert out["blocking"] is True
    assert out["intact"] and out["engine"] == "msg_zerocopy"
    assert out["engine_reason"] == AUTO_KEEPS_MSG_ZEROCOPY


@requires_netns
def test_auto_takes_io_uring_where_optmem_holds_no_notification(run: Runner,
                                                                netns: Netns) -> None:
    """net.core.optmem_max 0: MSG_ZEROCOPY would get ENOBUFS on every call, so "auto" takes
    io_uring, whose notifications are not charged there: zero-copy, every byte in order."""
    netns.sysctl("net.core.optmem_max", 0)

    async def main() -> None:
        auto = SendPolicy(engine="auto", force_zerocopy=True)
        client, server = await stream_pair(send_policy=auto)
        async with client, server:
            reader = asyncio.create_task(read_verified(server, P))
            await send_pattern(client, P, 0, 6 * MiB)
            await client.drain()
            client.close()
            await client.wait_closed()
            assert await reader == 6 * MiB
            tx = client.send_stats
        assert tx.engine == "io_uring" and tx.enobufs == 0 and tx.sends_zerocopy > 0

    with netns.entered():
        run(main())
