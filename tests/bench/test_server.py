"""The receiving side reports corrupted or short streams as failed runs, not as results."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from zcnet.bench.pattern import Verifier
from zcnet.bench.protocol import encode_header
from zcnet.bench.server import handle

HEADER = {"op": "stream", "mode": "recv_into", "warmup": 4096, "bytes": 65536,
          "verify": "spot", "recv_size": 16384}


def _exchange(payload: bytes, header: dict[str, Any]) -> dict[str, Any]:
    a, b = socket.socketpair()
    out: list[dict[str, Any] | None] = []
    def serve_one() -> None:
        with b:
            out.append(handle(b, Verifier()))

    t = threading.Thread(target=serve_one)
    t.start()
    with a:
        a.sendall(encode_header(header) + payload)
        a.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: a.recv(65536), b""))
    t.join(10)
    result = json.loads(reply)
    assert out == [result]
    return result


def test_good_stream_is_counted_and_verified() -> None:
    v = Verifier()
    result = _exchange(bytes(v.window(0, 4096 + 65536)), dict(HEADER, verify="full"))
    assert result["ok"] and result["bytes"] == 65536 and result["verified"] == "full"


@pytest.mark.parametrize("flip", [100, 4096 + 20000])  # in the warm-up, in the timed part
def test_corrupted_byte_fails_the_run_with_full_verification(flip: int) -> None:
    data = bytearray(Verifier().window(0, 4096 + 65536))
    data[flip] ^= 0xFF
    result = _exchange(bytes(data), dict(HEADER, verify="full"))
    assert not result["ok"]
    assert "PatternMismatch" in result["error"]


def test_short_stream_fails_the_run() -> None:
    result = _exchange(bytes(Verifier().window(0, 5000)), HEADER)
    assert not result["ok"]
    assert "EOF" in result["error"]


def test_unknown_mode_fails_the_run() -> None:
    result = _exchange(b"", dict(HEADER, mode="telepathy"))
    assert not result["ok"]
    assert "unknown receive mode" in result["error"]
