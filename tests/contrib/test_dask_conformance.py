"""Conformance of ``zc://`` with Dask's own ``tcp://`` comm: every scenario runs on both schemes.

Each test is parametrized over the scheme and expects the same behaviour from both; the scenarios
are written from what Dask's comm and core tests check (distributed's test files are not used).
Tests that move data verify every byte; timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import weakref
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
import pytest
from distributed.comm import CommClosedError, connect, listen, parse_address, parse_host_port
from distributed.core import ConnectionPool, Server, pingpong, send_recv
from distributed.protocol import Serialized, to_serialize

from tests.conftest import ZEROCOPY_SKIP
from tests.contrib.conftest import run
from tests.contrib.test_dask_comm import PATTERN, _check, _msg, comm_pair, pattern_array

SCHEMES = ["tcp", "zc"]


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    """The comm scheme under test."""
    value: str = request.param
    return value


async def eventually(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (a hang guard, not a timed assertion)."""
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def close_all(*comms: Any) -> None:
    for c in comms:
        await c.close()


# -- 1. an idle comm notices that its peer closed -----------------------------------------------


@pytest.mark.parametrize("how", ["close", "abort"])
def test_idle_comm_notices_peer_close(scheme: str, how: str) -> None:
    """A comm nobody reads from turns ``closed()`` once the other end closes or aborts."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        await a.write({"op": "ping"})
        assert await b.read() == {"op": "ping"}
        if how == "close":
            await b.close()
        else:
            b.abort()
        await eventually(a.closed, "the idle comm never noticed its peer's close")
        with pytest.raises(CommClosedError):
            await a.read()
        with pytest.raises(CommClosedError):
            await a.write({"op": "ping"})

    run(main())


def test_idle_comm_keeps_unread_message_when_peer_closes(scheme: str) -> None:
    """A message that arrived before the peer's close is still read; then the comm is closed."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        await b.write({"last": "words"})
        await b.close()
        await asyncio.sleep(0.1)  # let the FIN arrive behind the message
        assert await a.read() == {"last": "words"}
        with pytest.raises(CommClosedError):
            await a.read()
        assert a.closed()

    run(main())


def test_connection_pool_replaces_comm_closed_by_server_while_idle(scheme: str) -> None:
    """The pool does not hand out a comm its server closed while idle: the next RPC succeeds."""

    async def main() -> None:
        async with Server({"ping": pingpong}) as server:
            await server.listen(f"{scheme}://127.0.0.1")
            pool = await ConnectionPool(limit=10)
            try:
                comm = await pool.connect(server.address)
                assert await send_recv(comm, op="ping") == b"pong"
                pool.reuse(server.address, comm)
                assert pool.open == 1 and pool.active == 0
                for server_comm in list(server._comms):
                    await server_comm.close()
                await eventually(comm.closed, "the pooled comm never noticed the server's close")
                assert await pool(server.address).ping() == b"pong"
                new = await pool.connect(server.address)
                assert new is not comm and not new.closed()
                pool.reuse(server.address, new)
            finally:
                await pool.close()

    run(main())


def test_send_recv_cancelled_closes_both_ends(scheme: str) -> None:
    """A cancelled request aborts the client comm; the server's comm, busy in a handler and not
    reading, notices the close."""

    async def main() -> None:
        async def stuck(comm: Any) -> None:
            await asyncio.Future()

        async with Server({"stuck": stuck}) as server:
            await server.listen(f"{scheme}://127.0.0.1")
            client = await connect(server.address, deserialize=False)
            await eventually(lambda: bool(server._comms), "the server never saw the connection")
            server_comm = next(iter(server._comms))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(send_recv(client, op="stuck"), 0.2)
            assert client.closed()
            await eventually(server_comm.closed, "the server's comm never noticed the abort")

    run(main())


# -- 3. write() returns once the message is queued ----------------------------------------------


def test_write_then_read_on_one_task(scheme: str) -> None:
    """A 12 MB message written and then read back by the same task does not wait for a reader
    (both ends write before either reads)."""
    nbytes = 12 << 20

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        try:
            x, y = pattern_array(0, nbytes), pattern_array(nbytes, nbytes)
            async with asyncio.timeout(30):  # hang guard
                await a.write({"x": to_serialize(x)})
                await b.write({"y": to_serialize(y)})
                got_b = await b.read()
                got_a = await a.read()
            assert PATTERN.matches(0, got_b["x"].data)
            assert PATTERN.matches(nbytes, got_a["y"].data)
        finally:
            await close_all(a, b)

    run(main())


def test_messages_keep_their_order(scheme: str) -> None:
    """Many writes of mixed sizes, queued back to back, arrive complete and in order."""
    sizes = [10, 70_000, 3, 1 << 20, 65_536, 0, 5 << 20, 12]

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        try:
            offset = 0
            for i, n in enumerate(sizes):
                await a.write({"i": i, "x": to_serialize(pattern_array(offset, n))})
                offset += n
            offset = 0
            for i, n in enumerate(sizes):
                msg = await b.read()
                assert msg["i"] == i and msg["x"].nbytes == n
                assert PATTERN.matches(offset, msg["x"].data)
                offset += n
        finally:
            await close_all(a, b)

    run(main())


def test_write_error_closes_comm(scheme: str) -> None:
    """Writing to a peer that went away ends in ``CommClosedError`` and a closed comm."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        b.abort()
        big = pattern_array(0, 4 << 20)
        with pytest.raises(CommClosedError):
            async with asyncio.timeout(20):
                while True:  # the failure shows on this write or a later one
                    await a.write({"x": to_serialize(big)})
                    await asyncio.sleep(0.01)
        assert a.closed()

    run(main())


# -- 2. frames are received into separate buffers -----------------------------------------------


def _owner(arr: np.ndarray) -> Any:
    """The object at the root of ``arr``'s ``base`` chain (the buffer holding its memory)."""
    obj: Any = arr
    while True:
        if isinstance(obj, np.ndarray) and obj.base is not None:
            obj = obj.base
        elif isinstance(obj, memoryview) and obj.obj is not None:
            obj = obj.obj
        else:
            return obj


def test_small_arrays_are_released_independently(scheme: str) -> None:
    """100 arrays of 48 KiB in one message land in 100 buffers: dropping one array frees its
    memory while the others stay (weak references to each buffer)."""
    n, size = 100, 48 * 1024

    async def main() -> list[np.ndarray]:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        try:
            arrays = [pattern_array(i * size, size) for i in range(n)]
            await a.write({"arrays": [to_serialize(x) for x in arrays]})
            msg = await b.read()
        finally:
            await close_all(a, b)
        return list(msg["arrays"])

    got = run(main())
    assert len(got) == n
    for i, arr in enumerate(got):
        assert arr.nbytes == size and PATTERN.matches(i * size, arr.data)
    del arr  # the loop variable would keep the last array alive
    owners = [_owner(x) for x in got]
    assert len({id(o) for o in owners}) == n, "arrays share a receive buffer"
    for o in owners:  # no owner holds much more than its array (no shared big buffer)
        assert memoryview(o).nbytes < 2 * size
    refs = [weakref.ref(o) for o in owners]
    del owners, o
    for i in range(n):
        got[i] = None  # type: ignore[call-overload]  # drop the array, keep the list's shape
        gc.collect()
        assert refs[i]() is None, f"array {i}'s buffer outlived it"
        assert all(r() is not None for r in refs[i + 1 :]), "dropping one array freed another"


# -- 4. the per-comm max_shard_size override ----------------------------------------------------


def test_max_shard_size_set_on_the_comm_splits_frames(scheme: str) -> None:
    """``comm.max_shard_size`` set on one comm decides how its writes shard large frames."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1", deserialize=False)
        try:
            x = pattern_array(0, 10_000)
            a.max_shard_size = 1000
            await a.write({"x": to_serialize(x)})
            got = (await b.read())["x"]
            assert isinstance(got, Serialized)
            assert len(got.frames) == 10
            assert b"".join(bytes(f) for f in got.frames) == x.tobytes()
        finally:
            await close_all(a, b)

    run(main())




# -- 4. addresses: the empty host listens on IPv4 and IPv6 --------------------------------------


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


requires_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")


async def round_trip(contact: str, key: int) -> None:
    """Connect to ``contact``, have the echo server bounce a message, check it, close."""
    comm = await connect(contact)
    try:
        assert comm.peer_address == contact
        assert comm.remote_info["address"] == contact
        assert comm.local_info["address"] == comm.local_address
        x = pattern_array(key, 1000 + key)
        await comm.write({"op": "echo", "key": key, "x": to_serialize(x)})
        got = await comm.read()
        assert got["key"] == key and PATTERN.matches(key, got["x"].data)
    finally:
        await comm.close()


async def echo(comm: Any) -> None:
    """A listener's handler: send every message back until the peer closes."""
    try:
        while True:
            msg = await comm.read()
            msg["x"] = to_serialize(msg["x"])
            await comm.write(msg)
    except CommClosedError:
        pass
    finally:
        await comm.close()


@pytest.mark.parametrize("form", ["127.0.0.1", "0.0.0.0", "", "[::1]", "fixed-port"])
def test_client_server(scheme: str, form: str) -> None:
    """Round trips (one, then 20 concurrent clients) on each address form; bound and contact
    addresses as tcp reports them."""
    if form == "[::1]" and not _has_ipv6():
        pytest.skip("no IPv6 loopback here")

    async def main() -> None:
        port = 0
        if form == "fixed-port":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        host = "127.0.0.1" if form == "fixed-port" else form
        async with listen(f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}",
                          echo) as listener:
            lhost, lport = parse_host_port(parse_address(listener.listen_address)[1])
            assert parse_address(listener.listen_address)[0] == scheme
            assert lhost == {"": "0.0.0.0", "[::1]": "::1"}.get(host, host)
            assert lport == port if port else 1023 < lport < 65536
            loop_host = "[::1]" if host == "[::1]" else "127.0.0.1"
            contact = f"{scheme}://{loop_host}:{lport}"
            if host in ("127.0.0.1", "[::1]"):
                assert listener.contact_address == listener.listen_address == contact
            await round_trip(contact, 1)
            await asyncio.gather(*(round_trip(contact, k) for k in range(2, 22)))

    run(main())


@requires_ipv6
@pytest.mark.parametrize("address", ["", ":0"])
def test_empty_host_listens_on_ipv4_and_ipv6(scheme: str, address: str) -> None:
    """``scheme://`` with no host accepts connections on 127.0.0.1 and on ::1 (one port)."""

    async def main() -> None:
        async with listen(f"{scheme}://{address}", echo) as listener:
            _, port = parse_host_port(parse_address(listener.listen_address)[1])
            await round_trip(f"{scheme}://127.0.0.1:{port}", 7)
            await round_trip(f"{scheme}://[::1]:{port}", 8)

    run(main())


def test_many_listeners(scheme: str) -> None:
    """30 listeners per address form, each on its own port; stopping frees them all."""

    async def main() -> None:
        for host in ("127.0.0.1", "0.0.0.0", ""):
            listeners = [await listen(f"{scheme}://{host}", echo) for _ in range(30)]
            assert len({lst.listen_address for lst in listeners}) == 30
            assert len({lst.contact_address for lst in listeners}) == 30
            for lst in listeners:
                lst.stop()

    run(main())


# -- connecting ---------------------------------------------------------------------------------


def _free_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    return s, s.getsockname()[1]


def test_connect_timeout(scheme: str) -> None:
    """Connecting to a port nobody listens on retries until the timeout, then raises."""
    s, port = _free_port()

    async def main() -> None:
        with pytest.raises(OSError, match="Timed out trying to connect"):
            await connect(f"{scheme}://127.0.0.1:{port}", timeout=0.5)

    with s:
        run(main())


def test_connect_retries_until_listener_starts(scheme: str) -> None:
    """``connect`` keeps retrying refused attempts: a listener started late is reached."""
    s, port = _free_port()
    s.close()

    async def main() -> None:
        async def late_listener() -> Any:
            await asyncio.sleep(0.5)
            return await listen(f"{scheme}://127.0.0.1:{port}", echo)

        task = asyncio.ensure_future(late_listener())
        comm = await connect(f"{scheme}://127.0.0.1:{port}", timeout=10)
        listener = await task
        try:
            await comm.write({"op": "echo", "x": to_serialize(pattern_array(0, 10))})
            assert PATTERN.matches(0, (await comm.read())["x"].data)
        finally:
            await comm.close()
            listener.stop()

    run(main())


def test_stopped_listener_refuses(scheme: str) -> None:
    async def main() -> None:
        listener = await listen(f"{scheme}://127.0.0.1", echo)
        address = listener.contact_address
        listener.stop()
        with pytest.raises(OSError):
            await connect(address, timeout=0.3)

    run(main())


# -- closing and aborting, seen from both ends --------------------------------------------------


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_seen_from_both_ends(scheme: str, how: str) -> None:
    """Reads in flight on both ends fail; afterwards both comms are closed and refuse I/O."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        a_read = asyncio.ensure_future(a.read())
        b_read = asyncio.ensure_future(b.read())
        await asyncio.sleep(0.05)
        if how == "close":
            await a.close()
        else:
            a.abort()
        assert a.closed()
        for pending in (a_read, b_read):
            with pytest.raises(CommClosedError):
                await pending
        await eventually(b.closed, "the peer's comm is not closed")
        for comm in (a, b):
            with pytest.raises(CommClosedError):
                await comm.read()
            with pytest.raises(CommClosedError):
                await comm.write({})
        await b.close()
        await b.close()  # idempotent
        b.abort()

    run(main())


def test_cancelled_read_aborts_comm(scheme: str) -> None:
    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.read(), 0.05)
        assert b.closed()
        await eventually(a.closed, "the peer's comm is not closed")

    run(main())


def test_truncated_message_closes_reader(scheme: str) -> None:
    """A writer aborted in the middle of a large message: the reader's read fails with
    ``CommClosedError`` and its comm is closed."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        await a.write({"x": to_serialize(pattern_array(0, 64 << 20))})
        await asyncio.sleep(0.05)  # part of it is on its way; the rest is queued at a
        a.abort()
        with pytest.raises(CommClosedError):
            await b.read()
        assert b.closed()

    run(main())


def test_connections_hold_documented_fds_and_leak_none(scheme: str) -> None:
    """Each open connection holds 1 fd per end on tcp:// and 2 on zc:// (the socket and the
    private epoll of its readiness watcher, docs/dask.md; 2 more, the ring and its eventfd, on
    the io_uring send engine); closing returns all of them."""

    def nfds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main() -> None:
        pairs = [await comm_pair(f"{scheme}://127.0.0.1") for _ in range(5)]
        before = nfds()
        extra = await comm_pair(f"{scheme}://127.0.0.1")
        per_end = 1
        if scheme == "zc":
            per_end = 2 if extra[0].transport.send_engine == "msg_zerocopy" else 4
        assert nfds() - before == 2 * per_end
        for a, b in [*pairs, extra]:
            await a.write({"op": "ping"})
            assert await b.read() == {"op": "ping"}
            await a.close()
            await b.close()
        assert nfds() <= before - 10 * per_end

    run(main())


# -- messages and frames ------------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [0, 1, 7, 1000, 65535, 65536, 65537, 1 << 20, 24 << 20])
def test_message_sizes_round_trip(scheme: str, nbytes: int) -> None:
    """One array of ``nbytes`` each way, plus plain msgpack data, byte-exact."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        try:
            x = pattern_array(nbytes, nbytes)
            await a.write({"op": "x", "n": nbytes, "x": to_serialize(x), "b": b"\x00\xff"})
            got = await b.read()
            assert got["op"] == "x" and got["n"] == nbytes and got["b"] == b"\x00\xff"
            assert got["x"].nbytes == nbytes and PATTERN.matches(nbytes, got["x"].data)
            await b.write({"x": to_serialize(got["x"])})
            back = (await a.read())["x"]
            assert back.nbytes == nbytes and PATTERN.matches(nbytes, back.data)
        finally:
            await close_all(a, b)

    run(main())


def test_frames_around_64_kib_in_one_message(scheme: str) -> None:
    """Frames of 65535, 65536 and 65537 bytes (either side of zc's 64 KiB threshold), as
    arrays and as bytes, mixed with tiny ones in one message."""
    sizes = [65535, 65536, 65537, 3, 65537, 65536, 65535]

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        try:
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            arrays = [pattern_array(o, n) for o, n in zip(offsets, sizes, strict=True)]
            blobs = [bytes(x) for x in arrays]
            await a.write({"arrays": [to_serialize(x) for x in arrays],
                           "blobs": [to_serialize(x) for x in blobs]})
            got = await b.read()
            for o, n, x, blob in zip(offsets, sizes, got["arrays"], got["blobs"], strict=True):
                assert x.nbytes == n and PATTERN.matches(o, x.data)
                assert len(blob) == n and PATTERN.matches(o, memoryview(blob))
        finally:
            await close_all(a, b)

    run(main())


def test_200_mb_message(scheme: str) -> None:
    """A 200 MB array (sharded by Dask at 64 MiB) in one message, byte-exact."""
    nbytes = 200 * 1000 * 1000 + 13

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        try:
            x = pattern_array(0, nbytes)
            await a.write({"x": to_serialize(x)})
            del x
            got = (await b.read())["x"]
            assert got.nbytes == nbytes and PATTERN.matches(0, got.data)
        finally:
            await close_all(a, b)

    run(main(), timeout=120)


@pytest.mark.parametrize("side", ["listener", "connector"])
@pytest.mark.parametrize("deserialize_flag", [True, False])
def test_deserialize_on_and_off(scheme: str, side: str, deserialize_flag: bool) -> None:
    """``deserialize=False`` on the reading side hands out ``Serialized`` parts; True objects."""

    async def main() -> None:
        listener_kw = {"deserialize": deserialize_flag} if side == "listener" else {}
        connector_kw = {"deserialize": deserialize_flag} if side == "connector" else {}
        q: asyncio.Queue[Any] = asyncio.Queue()

        async def handle(comm: Any) -> None:
            await q.put(comm)

        async with listen(f"{scheme}://127.0.0.1", handle, **listener_kw) as listener:
            client = await connect(listener.contact_address, **connector_kw)
        server = await q.get()
        writer, reader = (client, server) if side == "listener" else (server, client)
        try:
            await writer.write(_msg())
            _check(await reader.read(), deserialize_flag)
        finally:
            await close_all(client, server)

    run(main())


def test_garbage_on_the_wire_closes_reader(scheme: str) -> None:
    """A stream that is not a valid message: the read fails and the comm is closed."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        raw = a.stream.socket if scheme == "tcp" else a.transport.raw_socket
        raw.send(b"\xff" * 8)  # an impossible size or frame count
        with pytest.raises((CommClosedError, ValueError, MemoryError)):
            await b.read()
        assert b.closed()
        a.abort()

    run(main())


# -- ConnectionPool -----------------------------------------------------------------------------


async def slow_ping(comm: Any, delay: float = 0.0) -> str:
    await asyncio.sleep(delay)
    return "pong"


def test_connection_pool_limits_and_reuses(scheme: str) -> None:
    """The pool keeps at most ``limit`` connections, reuses idle ones, makes room by closing
    idle ones, and ``collect`` closes what is idle."""

    async def main() -> None:
        servers = [Server({"ping": slow_ping}) for _ in range(6)]
        for s in servers:
            await s.listen(f"{scheme}://127.0.0.1")
        pool = await ConnectionPool(limit=3)
        try:
            first = servers[:3]
            for _ in range(3):
                assert await asyncio.gather(*(pool(s.address).ping() for s in first)) == \
                    ["pong"] * 3
            assert pool.open == 3 and pool.active == 0
            assert sum(map(len, pool.available.values())) == 3
            assert await asyncio.gather(*(pool(s.address).ping() for s in servers[3:])) == \
                ["pong"] * 3
            assert pool.open <= 3 and pool.active == 0
            # concurrent calls to one server beyond the limit wait their turn
            s = servers[0]
            got = await asyncio.gather(*(pool(s.address).ping(delay=0.05) for _ in range(6)))
            assert got == ["pong"] * 6
            assert pool.open <= 3 and pool.active == 0
            pool.collect()
            await eventually(lambda: not any(pool.available.values()),
                             "collect() left idle comms")
        finally:
            await pool.close()
            for s in servers:
                await s.close()

    run(main())


def test_connection_pool_remove_and_close(scheme: str) -> None:
    """``remove(addr)`` closes that address's comms; ``close()`` closes the rest."""

    async def main() -> None:
        async with Server({"ping": slow_ping}) as s1, Server({"ping": slow_ping}) as s2:
            await s1.listen(f"{scheme}://127.0.0.1")
            await s2.listen(f"{scheme}://127.0.0.1")
            pool = await ConnectionPool(limit=10)
            c1 = await pool.connect(s1.address)
            c2 = await pool.connect(s2.address)
            pool.reuse(s1.address, c1)
            pool.reuse(s2.address, c2)
            pool.remove(s1.address)
            await eventually(c1.closed, "remove() did not close the comm")
            assert not c2.closed()
            assert await pool(s2.address).ping() == "pong"
            await pool.close()
            assert c2.closed()

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_idle_close_with_zerocopy_completions_pending(scheme: str, loop: str) -> None:
    """Forced zero-copy sends leave completions arriving while the comm is idle (EPOLLERR on
    zc://): they are not taken for the peer's close; the real close is noticed; on asyncio and
    uvloop alike."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        factory = uvloop.new_event_loop

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        for i in range(3):
            await a.write({"x": to_serialize(pattern_array(i, 6 << 20))})
            assert PATTERN.matches(i, (await b.read())["x"].data)
        if scheme == "zc" and ZEROCOPY_SKIP is None:
            assert a.transport_stats().zerocopy_calls > 0  # completions do pend
        await asyncio.sleep(0.2)  # completions arrive while a is idle
        assert not a.closed() and not b.closed()
        await a.write({"op": "still open"})
        assert await b.read() == {"op": "still open"}
        await b.close()
        await eventually(a.closed, "the idle comm never noticed its peer's close")

    with dask.config.set({"zcnet.dask.force-zerocopy": True}), \
            asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(main(), 60))


def _break_writes(comm: Any, scheme: str, exc_type: type[BaseException]) -> None:
    """Make the next lower-level write of ``comm`` raise ``exc_type`` (Tornado's write buffer
    on tcp://, the transport's send on zc://)."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc_type("injected")

    if scheme == "tcp":
        comm.stream._write_buffer.append = fail
    else:
        comm.transport.send = fail


def _caused_by(exc: BaseException, exc_type: type[BaseException]) -> bool:
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, exc_type):
            return True
        e = e.__cause__
    return False


@pytest.mark.parametrize("exc_type", [BufferError, TypeError, OSError])
def test_internal_write_error_closes_comm(scheme: str, exc_type: type[BaseException]) -> None:
    """A failure below ``write`` closes the comm: the error surfaces from this write (tcp) or the
    next call (zc://, whose send runs after ``write`` returned), and the comm is not reused."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        _break_writes(a, scheme, exc_type)
        with pytest.raises((exc_type, CommClosedError)) as err:
            await a.write({"x": to_serialize(pattern_array(0, 100_000))})
            await eventually(a.closed, "the comm stayed open after a failed send")
            await a.write({"op": "again"})
        assert _caused_by(err.value, exc_type) or isinstance(err.value, CommClosedError)
        assert a.closed()
        await eventually(b.closed, "the peer did not see the comm close")

    run(main())


@pytest.mark.parametrize("exc_type", [BufferError, TypeError])
def test_internal_read_error_closes_comm(scheme: str, exc_type: type[BaseException]) -> None:
    """A failure below ``read`` propagates and closes the comm."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise exc_type("injected")

        if scheme == "tcp":
            b.stream.read_bytes = fail
            b.stream.read_into = fail
        else:
            b.transport.recv_into = fail
        await a.write({"op": "ping"})
        with pytest.raises(exc_type):
            await b.read()
        assert b.closed()
        await eventually(a.closed, "the peer did not see the comm close")

    run(main())


def test_close_delivers_queued_messages(scheme: str) -> None:
    """A graceful close right after ``write`` still delivers the queued messages whole."""

    async def main() -> None:
        a, b = await comm_pair(f"{scheme}://127.0.0.1")
        async def read_two() -> tuple[Any, Any]:
            return await b.read(), await b.read()

        reads = asyncio.ensure_future(read_two())
        await a.write({"x": to_serialize(pattern_array(0, 24 << 20))})
        await a.write({"op": "last"})
        await a.close()
        first, last = await reads
        assert first["x"].nbytes == 24 << 20 and PATTERN.matches(0, first["x"].data)
        assert last == {"op": "last"}
        with pytest.raises(CommClosedError):
            await b.read()

    run(main())
