"""The wire protocol between a benchmark sender and its receiver (local or ``zcnet serve``).

Theory of operation: a connection starts with one fixed 4096-byte header (JSON padded with
spaces) naming the receive mode, the warm-up and timed byte counts and the verification level.
A page-sized header keeps the data that follows page-aligned in the stream, so with a
page-multiple MSS every segment's payload can be mapped by TCP_ZEROCOPY_RECEIVE
(tools/testing/selftests/net/tcp_mmap.c). Then come ``warmup + nbytes`` pattern bytes. The
receiver answers with one JSON line (its CPU, wall time, bytes mapped/copied, verification) once
it has read them all; the sender reads it after its own timed window closed.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final

__all__ = ["HEADER_SIZE", "ProtocolError", "decode_header", "encode_header", "read_exact",
           "read_result", "send_result"]

HEADER_SIZE: Final = 4096
_MAX_RESULT: Final = 1 << 20


class ProtocolError(RuntimeError):
    """The peer broke the benchmark protocol (short header, bad JSON, early EOF)."""


def encode_header(fields: dict[str, Any]) -> bytes:
    """``fields`` as a JSON header padded to :data:`HEADER_SIZE` bytes."""
    raw = json.dumps(fields, sort_keys=True).encode()
    if len(raw) >= HEADER_SIZE:
        raise ValueError("benchmark header too large")
    return raw + b" " * (HEADER_SIZE - 1 - len(raw)) + b"\n"


def decode_header(raw: bytes) -> dict[str, Any]:
    """Parse a header produced by :func:`encode_header`."""
    try:
        fields = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"bad benchmark header: {e}") from e
    if not isinstance(fields, dict):
        raise ProtocolError("bad benchmark header: not an object")
    return fields


def read_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes; :class:`ProtocolError` on EOF (a blocking socket)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def send_result(sock: socket.socket, result: dict[str, Any]) -> None:
    """Send the receiver's result line."""
    sock.sendall(json.dumps(result, sort_keys=True).encode() + b"\n")


def read_result(sock: socket.socket) -> dict[str, Any]:
    """Read the receiver's result line (up to EOF or newline)."""
    chunks: list[bytes] = []
    total = 0
    while total < _MAX_RESULT:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
        if data.endswith(b"\n"):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        raise ProtocolError("receiver closed without a result")
    try:
        result = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"bad receiver result: {e}") from e
    if not isinstance(result, dict):
        raise ProtocolError("bad receiver result: not an object")
    return result
