"""Worker bodies for the stream and rx experiments: the receiving server and the sending client.

Theory of operation: the server worker listens (port 0) and serves connections one at a time
(:func:`zcnet.bench.server.serve`); the client worker runs one repetition per command it gets
on its pipe (:func:`zcnet.bench.senders.tcp_stream` or ``udp_stream``). Both live for the whole
experiment, so process start-up happens once, and every repetition opens a fresh connection.
"""

from __future__ import annotations

import importlib
import traceback
from multiprocessing.connection import Connection
from typing import Any

from zcnet.bench.pattern import Verifier
from zcnet.bench.results import unavailable_side
from zcnet.bench.server import make_listener, serve
from zcnet.errors import ModeUnavailable

__all__ = ["client_worker", "server_worker"]


def server_worker(pipe: Connection, host: str, mss: int | None,
                  rcvbuf: int | None = None) -> None:
    """Listen on ``host`` (any port), report the address, serve until terminated."""
    listener = make_listener(host, 0, mss=mss, rcvbuf=rcvbuf)
    pipe.send(listener.getsockname()[:2])
    serve(listener)


def client_worker(pipe: Connection) -> None:
    """Run commands from ``pipe`` until ``None``; answer each with its result."""
    handlers = {
        "tcp": ("zcnet.bench.senders", "tcp_stream"),
        "udp": ("zcnet.bench.senders", "udp_stream"),
        "rpc": ("zcnet.bench.rpc", "rpc_client"),
        "memory": ("zcnet.bench.memory", "memory_sender"),
    }
    verifier = Verifier()
    while True:
        cmd: Any = pipe.recv()
        if cmd is None:
            return
        try:
            module, func = handlers[cmd["kind"]]
            result = getattr(importlib.import_module(module), func)(cmd, verifier)
        except ModeUnavailable as e:  # the mode cannot run here: say so in its one field
            result = unavailable_side(str(e), f"ModeUnavailable: {e}")
        except Exception as e:
            result = {"ok": False, "error": f"{type(e).__name__}: {e}",
                      "detail": traceback.format_exc(limit=3)}
        pipe.send(result)
