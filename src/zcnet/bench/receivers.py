"""Receive modes of the benchmark: one function per way of reading a TCP stream.

Theory of operation: each mode reads the warm-up bytes (untimed, every byte verified) and then
the timed bytes inside a :class:`~zcnet.bench.meter.CpuWindow`. Modes:

- ``recv_into``: ``socket.recv_into`` into one preallocated buffer (netperf / tcp_mmap's copy
  path); with ``rcvlowat`` in the header, ``MSG_WAITALL`` (wait for the whole request, the
  blocking equivalent of tcp_mmap's SO_RCVLOWAT hint);
- ``asyncio-readexactly`` (``asyncio.StreamReader.readexactly``), ``asyncio-read``
  (``StreamReader.read``), ``asyncio-buffered`` (an ``asyncio.BufferedProtocol`` receiving into
  one preallocated buffer, the cheapest asyncio can do) and ``zcnet-aio``
  (``zcnet.aio.ZcStream.recv``, mapped pages where possible): :mod:`zcnet.bench.aio_modes`, on a
  dup of the socket;
- every asyncio mode also runs on uvloop as ``NAME-uvloop`` (``ModeUnavailable`` when uvloop
  is not installed: the ``[uvloop]`` extra);
- ``zcnet``: :class:`zcnet.receiver.Receiver` on a dup of the socket (TCP_ZEROCOPY_RECEIVE maps
  pages when the MSS is a page multiple and the sender used MSG_ZEROCOPY; see docs/ARCHITECTURE.md,
  'Receive: mappable pages'), with ``RecvPolicy(rcvlowat=...)`` from the header.
- ``c-recv`` / ``c-zerocopy``: the C reference receivers (:mod:`zcnet.bench.cref`): the socket
  (header already read) is handed to a C program that reads the rest with ``recv`` into one
  buffer or with TCP_ZEROCOPY_RECEIVE into one reused window (tcp_mmap.c), verifies as above
  and measures its own CPU.

Dups let the session answer on the original socket after the mode's object closed its own.
"""

from __future__ import annotations

import socket
from typing import Any

from zcnet.bench.meter import CpuWindow
from zcnet.bench.modes import C_RECEIVE_MODES, RECEIVE_MODES, split_loop
from zcnet.bench.pattern import Verifier
from zcnet.bench.protocol import ProtocolError
from zcnet.errors import ModeUnavailable

__all__ = ["RECEIVE_MODES", "Consumer", "receive"]


class Consumer:
    """Checks received chunks against the pattern and counts them."""

    def __init__(self, verifier: Verifier, window: CpuWindow, full: bool) -> None:
        self.verifier = verifier
        self.window = window
        self.full = full
        self.offset = 0
        self.timed = False
        self.chunks = 0

    def __call__(self, data: bytes | bytearray | memoryview) -> None:
        if self.full or not self.timed:
            with self.window.exclude():
                self.verifier.verify(self.offset, data)
        else:
            self.verifier.spot(self.offset, data)
        self.offset += len(data)
        self.chunks += 1

    def begin_timed(self) -> None:
        """Switch from warm-up to the timed phase and start the CPU window."""
        self.timed = True
        self.chunks = 0
        self.window.start()


def _recv_into(sock: socket.socket, warmup: int, nbytes: int, size: int,
               consume: Consumer, flags: int = 0) -> dict[str, Any]:
    buf = bytearray(size)
    view = memoryview(buf)

    def pump(total: int) -> None:
        left = total
        while left:
            k = sock.recv_into(view, min(left, size), flags)
            if k == 0:
                raise ProtocolError(f"EOF with {left} bytes missing")
            consume(view[:k])
            left -= k

    pump(warmup)
    consume.begin_timed()
    pump(nbytes)
    consume.window.stop()
    return {}


#: fields of the asyncio modes' result that the receiver's own result replaces (timed phase)
_AIO_DROP = ("mode", "bytes", "chunks")


def _asyncio_mode(sock: socket.socket, warmup: int, nbytes: int, size: int,
                  consume: Consumer, mode: str, rcvlowat: int = 0) -> dict[str, Any]:
    """An asyncio mode of :mod:`zcnet.bench.aio_modes` (``NAME-uvloop``: on uvloop) on a dup
    of ``sock``."""
    from zcnet.bench.aio_modes import receive as aio_receive

    base, loop = split_loop(mode)
    assert loop is not None
    try:
        res = aio_receive(base, loop, sock.dup(), warmup=warmup, nbytes=nbytes, size=size,
                          consume=consume, begin_timed=consume.begin_timed,
                          end_timed=consume.window.stop, rcvlowat=rcvlowat)
    except EOFError as e:
        raise ProtocolError(str(e)) from e
    if res["bytes"] != warmup + nbytes:
        raise ProtocolError(f"{mode}: received {res['bytes']} of {warmup + nbytes} bytes")
    return {k: v for k, v in res.items() if k not in _AIO_DROP}


def _zcnet(sock: socket.socket, warmup: int, nbytes: int, size: int,
           consume: Consumer, rcvlowat: int = 0) -> dict[str, Any]:
    try:
        from zcnet.receiver import Receiver, RecvPolicy
    except ImportError as e:
        raise ModeUnavailable(f"zcnet.receiver is not available: {e}") from e
    from zcnet.errors import UnsupportedSocketError, ZerocopyUnavailable

    try:
        rx = Receiver(sock.dup(), RecvPolicy(rcvlowat=rcvlowat))
    except (UnsupportedSocketError, ZerocopyUnavailable) as e:
        raise ModeUnavailable(f"zcnet.Receiver not available here: {e}") from e
    switched: list[int] = []  # recv() calls (from the first byte) until the copy switch

    try:
        def pump(total: int, watch: bool) -> int:
            left, calls = total, 0
            while left:
                with rx.recv(min(left, size)) as chunk:
                    n = len(chunk)
                    if n == 0:
                        raise ProtocolError(f"EOF with {left} bytes missing")
                    consume(chunk.view)
                left -= n
                calls += 1
                if watch and not switched and rx.stats.mode != "zerocopy":
                    switched.append(calls)
            return calls

        try:
            warm_calls = pump(warmup, watch=True)  # untimed: stats may be read every call
        except ZerocopyUnavailable as e:
            raise ModeUnavailable(f"zcnet.Receiver not available here: {e}") from e
        before = rx.stats
        consume.begin_timed()
        timed_calls = pump(nbytes, watch=False)
        consume.window.stop()
        after = rx.stats
        if not switched and after.mode != "zerocopy":
            switched.append(warm_calls + timed_calls)  # during the timed bytes: at most this
        return {
            "bytes_mapped": after.bytes_mapped - before.bytes_mapped,
            "bytes_copied": after.bytes_copied - before.bytes_copied,
            "rx_mode": str(after.mode),
            "fallback_reason": after.fallback_reason,
            "switched_after_calls": switched[0] if switched else None,
            "zerocopy_calls": after.calls,
        }
    finally:
        rx.close()




def _c_receive(sock: socket.socket, header: dict[str, Any], mode: str, warmup: int,
               nbytes: int, size: int) -> dict[str, Any]:
    from zcnet.bench import cref

    built = cref.build()  # compiled by the orchestrator before this process was forked
    if not built.available:
        raise ModeUnavailable(f"C reference not available: {built.reason}")
    result = cref.run_receiver(built.programs["recv"], sock, zerocopy=mode == "c-zerocopy",
                               warmup=warmup, nbytes=nbytes, recv_size=size,
                               rcvlowat=int(header.get("rcvlowat", 0)),
                               full=header.get("verify") == "full")
    if not result.get("ok"):
        raise ProtocolError(str(result.get("error")))
    result["mode"] = mode
    return result


def receive(sock: socket.socket, header: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    """Run one receive session described by ``header``; return the result fields."""
    mode = str(header.get("mode", "recv_into"))
    if mode not in RECEIVE_MODES:
        raise ModeUnavailable(f"unknown receive mode {mode!r}")
    warmup, nbytes = int(header["warmup"]), int(header["bytes"])
    size = int(header.get("recv_size", 256 * 1024))
    if mode in C_RECEIVE_MODES:
        return _c_receive(sock, header, mode, warmup, nbytes, size)
    window = CpuWindow()
    consume = Consumer(verifier, window, full=header.get("verify") == "full")
    rcvlowat = int(header.get("rcvlowat", 0))
    if mode == "zcnet":
        extra = _zcnet(sock, warmup, nbytes, size, consume, rcvlowat)
    elif mode == "recv_into":
        flags = socket.MSG_WAITALL if rcvlowat > 0 else 0
        extra = _recv_into(sock, warmup, nbytes, size, consume, flags)
    else:
        extra = _asyncio_mode(sock, warmup, nbytes, size, consume, mode, rcvlowat)
    result: dict[str, Any] = {
        "ok": True,
        "mode": mode,
        "bytes": nbytes,
        "cpu": window.cpu,
        "user": window.user,
        "sys": window.sys,
        "wall": window.wall,
        "verify_cpu": window.excluded,
        "verified": "full" if consume.full else "spot",
        "chunks": consume.chunks,
    }
    result.update(extra)
    return result
