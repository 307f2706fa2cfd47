"""zcnet.aio: zero-copy streams for asyncio and uvloop.

``stream = await open_connection(host, port)``; ``ticket = await stream.send(buf)`` returns once
the bytes are queued, ``await ticket`` once the kernel released the buffer;
``chunk = await stream.recv(n)`` gives mapped pages where possible. See docs/asyncio.md.

The readiness watcher gives the loop a private, edge-triggered epoll fd instead of the socket,
so pending zero-copy completions (``EPOLLERR``) neither spin asyncio's selector nor close
uvloop's poll watcher. Send policy, completion tracking and receive logic are the blocking API's
cores (zcnet._core, zcnet.receiver), not copies of them.
"""

from __future__ import annotations

from zcnet.aio._server import Handler, ZcServer, open_connection, start_server
from zcnet.aio._stream import ZcStream
from zcnet.aio._ticket import AioTicket
from zcnet.aio._watch import READABLE, WRITABLE, SocketWatcher

__all__ = [
    "READABLE",
    "WRITABLE",
    "AioTicket",
    "Handler",
    "SocketWatcher",
    "ZcServer",
    "ZcStream",
    "open_connection",
    "start_server",
]
