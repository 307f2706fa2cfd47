"""The receiving side of the stream/rx experiments; also ``zcnet serve --listen HOST:PORT``.

Theory of operation: one listening socket, connections handled one after another (so the
process's own ``getrusage`` is the CPU of exactly one transfer). Each connection carries a
header (see :mod:`zcnet.bench.protocol`) choosing the receive mode; the result line goes back on
the same connection. A header with ``"op": "quit"`` stops the server. For the rx experiment
outside a namespace, ``mss=4108`` on the listener (before ``listen()``) gives a 4096-byte MSS so
loopback pages become mappable (measured, see docs/ARCHITECTURE.md, 'Receive: loopback').
"""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import Any, TextIO

from zcnet.bench.pattern import Verifier
from zcnet.bench.protocol import (
    HEADER_SIZE,
    ProtocolError,
    decode_header,
    read_exact,
    send_result,
)
from zcnet.bench.receivers import receive
from zcnet.bench.results import unavailable_side
from zcnet.errors import ModeUnavailable
from zcnet.lowlevel.constants import TCP_MAXSEG

__all__ = ["make_listener", "parse_hostport", "serve"]


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` → ``(host, port)``; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (or [IPV6]:PORT), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"put an IPv6 address in brackets: [{host}]:{port}")
    return host, int(port)


def make_listener(host: str, port: int, *, mss: int | None = None,
                  rcvbuf: int | None = None, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 if ``host`` contains a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mss is not None:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_MAXSEG, mss)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def handle(conn: socket.socket, verifier: Verifier) -> dict[str, Any] | None:
    """Serve one connection; ``None`` if it asked the server to quit."""
    header = decode_header(read_exact(conn, HEADER_SIZE))
    if header.get("op") == "quit":
        return None
    try:
        result = receive(conn, header, verifier)
    except ModeUnavailable as e:  # this receive mode cannot run here: the one field says why
        result = unavailable_side(str(e), f"ModeUnavailable: {e}")
    except Exception as e:  # the benchmark's boundary: report any failure to the sender
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    with contextlib.suppress(OSError):
        send_result(conn, result)
        if not result.get("ok"):
            _drain(conn)
    return result


def _drain(conn: socket.socket, timeout: float = 10.0) -> None:
    """After a failed receive, discard the rest of the stream until the sender closes.

    Closing with unread data would reset the connection, and the sender could lose the error
    we just sent it.
    """
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(timeout)
    buf = bytearray(1 << 16)
    while conn.recv_into(buf):
        pass


def serve(listener: socket.socket, *, log: TextIO | None = None,
          max_connections: int | None = None) -> int:
    """Accept and serve connections until a quit header (or ``max_connections``)."""
    verifier = Verifier()
    served = 0
    while max_connections is None or served < max_connections:
        conn, peer = listener.accept()
        with conn:
            try:
                result = handle(conn, verifier)
            except (ProtocolError, OSError) as e:
                if log is not None:
                    print(f"zcnet serve: {peer}: {e}", file=log)
                continue
        if result is None:
            break
        served += 1
        if log is not None:
            mb = result.get("bytes", 0) / 1e6
            status = "ok" if result.get("ok") else result.get("error")
            print(f"zcnet serve: {peer[0]} {result.get('mode')} {mb:.0f} MB: {status}", file=log)
    return served


def main_serve(host: str, port: int) -> int:
    """``zcnet serve``: listen and serve until interrupted."""
    with make_listener(host, port) as listener:
        addr = listener.getsockname()
        print(f"zcnet serve: listening on {addr[0]}:{addr[1]}", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            serve(listener, log=sys.stderr)
    return 0
