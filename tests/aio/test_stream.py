"""ZcStream behaviour on asyncio's default loop and on uvloop: every byte verified."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from zcnet._core.pattern import StreamPattern
from zcnet._core.txpolicy import SenderStats
from zcnet.aio import ZcStream, open_connection, start_server
from zcnet.errors import (
    ConnectionResetByPeer,
    SendError,
    SocketClosedError,
)
from zcnet.netns import Netns
from zcnet.pool import BufferPool
from zcnet.receiver import RecvPolicy
from zcnet.sender import SendPolicy

from ..conftest import requires_zerocopy
from ..tx_helpers import msg_zerocopy_only
from .conftest import Runner
from .helpers import read_verified, send_pattern, stream_pair

P = StreamPattern(4 * 1024 * 1024)
FORCED = SendPolicy(force_zerocopy=True)
LINGER0 = struct.pack("ii", 1, 0)


async def _fill_until_blocked(stream: ZcStream) -> int:
    """Queue pattern bytes with raw copying sends until the socket stays full; returns them."""
    sock: socket.socket = stream.get_extra_info("socket")
    sent = 0
    while True:
        before = sent
        while True:
            try:
                sent += sock.send(P.block(sent, 65536))
            except BlockingIOError:
                break
        if sent == before:
            return sent
        await asyncio.sleep(0.05)  # let ACKs and buffer autotuning settle, then top up


@requires_zerocopy
@pytest.mark.parametrize("forced", [True, False], ids=["forced-zc", "policy"])
def test_bulk_transfer_every_byte(run: Runner, forced: bool) -> None:
    nbytes = 24 * 1024 * 1024 + 12345
    sizes = (1 << 20, 3000, 200_001, 4 << 20, 65536)

    async def main() -> None:
        client, server = await stream_pair(mappable=True,
                                           send_policy=FORCED if forced else SendPolicy())
        async with client, server:
            reader = asyncio.create_task(read_verified(server, P))
            tickets = await send_pattern(client, P, 0, nbytes, sizes)
            await client.drain()
            assert all(t.done for t in tickets)
            for t in tickets:
                await t
            client.close()
            await client.wait_closed()
            assert await reader == nbytes
            tx, rx = client.send_stats, server.recv_stats
            assert tx.bytes_zerocopy + tx.bytes_copied + tx.bytes_plain == nbytes
            assert tx.bytes_pending == 0
            assert rx.bytes_mapped + rx.bytes_copied == nbytes
            if forced:
                assert tx.mode == "zerocopy" and tx.sends_zerocopy > 0
                # a MSG_ZEROCOPY sender and MSS 4096: loopback pages are mappable
                # (docs/ARCHITECTURE.md, 'Receive: loopback')
                assert rx.bytes_mapped > nbytes // 2, rx
            else:
                # loopback copies zero-copy sends: the shared policy falls back to copying
                assert tx.mode == "copy" and tx.fallback_reason
            assert any(t.zerocopy for t in tickets)
            assert not any(t.zerocopy for t in tickets if t.nbytes < 10 * 1024)

    run(main())


def test_recv_into_readexactly_and_pushback(run: Runner) -> None:
    async def main() -> None:
        client, server = await stream_pair()
        async with client, server:
            await send_pattern(client, P, 0, 300_000, (7, 100_000, 1))
            buf = bytearray(1000)
            n = await server.recv_into(buf)
            assert n > 0 and P.matches(0, buf[:n])
            off = n
            data = await server.readexactly(5000)
            assert P.matches(off, data)
            off += 5000
            big = bytearray(200_000)
            await server.readexactly_into(big)
            assert P.matches(off, big)
            off += len(big)
            client.close()
            rest = await read_verified(server, P, off)
            assert off + rest == 300_000
            with pytest.raises(asyncio.IncompleteReadError):
                await server.readexactly(1)
            assert await server.recv_into(bytearray(10)) == 0

    run(main())


def test_many_concurrent_streams(run: Runner) -> None:
    clients, per_client = 24, 768 * 1024

    async def main() -> None:
        results: dict[int, int] = {}

        async def handler(stream: ZcStream) -> None:
            hdr = await stream.readexactly(8)
            (idx,) = struct.unpack("!Q", hdr)
            got = await read_verified(stream, P, offset=idx * 4099, limit=per_client,
                                      size=64 * 1024)
            results[idx] = got
            await (await stream.send(struct.pack("!Q", got)))

        async def one(idx: int) -> None:
            stream = await open_connection("127.0.0.1", server.port, send_policy=FORCED)
            async with stream:
                await stream.send(struct.pack("!Q", idx))
                await send_pattern(stream, P, idx * 4099, per_client, (100_000, 65536, 1234))
                (echo,) = struct.unpack("!Q", await stream.readexactly(8))
                assert echo == per_client
                await stream.drain()

        server = await start_server(handler, "127.0.0.1", 0, mappable=True)
        async with server:
            await asyncio.gather(*(one(i) for i in range(clients)))
        assert results == {i: per_client for i in range(clients)}

    run(main())


def test_cancel_mid_recv_loses_nothing(run: Runner) -> None:
    async def main() -> None:
        client, server = await stream_pair()
        async with client, server:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await server.recv(100)
            await client.send(P.block(0, 1000))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await server.readexactly(3000)  # gets 1000, then waits
            await client.send(P.block(1000, 2000))
            data = await server.readexactly(3000)
            assert P.matches(0, data)
            buf = bytearray(5000)
            await client.send(P.block(3000, 2500))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await server.readexactly_into(buf)
            await client.send(P.block(5500, 2500))
            await server.readexactly_into(buf)
            assert P.matches(3000, buf)
            await client.send(P.block(8000, 10_000))
            chunk = await server.recv(10_000)
            with chunk:
                assert P.matches(8000, chunk.view)

    run(main())


def test_cancel_send_before_any_byte_keeps_stream_usable(run: Runner) -> None:
    async def main() -> None:
        client, server = await stream_pair(sndbuf=64 * 1024, rcvbuf=64 * 1024,
                                           send_policy=FORCED)
        async with client, server:
            filled = await _fill_until_blocked(client)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.send(b"\xff" * 100_000)  # nothing fits: nothing sent
            assert client.send_stats.sends_zerocopy == 0
            reader = asyncio.create_task(read_verified(server, P))
            tickets = await send_pattern(client, P, filled, 2 * 1024 * 1024)
            await client.drain()
            assert all(t.done for t in tickets)
            client.close()
            assert await reader == filled + 2 * 1024 * 1024

    run(main())


@requires_zerocopy
def test_cancel_mid_send_breaks_stream_but_returns_lease(run: Runner) -> None:
    size = 4 * 1024 * 1024

    async def main() -> None:
        pool = BufferPool(max_size=size, hugepages=False)
        client, server = await stream_pair(sndbuf=256 * 1024, rcvbuf=256 * 1024,
                                           send_policy=FORCED)
        lease = pool.acquire(size)
        lease.view[:] = P.block(0, size)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.send(lease)  # the peer is not reading: only part fits
        assert lease.in_flight  # the kernel may hold its pages: not back in the pool yet
        sent = client.send_stats.bytes_pending + client.send_stats.bytes_copied
        assert 0 < sent < size
        with pytest.raises(SendError, match="cancelled after"):
            await client.send(b"x" * 20_000)
        async with client, server:
            client.close()  # drains while the reader below frees the window
            got = await read_verified(server, P)
            await client.wait_closed()
        assert got == client.send_stats.bytes_copied + client.send_stats.bytes_zerocopy
        assert 0 < got < size  # only a prefix, verified, and nothing after it
        assert lease.released and pool.stats().outstanding == 0
        pool.close()

    run(main())


def test_peer_reset_during_recv(run: Runner) -> None:
    async def main() -> None:
        client, server = await stream_pair()
        raw: socket.socket = client.get_extra_info("socket")
        async with server:
            task = asyncio.create_task(server.recv(1000))
            await asyncio.sleep(0.02)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
            client.abort()
            with pytest.raises(ConnectionResetByPeer):
                await task

    run(main())


@requires_zerocopy
def test_peer_reset_during_send(run: Runner) -> None:
    async def main() -> None:
        client, server = await stream_pair(sndbuf=128 * 1024, rcvbuf=128 * 1024,
                                           send_policy=FORCED)
        first = await client.send(P.block(0, 32 * 1024))
        task = asyncio.create_task(send_pattern(client, P, 32 * 1024, 16 * 1024 * 1024))
        await asyncio.sleep(0.1)
        assert not task.done()
        raw: socket.socket = server.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        server.abort()
        with pytest.raises(ConnectionResetByPeer):
            await task
        with pytest.raises(ConnectionResetByPeer):
            await client.send(b"y" * 20_000)
        await first  # sent and acknowledged before the reset
        await client.aclose()

    run(main())


@requires_zerocopy
def test_close_drains_pending_completions(run: Runner) -> None:
    async def main() -> None:
        pool = BufferPool(max_size=1 << 20, hugepages=False)
        client, server = await stream_pair(send_policy=FORCED)
        reader = asyncio.create_task(read_verified(server, P))
        tickets = []
        for i in range(16):
            lease = pool.acquire(1 << 20)
            lease.view[:] = P.block(i << 20, 1 << 20)
            if i % 2:
                tickets.append(await client.send(lease))  # the stream takes the lease
            else:  # the blocking Sender's idiom works too
                ticket = await client.send(lease.view)
                lease.release_when_done(ticket)
                tickets.append(ticket)
        client.close()  # at once: most completions are still to come
        await client.wait_closed()
        assert all(t.done and t.error is None for t in tickets)
        assert pool.stats().outstanding == 0 and pool.stats().in_flight == 0
        assert await reader == 16 << 20
        await server.aclose()
        with pytest.raises(SocketClosedError):
            await client.send(b"z")
        pool.close()

    run(main())


@requires_zerocopy
def test_close_deadline_keeps_unreleased_buffers(run: Runner) -> None:
    async def main() -> None:
        policy = SendPolicy(force_zerocopy=True, drain_timeout=0.2)
        client, server = await stream_pair(send_policy=policy, sndbuf=1 << 20,
                                           rcvbuf=64 * 1024)
        buf = bytearray(P.block(0, 256 * 1024))
        ticket = await client.send(buf)  # fits the send buffer, cannot all be acknowledged
        assert not ticket.done
        await client.aclose()  # returns after the 0.2 s deadline although the peer never reads
        assert not ticket.done
        assert isinstance(ticket.error, SocketClosedError)
        with pytest.raises(SocketClosedError):
            await ticket
        with pytest.raises(BufferError):  # the buffer stays exported: never reused under the kernel
            buf.extend(b"x")
        got = await read_verified(server, P)
        assert got <= len(buf)
        await server.aclose()

    run(main())


@requires_zerocopy
@msg_zerocopy_only("completions pending on the socket's error queue")
def test_no_spin_while_completions_pend(run: Runner) -> None:
    """Completions sit unread on the error queue while tasks await: the process stays idle."""

    async def main() -> tuple[float, float, int]:
        client, server = await stream_pair(send_policy=FORCED)
        async with client, server:
            client.watcher.set_error_handler(lambda: False)  # fault injection: a stalled reaper
            ticket = await client.send(P.block(0, 256 * 1024))
            got = await read_verified(server, P, limit=256 * 1024)
            assert got == 256 * 1024
            await asyncio.sleep(0.05)  # the completion reaches the error queue, unread
            wake0 = client.watcher.wakeups
            cpu0, t0 = time.process_time(), time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await asyncio.gather(ticket.wait(), server.recv(10), client.recv(10))
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            wakeups = client.watcher.wakeups - wake0
            assert not ticket.done
            client.watcher.set_error_handler(client._on_epollerr)
            await client.drain()  # reads the queue now
            assert ticket.done
        return cpu, wall, wakeups

    cpu, wall, wakeups = run(main())
    assert wakeups <= 4, f"the loop woke {wakeups} times for the stream: spinning"
    assert cpu < 0.25 * wall, f"{cpu:.3f} s CPU in {wall:.3f} s of idle waiting: spinning"


def test_recv_policy_passthrough_and_stats(run: Runner) -> None:
    async def main() -> None:
        client, server = await stream_pair(recv_policy=RecvPolicy(window_bytes=64 * 1024))
        async with client, server:
            await send_pattern(client, P, 0, 200_000, (50_000,))
            client.close()
            assert await read_verified(server, P) == 200_000
            assert server.recv_stats.bytes_mapped + server.recv_stats.bytes_copied == 200_000
            assert server.get_extra_info("peername") is not None

    run(main())


@requires_zerocopy
@msg_zerocopy_only("the notification budget (optmem_max)")
@pytest.mark.parametrize("forced", [True, False], ids=["forced-zc", "policy"])
def test_enobufs_is_back_pressure_not_failure(run: Runner, netns: Netns, forced: bool) -> None:
    """No notification budget (optmem_max 0, in a namespace of our own): every zero-copy send
    call gets ENOBUFS; the shared policy copies instead, and every byte still arrives."""
    netns.sysctl("net.core.optmem_max", 0)
    nbytes = 6 * 1024 * 1024 + 3

    async def main() -> tuple[SenderStats, int]:
        client, server = await stream_pair(send_policy=FORCED if forced else SendPolicy())
        async with client, server:
            reader = asyncio.create_task(read_verified(server, P))
            tickets = await send_pattern(client, P, 0, nbytes, (100_000, 1 << 20, 50_000))
            await client.drain()
            assert all(t.done for t in tickets)
            client.close()
            return client.send_stats, await reader

    with netns.entered():
        stats, got = run(main())
    assert got == nbytes
    assert stats.enobufs > 0
    assert stats.bytes_plain == nbytes and stats.bytes_pending == 0
    if forced:
        assert stats.mode == "zerocopy"
    else:
        assert stats.mode == "copy" and "ENOBUFS" in (stats.fallback_reason or "")


@requires_zerocopy
def test_abort_during_close_and_blocked_send(run: Runner) -> None:
    async def main() -> None:
        client, server = await stream_pair(sndbuf=64 * 1024, rcvbuf=64 * 1024,
                                           send_policy=FORCED)
        task = asyncio.create_task(send_pattern(client, P, 0, 8 * 1024 * 1024))
        await asyncio.sleep(0.05)
        client.close()  # waits for the blocked send (the peer does not read)
        waiter = asyncio.create_task(client.wait_closed())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        client.abort()
        await waiter  # finishes, without a CancelledError
        with pytest.raises(SocketClosedError):
            await task
        assert client.pending == 0 or all(t.error for t in client._tracker.tokens())
        got = await read_verified(server, P)
        assert got > 0  # a verified prefix of what was queued
        await server.aclose()
        await client.wait_closed()

    run(main())


def test_cancel_mid_copying_send_breaks_stream(run: Runner) -> None:
    async def main() -> None:
        copy_only = SendPolicy(zerocopy_threshold=1 << 40)
        client, server = await stream_pair(sndbuf=64 * 1024, rcvbuf=64 * 1024,
                                           send_policy=copy_only)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.send(P.block(0, 4 * 1024 * 1024))
        assert 0 < client.send_stats.bytes_plain < 4 * 1024 * 1024
        with pytest.raises(SendError, match="cancelled after"):
            await client.send(b"x")
        client.close()
        got = await read_verified(server, P)
        await client.wait_closed()
        assert got == client.send_stats.bytes_plain
        await server.aclose()

    run(main())


def test_ipv6_server_and_refused_connection(run: Runner) -> None:
    async def main() -> None:
        async def echo(stream: ZcStream) -> None:
            data = await stream.readexactly(70_000)
            await (await stream.send(data))

        try:
            server = await start_server(echo, "::1", 0)
        except OSError as e:
            pytest.skip(f"no IPv6 loopback: {e}")
        async with server:
            stream = await open_connection("::1", server.port)
            async with stream:
                await stream.send(P.block(0, 70_000))
                assert P.matches(0, await stream.readexactly(70_000))
            port = server.port
        with pytest.raises(OSError):
            await open_connection("::1", port)  # the listener is closed now

    run(main())


def test_concurrent_receives_keep_their_order(run: Runner) -> None:
    # Readers waiting for the stream are served in the order they called; a receive started
    # while they wait queues behind them (it does not take the bytes that are ready first).
    async def main() -> None:
        client, server = await stream_pair()
        async with client, server:
            first = [asyncio.create_task(server.readexactly(1000)) for _ in range(3)]
            await asyncio.sleep(0.02)  # all three are waiting now
            await send_pattern(client, P, 0, 5000)
            await asyncio.sleep(0.02)  # the bytes are queued on the server socket
            late_into = bytearray(1000)
            late = asyncio.create_task(server.recv_into(late_into))
            last = asyncio.create_task(server.readexactly(1000))
            got = await asyncio.gather(*first)
            assert [P.matches(i * 1000, g) for i, g in enumerate(got)] == [True] * 3
            n = await late
            assert 0 < n <= 1000 and P.matches(3000, late_into[:n])
            rest = await last
            assert P.matches(3000 + n, rest)

    run(main())
