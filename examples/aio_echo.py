"""An asyncio echo server and client with zcnet.aio (works with uvloop too).

Run: ``python examples/aio_echo.py`` (``--uvloop`` to use uvloop if installed).
"""

from __future__ import annotations

import asyncio
import os
import sys

from zcnet.aio import ZcStream, open_connection, start_server

MESSAGES = 64
SIZE = 256 * 1024


async def echo(stream: ZcStream) -> None:
    while True:
        with await stream.recv(SIZE) as chunk:
            if not len(chunk):
                return                      # EOF: the server closes the stream
            # Send the received bytes back from where they are (mapped pages or a copy). The
            # stream keeps a view of them until the kernel is done, so the Receiver will not
            # reuse those pages before, even though the chunk is released when this block ends.
            await stream.send(chunk.view)


async def main() -> None:
    async with await start_server(echo, "127.0.0.1", mappable=True) as server:
        stream = await open_connection("127.0.0.1", server.port)
        async with stream:
            payloads = [os.urandom(SIZE) for _ in range(MESSAGES)]
            for p in payloads:
                await stream.send(p)                # bytes are immutable: safe to zero-copy
            for p in payloads:
                assert await stream.readexactly(SIZE) == p
            await stream.drain()
            print("client send:", stream.send_stats)
            print("client recv:", stream.recv_stats)
    print(f"ok: {MESSAGES} messages of {SIZE} bytes echoed and checked")


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
