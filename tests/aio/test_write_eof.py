"""ZcStream.write_eof: a half-close after every queued byte, against a plain-socket peer."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from tests.aio.conftest import Runner
from tests.aio.helpers import send_pattern
from zcnet._core.pattern import StreamPattern
from zcnet.aio import open_connection
from zcnet.errors import InvalidBufferError, SocketClosedError
from zcnet.sender import SendPolicy

P = StreamPattern(1 << 22)


@pytest.mark.parametrize("forced", [False, True], ids=["default", "forced"])
def test_write_eof_after_queued_sends(run: Runner, forced: bool) -> None:
    total = 6 * (1 << 20) + 12345
    result: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as ls:
        host, port = ls.getsockname()

        def peer() -> None:
            conn, _ = ls.accept()
            with conn:
                got = bytearray()
                while chunk := conn.recv(1 << 20):
                    got += chunk
                result["n"] = len(got)
                result["ok"] = P.matches(0, memoryview(got))
                conn.sendall(b"after your EOF")

        t = threading.Thread(target=peer)
        t.start()

        async def main() -> None:
            stream = await open_connection(host, port,
                                           send_policy=SendPolicy(force_zerocopy=forced))
            async with stream:
                assert stream.can_write_eof()
                # sends queued behind each other, then the half-close: it waits its turn
                sending = asyncio.ensure_future(send_pattern(stream, P, 0, total,
                                                             sizes=(300_000, 1 << 20, 5000)))
                await asyncio.sleep(0)
                await sending
                await stream.write_eof()
                await stream.write_eof()  # idempotent
                with pytest.raises(SocketClosedError, match="write_eof"):
                    await stream.send(b"late")
                reply = bytearray(14)
                await stream.readexactly_into(reply)  # receiving goes on after write_eof
                assert reply == b"after your EOF"
                await stream.drain()

        run(main())
        t.join(30)
    assert result == {"n": total, "ok": True}


def test_recv_into_read_only_buffer_is_refused_at_once(run: Runner) -> None:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        host, port = ls.getsockname()

        async def main() -> None:
            stream = await open_connection(host, port)
            async with stream:
                with pytest.raises(InvalidBufferError, match="read-only"):
                    await asyncio.wait_for(stream.recv_into(b"immutable"), 1)
                with pytest.raises(InvalidBufferError, match="read-only"):
                    await asyncio.wait_for(stream.readexactly_into(b"immutable"), 1)

        run(main())
