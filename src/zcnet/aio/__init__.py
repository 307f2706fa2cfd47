"""zcnet.aio: zero-copy streams for asyncio and uvloop.

See docs/asyncio.md. The readiness watcher (``_watch``) gives the loop a private, edge-triggered
epoll fd instead of the socket, so pending zero-copy completions (``EPOLLERR``) neither spin
asyncio's selector nor close uvloop's poll watcher.
"""

from __future__ import annotations

from zcnet.aio._watch import READABLE, WRITABLE, SocketWatcher

__all__ = ["READABLE", "WRITABLE", "SocketWatcher"]
