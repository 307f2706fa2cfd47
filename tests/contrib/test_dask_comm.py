"""Comm-level tests of the zc:// backend, after Dask's own distributed/comm/tests/test_comms.py.

Everything runs over 127.0.0.1 (or ::1) in this process. Every test that moves arrays checks
every byte against :class:`zcnet._core.pattern.StreamPattern`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
import warnings
from typing import Any

import dask
import numpy as np
import pytest
from distributed.comm import (
    CommClosedError,
    connect,
    get_address_host,
    get_local_address_for,
    listen,
    parse_address,
    parse_host_port,
    resolve_address,
)
from distributed.comm.registry import get_backend
from distributed.protocol import Serialized, deserialize, serialize, to_serialize

from tests.conftest import ZEROCOPY_SKIP, requires_zerocopy
from tests.contrib.conftest import run
from zcnet._core.pattern import StreamPattern
from zcnet.contrib.dask import ZCBackend, ZCComm, options_from_config

PATTERN = StreamPattern(max_block=8 * 1024 * 1024)


def pattern_array(offset: int, nbytes: int) -> np.ndarray:
    """A writeable uint8 array holding the pattern's bytes at ``offset``."""
    out = np.empty(nbytes, dtype="u1")
    for pos in range(0, nbytes, PATTERN.max_block):
        n = min(PATTERN.max_block, nbytes - pos)
        out[pos : pos + n] = np.frombuffer(PATTERN.block(offset + pos, n), dtype="u1")
    return out


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def was_reset(exc: BaseException) -> bool:
    """Whether ``exc``'s chain of causes holds the kernel's ``ECONNRESET`` (not an orderly EOF)."""
    e: BaseException | None = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ECONNRESET:
            return True
        e = e.__cause__
    return False


async def comm_pair(addr: str = "zc://127.0.0.1", **kwargs: Any) -> tuple[Any, Any]:
    q: asyncio.Queue[Any] = asyncio.Queue()

    async def handle(comm: Any) -> None:
        await q.put(comm)

    async with listen(addr, handle, **kwargs) as listener:
        client = await connect(listener.contact_address, **kwargs)
    server = await q.get()
    return client, server


# -- registry and addresses ---------------------------------------------------------------------


def test_backend_registered_by_entry_point(zc_backend: ZCBackend) -> None:
    from distributed.comm import registry

    del registry.backends["zc"]  # monkeypatch restores it; now load through the entry point
    assert isinstance(get_backend("zc"), ZCBackend)


def test_addresses() -> None:
    assert parse_host_port("127.0.0.1:456") == ("127.0.0.1", 456)
    assert get_address_host("zc://127.0.0.1:123") == "127.0.0.1"
    assert resolve_address("zc://localhost:456") == "zc://127.0.0.1:456"
    assert get_local_address_for("zc://127.0.0.1:80") == "zc://127.0.0.1"
    backend = get_backend("zc")
    assert backend.get_address_host_port("[::1]:7") == ("::1", 7)
    if has_ipv6():
        assert resolve_address("zc://[::1]:123") == "zc://[::1]:123"


# -- configuration ------------------------------------------------------------------------------


def test_removed_socket_transport_setting_means_aio() -> None:
    """``zcnet.dask.transport: socket`` (a removed transport) still connects, over zcnet.aio."""

    async def main() -> None:
        client, server = await comm_pair()
        try:
            arr = pattern_array(11, 300_000)
            _, got = await asyncio.gather(client.write({"a": to_serialize(arr)}), server.read())
            assert PATTERN.matches(11, got["a"].data)
            assert type(client.transport).__name__ == "AioTransport"
        finally:
            await client.close()
            await server.close()

    with dask.config.set({"zcnet.dask.transport": "socket"}):
        with pytest.warns(DeprecationWarning, match="'socket' was removed"):
            options_from_config()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run(main())


def test_unknown_transport_setting_is_refused() -> None:
    with dask.config.set({"zcnet.dask.transport": "uring"}), \
            pytest.raises(ValueError, match="must be 'aio'"):
        options_from_config()


# -- client/server ------------------------------------------------------------------------------


async def check_client_server(addr: str, expect_host: str, port: int | None = None) -> None:
    async def handle_comm(comm: Any) -> None:
        try:
            assert parse_address(comm.peer_address)[0] == "zc"
            msg = await comm.read()
            assert msg["op"] == "ping"
            msg["op"] = "pong"
            await comm.write(msg)
            msg = await comm.read()
            assert msg["op"] == "foobar"
        finally:
            await comm.close()

    listener = await listen(addr, handle_comm, xxx="ignored")
    try:
        host, bound_port = parse_host_port(parse_address(listener.listen_address)[1])
        assert host == expect_host
        assert bound_port == port if port else 1023 < bound_port < 65536
        loopback = "[::1]" if ":" in expect_host else "127.0.0.1"
        contact = f"zc://{loopback}:{bound_port}"
        if expect_host in ("127.0.0.1", "::1"):
            assert listener.contact_address == listener.listen_address == contact
        done: list[int] = []

        async def client(key: int, delay: float = 0) -> None:
            comm = await connect(contact, xxx="ignored")
            try:
                assert comm.peer_address == contact
                assert comm.local_address.startswith("zc://")
                assert comm.remote_info["address"] == contact
                assert comm.local_info["address"] == comm.local_address
                await comm.write({"op": "ping", "data": key})
                await comm.write({"op": "foobar"})
                if delay:
                    await asyncio.sleep(delay)
                assert await comm.read() == {"op": "pong", "data": key}
                done.append(key)
            finally:
                await comm.close()

        await client(1234)
        await asyncio.gather(*(client(i, 0.01) for i in range(20)))
        assert sorted(done) == [*range(20), 1234]
    finally:
        listener.stop()


def test_client_server_ipv4() -> None:
    async def main() -> None:
        await check_client_server("zc://127.0.0.1", "127.0.0.1")
        await check_client_server("zc://0.0.0.0", "0.0.0.0")
        await check_client_server("zc://", "0.0.0.0")
        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        await check_client_server(f"zc://127.0.0.1:{port}", "127.0.0.1", port)

    run(main())


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
def test_client_server_ipv6() -> None:
    run(check_client_server("zc://[::1]", "::1"))


def test_listener_refuses_encryption_and_tls_is_not_claimed() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="encryption required"):
            await listen("zc://127.0.0.1", lambda c: None, require_encryption=True)
        async with listen("zc://127.0.0.1", lambda c: None) as listener:
            with pytest.raises(RuntimeError, match="encryption required"):
                await connect(listener.contact_address, require_encryption=True)

    run(main())


# -- large frames, byte-exact -------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["default", "forced-zerocopy"])
def test_large_arrays_round_trip_byte_exact(force: bool) -> None:
    if force and ZEROCOPY_SKIP:
        pytest.skip(ZEROCOPY_SKIP)
    sizes = [3, 70_000, 24 * 1024 * 1024 + 5, 0, 1]

    async def main() -> tuple[Any, Any]:
        client, server = await comm_pair()
        try:
            arrays = [pattern_array(17 * i, n) for i, n in enumerate(sizes)]
            for _ in range(2):
                msg = {"op": "data", "arrays": [to_serialize(a) for a in arrays]}
                # write() returns once the kernel holds every byte: read concurrently
                _, got = await asyncio.gather(client.write(msg), server.read())
                for i, (n, arr) in enumerate(zip(sizes, got["arrays"], strict=True)):
                    assert isinstance(arr, np.ndarray) and arr.nbytes == n
                    assert arr.flags.writeable
                    assert PATTERN.matches(17 * i, arr.data)
                # and back, so both directions carry large frames
                echo = {"echo": [to_serialize(a) for a in got["arrays"]]}
                _, back = await asyncio.gather(server.write(echo), client.read())
                for i, arr in enumerate(back["echo"]):
                    assert PATTERN.matches(17 * i, arr.data)
            return client.transport_stats(), server.transport_stats()
        finally:
            await client.close()
            await server.close()

    with dask.config.set({"zcnet.dask.force-zerocopy": force}):
        cstats, _ = run(main())
    assert cstats.bytes_zerocopy > 0
    assert cstats.bytes_in_flight == 0
    if force:
        assert cstats.mode == "zerocopy"
        assert cstats.zerocopy_calls > 1 and cstats.completions >= 1
    else:
        assert cstats.mode == "copy"  # loopback copies: fell back after the first completion
        assert cstats.fallback_reason is not None



def test_sharded_array_is_rejoined_without_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards of one array arrive in one buffer, so Dask merges them without copying."""
    import importlib

    ser = importlib.import_module("distributed.protocol.serialize")  # the module, not the function

    copies: list[int] = []
    real = ser.host_array_from_buffers

    def counting(buffers: Any) -> memoryview:
        copies.append(len(buffers))
        return real(buffers)

    monkeypatch.setattr(ser, "host_array_from_buffers", counting)

    async def main() -> None:
        client, server = await comm_pair()
        try:
            arr = pattern_array(9, 5 * (1 << 20) + 123)  # 6 shards of at most 1 MiB
            msg = {"a": to_serialize(arr), "b": to_serialize(pattern_array(1, 3 << 20))}
            _, got = await asyncio.gather(client.write(msg), server.read())
            assert PATTERN.matches(9, got["a"].data) and PATTERN.matches(1, got["b"].data)
            assert got["a"].flags.writeable
            assert not np.shares_memory(got["a"], got["b"])  # separate arrays, separate buffers
        finally:
            await client.close()
            await server.close()

    with dask.config.set({"distributed.comm.shard": "1MiB"}):
        run(main())
    assert copies == []


def test_zerocopy_can_be_disabled() -> None:
    async def main() -> Any:
        client, server = await comm_pair()
        try:
            msg = {"a": to_serialize(pattern_array(0, 1 << 20))}
            _, got = await asyncio.gather(client.write(msg), server.read())
            assert PATTERN.matches(0, got["a"].data)
            return client.transport_stats()
        finally:
            await client.close()
            await server.close()

    with dask.config.set({"zcnet.dask.zerocopy": False}):
        stats = run(main())
    assert stats.bytes_zerocopy == 0 and stats.mode == "copy"


def test_many_small_frames_leave_in_few_sends() -> None:
    """A message of thousands of small frames (2.4 MB in all) is gathered into a few sends."""
    n, size = 3000, 800

    async def main() -> tuple[int, int]:
        client, server = await comm_pair()
        try:
            arrays = [pattern_array(i * size, size) for i in range(n)]
            before = client.transport_stats()
            _, got = await asyncio.gather(
                client.write({"a": [to_serialize(a) for a in arrays]}), server.read())
            after = client.transport_stats()
            assert len(got["a"]) == n
            for i, arr in enumerate(got["a"]):
                assert arr.nbytes == size and PATTERN.matches(i * size, arr.data)
            return (after.send_calls - before.send_calls,
                    after.bytes_sent - before.bytes_sent)
        finally:
            await client.close()
            await server.close()

    calls, sent = run(main())
    assert sent > n * size
    # frame by frame would be more than n calls; 1 MiB joins make a handful (a few more when
    # the socket buffer takes a join in parts, or a join goes out in zero-copy pieces)
    assert calls < 100, calls


@requires_zerocopy
def test_send_holds_buffers_until_completion() -> None:
    """A zero-copy frame stays referenced until its completion, then is let go."""
    import gc
    import weakref

    async def main() -> None:
        client, server = await comm_pair()
        try:
            arr = pattern_array(0, 8 << 20)
            ref = weakref.ref(arr)
            _, got = await asyncio.gather(client.write({"a": to_serialize(arr)}), server.read())
            del arr
            assert PATTERN.matches(0, got["a"].data)
            for _ in range(200):  # completions arrive asynchronously, reaped by the loop
                gc.collect()
                if ref() is None:
                    break
                await asyncio.sleep(0.01)
            assert ref() is None
            assert client.transport_stats().bytes_in_flight == 0
        finally:
            await client.close()
            await server.close()

    with dask.config.set({"zcnet.dask.force-zerocopy": True}):
        run(main())


# -- closing ------------------------------------------------------------------------------------


def test_comm_closed_implicit() -> None:
    async def main() -> None:
        async def handle_comm(comm: Any) -> None:
            await comm.close()

        async with listen("zc://127.0.0.1", handle_comm) as listener:
            comm = await connect(listener.contact_address)
            with pytest.raises(CommClosedError):
                await comm.write({})
                await comm.read()
            comm = await connect(listener.contact_address)
            with pytest.raises(CommClosedError):
                await comm.read()
            assert comm.closed()

    run(main())


def test_comm_closed_explicit() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        a_read = asyncio.ensure_future(a.read())
        b_read = asyncio.ensure_future(b.read())
        await asyncio.sleep(0.01)
        await a.close()
        with pytest.raises(CommClosedError):
            await a_read
        with pytest.raises(CommClosedError):
            await b_read
        for comm in (a, b):
            with pytest.raises(CommClosedError):
                await comm.read()
            with pytest.raises(CommClosedError):
                await comm.write({})
            assert comm.closed()
        await b.close()
        await b.close()  # idempotent

    run(main())


def test_abort_wakes_reader_and_peer() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        b_read = asyncio.ensure_future(b.read())
        a_read = asyncio.ensure_future(a.read())
        await asyncio.sleep(0.01)
        a.abort()
        a.abort()
        assert a.closed()
        with pytest.raises(CommClosedError):
            await a_read
        with pytest.raises(CommClosedError):
            await b_read
        assert b.closed()

    run(main())


def test_abort_with_zerocopy_sends_in_flight() -> None:
    """Aborting while the peer does not read resets the connection and lets buffers go."""

    async def main() -> None:
        a, b = await comm_pair()
        arr = pattern_array(0, 8 << 20)
        # write() returns once the message is queued (as on tcp://); the peer does not read,
        # so the comm's send task blocks part-way
        assert await a.write({"x": to_serialize(arr)}) > arr.nbytes
        await asyncio.sleep(0.05)
        a.abort()
        with pytest.raises(CommClosedError):
            await a.write({})
        with pytest.raises(CommClosedError) as lost:
            await b.read()  # truncated message: the reader sees the connection end
        # a reset (SO_LINGER 0: the kernel purged the send queue), not an orderly FIN
        assert was_reset(lost.value), repr(lost.value.__cause__)
        assert a.closed() and b.closed()

    with dask.config.set({"zcnet.dask.force-zerocopy": True}):
        run(main())


@requires_zerocopy
def test_close_resets_when_sends_outlive_drain_timeout() -> None:
    """A graceful close whose zero-copy sends are still pinned at the deadline resets."""

    async def main() -> None:
        a, b = await comm_pair()
        arr = pattern_array(0, 32 << 20)
        await a.write({"x": to_serialize(arr)})  # queued; the send task blocks part-way
        await asyncio.sleep(0.05)  # the peer does not read: sends stay queued (and pinned)
        t0 = time.monotonic()
        await a.close()
        assert time.monotonic() - t0 < 3.0  # the 0.2 s deadline, not the peer, ended it
        with pytest.raises(CommClosedError) as lost:
            await b.read()
        assert was_reset(lost.value), repr(lost.value.__cause__)
        assert a.closed() and b.closed()

    with dask.config.set({"zcnet.dask.force-zerocopy": True, "zcnet.dask.drain-timeout": 0.2}):
        run(main())


def test_read_cancelled_aborts_comm() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.read(), 0.05)
        assert b.closed()
        await a.close()

    run(main())


def test_corrupt_prelude_closes_comm() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        sock = a.transport.raw_socket
        sock.send(b"\xff" * 8)  # announces 2**64-1 frames
        with pytest.raises(CommClosedError):
            await b.read()
        assert b.closed()
        a.abort()

    run(main())


def test_connect_timeout_to_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

        async def main() -> None:
            with pytest.raises(OSError, match="Timed out trying to connect"):
                await connect(f"zc://127.0.0.1:{port}", timeout=0.3)

        run(main())


def test_listener_stop_refuses_new_connections() -> None:
    async def main() -> None:
        listener = await listen("zc://127.0.0.1", lambda c: None)
        addr = listener.contact_address
        listener.stop()
        with pytest.raises(OSError):
            await connect(addr, timeout=0.2)

    run(main())


def test_many_listeners() -> None:
    async def main() -> None:
        for addr in ("zc://127.0.0.1", "zc://0.0.0.0", "zc://"):
            listeners = [await listen(addr, lambda c: None) for _ in range(100)]
            assert len({lst.listen_address for lst in listeners}) == 100
            assert len({lst.contact_address for lst in listeners}) == 100
            for lst in listeners:
                lst.stop()

    run(main())


# -- deserialization ----------------------------------------------------------------------------


def _msg() -> dict[str, Any]:
    return {
        "op": "update",
        "x": b"abc",
        "to_ser": [to_serialize(123)],
        "ser": Serialized(*serialize(456)),
        "arr": to_serialize(pattern_array(5, 300_000)),
    }


def _check(out: dict[str, Any], deserialized: bool) -> None:
    assert out["op"] == "update" and out["x"] == b"abc"
    if deserialized:
        assert list(out["to_ser"]) == [123] and out["ser"] == 456
        arr = out["arr"]
    else:
        assert isinstance(out["to_ser"][0], Serialized)
        assert deserialize(out["to_ser"][0].header, out["to_ser"][0].frames) == 123
        assert deserialize(out["ser"].header, out["ser"].frames) == 456
        arr = deserialize(out["arr"].header, out["arr"].frames)
    assert PATTERN.matches(5, memoryview(arr))


@pytest.mark.parametrize("deserialize_flag", [True, False])
def test_listener_deserialize(deserialize_flag: bool) -> None:
    async def main() -> None:
        q: asyncio.Queue[Any] = asyncio.Queue()

        async def handle_comm(comm: Any) -> None:
            try:
                q.put_nowait(await comm.read())
            finally:
                await comm.close()

        async with listen("zc://127.0.0.1", handle_comm,
                          deserialize=deserialize_flag) as listener:
            comm = await connect(listener.contact_address)
        await comm.write(_msg())
        _check(await q.get(), deserialize_flag)
        await comm.close()

    run(main())


@pytest.mark.parametrize("deserialize_flag", [True, False])
def test_connector_deserialize(deserialize_flag: bool) -> None:
    async def main() -> None:
        done = asyncio.Event()

        async def handle_comm(comm: Any) -> None:
            try:
                await comm.write(_msg())
                await done.wait()
            finally:
                await comm.close()

        async with listen("zc://127.0.0.1", handle_comm) as listener:
            comm = await connect(listener.contact_address, deserialize=deserialize_flag)
        try:
            out = await comm.read()
            done.set()
        finally:
            await comm.close()
        _check(out, deserialize_flag)

    run(main())


def test_comm_type_and_repr() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        assert isinstance(a, ZCComm) and isinstance(b, ZCComm)
        assert "zc://127.0.0.1" in repr(a)
        assert a.extra_info == {}
        assert a.same_host
        await a.close()
        await b.close()
        assert "closed" in repr(a)

    run(main())


@requires_zerocopy
def test_forced_zerocopy_under_uvloop() -> None:
    """Pending completions raise EPOLLERR; the private epoll fd keeps uvloop's watcher alive."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> int:
        client, server = await comm_pair()
        try:
            for i in range(3):
                arr = pattern_array(i, 6 << 20)
                _, got = await asyncio.gather(client.write({"a": to_serialize(arr)}),
                                              server.read())
                assert PATTERN.matches(i, got["a"].data)
            stats = client.transport_stats()
            assert stats is not None
            return stats.zerocopy_calls
        finally:
            await client.close()
            await server.close()

    with dask.config.set({"zcnet.dask.force-zerocopy": True}), \
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(asyncio.wait_for(main(), 60)) > 3


@requires_zerocopy
def test_enobufs_falls_back_to_copy_in_netns(netns: Any) -> None:
    """With no notification budget (optmem_max 0) every zero-copy send gets ENOBUFS."""
    netns.sysctl("net.core.optmem_max", 0)

    async def main() -> Any:
        client, server = await comm_pair()
        try:
            arr = pattern_array(3, 4 << 20)
            _, got = await asyncio.gather(client.write({"a": to_serialize(arr)}), server.read())
            assert PATTERN.matches(3, got["a"].data)
            return client.transport_stats()
        finally:
            await client.close()
            await server.close()

    with dask.config.set({"zcnet.dask.force-zerocopy": True}), netns.entered():
        stats = run(main())
    assert stats.enobufs > 0
    assert stats.bytes_in_flight == 0
