"""Conformance of ``zc://`` with Dask's own ``tcp://`` comm: every scenario runs on both schemes.

Each test is parametrized over the scheme and expects the same behaviour from both; the scenarios
are written from what Dask's comm and core tests check (distributed's test files are not used).
Tests that move data verify every byte; timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from distributed.comm import CommClosedError, connect, listen
from distributed.core import ConnectionPool, Server, pingpong, send_recv
from distributed.protocol import Serialized, to_serialize

from tests.contrib.conftest import run
from tests.contrib.test_dask_comm import PATTERN, pattern_array

SCHEMES = ["tcp", "zc"]


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    """The comm scheme under test."""
    value: str = request.param
    return value


async def comm_pair(address: str, **kwargs: Any) -> tuple[Any, Any]:
    """A connected (client, server) pair of comms on ``address`` (the listener is stopped)."""
    q: asyncio.Queue[Any] = asyncio.Queue()

    async def handle(comm: Any) -> None:
        await q.put(comm)

    async with listen(address, handle, **kwargs) as listener:
        client = await connect(listener.contact_address, **kwargs)
    server = await q.get()
    return client, server


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


