"""Receiver.recv's entry and waiting behaviour, which the compiled fast path (src/zcnet/_ext/
rxfast.c) implements for its common case and hands to the Python code otherwise: the same
results on both implementations, every byte verified."""

from __future__ import annotations

import select
import signal
import socket
from collections.abc import Iterator
from types import FrameType

import pytest

from tests.rx_helpers import PATTERN, sending, tcp_pair
from zcnet._accel import speedups
from zcnet.errors import SocketClosedError, TimeoutExpired
from zcnet.receiver import Receiver, RecvPolicy, make_mappable_listener


class _Alarm(Exception):
    pass


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Receiver]]:
    client, server = tcp_pair(None, listener=make_mappable_listener)
    rx = Receiver(server, RecvPolicy(force_zerocopy=True))
    try:
        yield client, rx
    finally:
        rx.close()
        client.close()


def _receive_all(rx: Receiver, total: int, start: int = 0) -> None:
    off = start
    while off < start + total:
        with rx.recv(1 << 20) as chunk:
            n = len(chunk)
            assert n, "EOF before every byte arrived"
            assert bytes(chunk.view) == PATTERN.block(off, n)
        off += n


def test_signal_during_the_wait_raises_and_loses_nothing(
        pair: tuple[socket.socket, Receiver]) -> None:
    client, rx = pair

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Alarm

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(_Alarm):
            rx.recv(1 << 20)  # nothing was sent: sleeps until the signal
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    total = 8 << 20
    with sending(client, total, close=False):
        _receive_all(rx, total)
    assert rx.stats.bytes_mapped + rx.stats.bytes_copied == total
    assert rx.stats.bytes_mapped > 0, rx.stats


@pytest.mark.parametrize("timeout", [0, 0.0])
def test_timeout_zero_returns_at_once(pair: tuple[socket.socket, Receiver],
                                      timeout: float) -> None:
    client, rx = pair
    with pytest.raises(TimeoutExpired):
        rx.recv(1 << 20, timeout=timeout)
    with pytest.raises(TimeoutExpired):
        rx.recv(1 << 20, timeout)
    total = 2 << 20
    with sending(client, total, close=False):
        off = 0
        while off < total:
            try:
                chunk = rx.recv(1 << 20, timeout=timeout)
            except TimeoutExpired:
                select.select([rx.fileno()], [], [], 5)
                continue
            with chunk:
                assert bytes(chunk.view) == PATTERN.block(off, len(chunk))
                off += len(chunk)
    assert off == total


@pytest.mark.parametrize(("args", "kwargs", "error"), [
    ((True,), {}, TypeError),
    ((1.5,), {}, TypeError),
    (("4096",), {}, TypeError),
    ((0,), {}, ValueError),
    ((-4096,), {}, ValueError),
    ((4096,), {"timeout": -1}, ValueError),
    ((4096,), {"timeout": float("nan")}, ValueError),
    ((4096,), {"timeout": "1"}, TypeError),
    ((4096,), {"timeout": True}, TypeError),
    ((4096,), {"deadline": 1}, TypeError),
    ((), {}, TypeError),
    ((4096, None, None), {}, TypeError),
])
def test_bad_arguments_raise_before_anything_is_received(
        pair: tuple[socket.socket, Receiver], args: tuple[object, ...],
        kwargs: dict[str, object], error: type[Exception]) -> None:
    client, rx = pair
    total = 1 << 20
    with sending(client, total, close=False):
        with pytest.raises(error):
            rx.recv(*args, **kwargs)  # type: ignore[arg-type]
        _receive_all(rx, total)  # nothing was consumed by the refused call


def test_huge_max_bytes_is_capped_at_the_window(pair: tuple[socket.socket, Receiver]) -> None:
    client, rx = pair
    total = 3 * rx.policy.window_bytes
    with sending(client, total, close=False):
        off = 0
        while off < total:
            with rx.recv(2 ** 70) as chunk:
                assert 0 < len(chunk) <= rx.policy.window_bytes
                assert bytes(chunk.view) == PATTERN.block(off, len(chunk))
                off += len(chunk)


def test_closed_receiver_refuses(pair: tuple[socket.socket, Receiver]) -> None:
    _, rx = pair
    rx.close()
    with pytest.raises(SocketClosedError):
        rx.recv(4096)
    with pytest.raises(SocketClosedError):
        rx.recv(1 << 20, timeout=0)


@pytest.mark.skipif(speedups is None, reason="the compiled fast path is not active")
def test_compiled_core_serves_recv_and_keeps_the_counters(
        pair: tuple[socket.socket, Receiver]) -> None:
    client, rx = pair
    assert rx.recv.__self__.__class__ is speedups.RxCore  # type: ignore[attr-defined]
    total = 16 << 20
    with sending(client, total, close=False):
        _receive_all(rx, total)
    stats = rx.stats
    assert stats.bytes_mapped + stats.bytes_copied == total
    assert stats.bytes_mapped > total // 2, stats
    assert stats.calls >= stats.bytes_mapped // (1 << 20)
    assert stats.mode == "zerocopy"


@pytest.mark.skipif(speedups is None, reason="the compiled fast path is not active")
def test_a_subclass_overriding_recv_keeps_its_method() -> None:
    class Counting(Receiver):
        calls = 0

        def recv(self, max_bytes: int, timeout: float | None = None):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            return super().recv(max_bytes, timeout)

    client, server = tcp_pair(None, listener=make_mappable_listener)
    with Counting(server) as rx:
        with sending(client, 1 << 20, close=False):
            _receive_all(rx, 1 << 20)
        assert Counting.calls > 0
    client.close()


@pytest.mark.parametrize("max_bytes", [1000, 4096, 65536, 1 << 20])
@pytest.mark.parametrize("timeout", [None, 0])
def test_copies_in_order_with_their_reasons(max_bytes: int, timeout: float | None) -> None:
    # a copying sender: small requests copy from the start, large ones once the receiver has
    # switched to copy mode; every copy goes into the reused copy buffer
    client, server = tcp_pair(None, listener=make_mappable_listener)
    total = 6 << 20
    with Receiver(server) as rx, sending(client, total, zerocopy=False, close=False):
        off = 0
        while off < total:
            try:
                chunk = rx.recv(max_bytes, timeout)
            except TimeoutExpired:
                select.select([rx.fileno()], [], [], 5)
                continue
            with chunk:
                assert 0 < len(chunk) <= max_bytes
                assert bytes(chunk.view) == PATTERN.block(off, len(chunk))
                off += len(chunk)
        stats = rx.stats
    client.close()
    assert off == total
    assert stats.bytes_mapped + stats.bytes_copied == total
    assert sum(stats.copy_reasons.values()) == stats.bytes_copied
    assert stats.bytes_copied > total // 2, stats
    if max_bytes < RecvPolicy().min_map_bytes:
        assert stats.copy_reasons.get("small_request", 0) == total, stats
