"""Send modes of the benchmark: plain ``sendall`` and :class:`zcnet.sender.Sender`.

Theory of operation: the sender sends ``warmup`` bytes untimed, then ``nbytes`` in messages of
one size inside a :class:`~zcnet.bench.meter.CpuWindow` that also covers the final flush (a
zero-copy send is finished only when its completion arrived,
Documentation/networking/msg_zerocopy.rst). Payloads are views of the immutable stream pattern,
so MSG_ZEROCOPY can pin them without copies. With ``source_bytes`` above the pattern's span
the messages walk through a buffer of that size (:class:`zcnet.bench.pattern.Source`), so a
copying send pays for cache misses as it does with real data. Modes:

- ``sendall``: ``socket.sendall`` (the kernel copies);
- ``zcnet``: ``Sender`` with the default policy (falls back to copying when the kernel reports
  that it copied, as over loopback);
- ``zcnet-forced``: ``SendPolicy(force_zerocopy=True, zerocopy_threshold=0)``: MSG_ZEROCOPY on
  every send whatever the size or the kernel's copied reports (what a zero-copy receiver over
  loopback needs, and the raw cost of pinning, as in the classic tables).

- ``zcnet-batch`` (UDP): ``Sender`` with the default policy, datagrams handed over in groups
  of ``batch`` with ``Sender.send_batch`` (``sendmmsg(2)``, one system call per group: Python's
  fixed cost per call is amortised; docs/transmit.md). On TCP it is ``zcnet``.

- ``zcnet-uring``: ``Sender`` on the io_uring engine (``SendPolicy(engine="io_uring")``, the
  default policy otherwise), one ``send`` per message. ``zcnet-uring-batch`` (UDP): the same
  Sender, ``send_batch`` of ``batch`` pool leases at a time, so the datagrams go out from
  registered memory (the leases are acquired and filled, and their slabs registered with
  ``Sender.register_pool``, before the timed window, as the other modes' messages are listed
  and the C loop's buffer registered before it). Where io_uring cannot be used, the rows say why.

- ``zcnet-leases`` / ``zcnet-uring-leases`` (TCP and UDP): one ``Sender.send`` per message of
  a :class:`zcnet.pool.BufferPool` lease holding the message's bytes, on the ``MSG_ZEROCOPY``
  engine (default policy otherwise) and on the io_uring engine (the slabs registered with
  ``Sender.register_pool``). The leases are acquired and filled before the timed window, as
  for ``zcnet-uring-batch``, so the leases of all the timed bytes exist at once (``--bytes`` of
  pool memory beside the source); the Sender hands each back to the pool when its ticket is
  done. A message larger than the pool's largest buffer makes the mode unavailable.

- ``c-copy`` / ``c-zc`` / ``c-uring`` / ``c-uring-fixed`` / ``c-uring-fixed-linked``: the C loops
  (:mod:`zcnet.bench.cref`): the connection is set up (and the header sent) here, then the
  socket is handed to the C program, which sends the same bytes from the same source layout
  with plain ``send``, ``send(MSG_ZEROCOPY)`` or io_uring ``IORING_OP_SEND_ZC`` (from the buffer
  as it is, or registered once, and then with each batch's datagrams linked in order) and
  measures its own CPU.

- ``raw-zerocopy``: the reference for zcnet's own overhead: ``send(MSG_ZEROCOPY)`` in a bare
  loop that only counts completions (the buffers are immutable, so no per-send bookkeeping), as
  tools/testing/selftests/net/msg_zerocopy.c does in C.

UDP sends go toward the ``ifb`` sink of the namespace with ``UDP_SEGMENT`` (GSO), where nothing
is delivered: the sender's CPU is the true transmit cost
(tools/testing/selftests/net/udpgso_bench_tx.c).
"""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Callable
from typing import Any

from zcnet.bench.meter import CpuWindow
from zcnet.bench.modes import (
    C_SEND_MODES,
    LEASE_SEND_MODES,
    SEND_MODES,
    ZCNET_URING_SEND_MODES,
)
from zcnet.bench.pattern import Source, Verifier
from zcnet.bench.protocol import encode_header, read_result
from zcnet.errors import ModeUnavailable
from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_ZEROCOPY, SOL_UDP, UDP_SEGMENT
from zcnet.lowlevel.errqueue import ZerocopyCompletion, drain_errqueue

__all__ = ["SEND_MODES", "tcp_stream", "udp_stream"]



def _stats_dict(stats: Any) -> dict[str, Any]:
    fields = ("bytes_zerocopy", "bytes_copied", "bytes_plain", "bytes_pending",
              "sends_zerocopy", "sends_plain", "completions", "enobufs", "sends_registered")
    return {f: int(getattr(stats, f, 0)) for f in fields}


class _RawZerocopy:
    """MSG_ZEROCOPY sends with the least Python work: count calls, drain completions."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        self.sock = sock
        self.calls = 0
        self.done = 0
        self.copied = 0
        self.nbytes = 0
        self.enobufs = 0
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLERR)

    def send(self, view: memoryview) -> None:
        off, n = 0, len(view)
        while off < n:
            try:
                k = self.sock.send(view[off:] if off else view, MSG_ZEROCOPY)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.enobufs += 1
                self.reap(wait=True)
                continue
            self.calls += 1
            off += k
            if self.calls & 31 == 0:
                self.reap(wait=False)
        self.nbytes += n

    def reap(self, wait: bool) -> None:
        if wait:
            self.poller.poll(100)
        for ev in drain_errqueue(self.sock):
            if isinstance(ev, ZerocopyCompletion):
                count = ((ev.hi - ev.lo) & 0xFFFFFFFF) + 1
                self.done += count
                if ev.copied:
                    self.copied += count

    def finish(self) -> None:
        while self.done < self.calls:
            self.reap(wait=True)

    def stats(self) -> dict[str, Any]:
        uncopied = self.nbytes * (self.done - self.copied) // self.done if self.done else 0
        return {"bytes_zerocopy": uncopied, "bytes_copied": self.nbytes - uncopied,
                "sends_zerocopy": self.calls, "completions": self.done, "enobufs": self.enobufs}


class _Engine:
    """One send mode on one socket: ``send(view)``, ``finish()``, ``stats()``, ``close()``."""

    def __init__(self, sock: socket.socket, mode: str, zerocopy_threshold: int | None) -> None:
        self.sock = sock
        self.mode = mode
        self.sender: Any = None
        self.raw: _RawZerocopy | None = None
        # zcnet-uring-batch and the lease modes: the BufferPool their leases come from
        self.pool: Any = None
        if mode == "sendall":
            self.send: Callable[[memoryview], object] = sock.sendall
            return
        if mode == "raw-zerocopy":
            try:
                self.raw = _RawZerocopy(sock)
            except OSError as e:
                raise ModeUnavailable(f"SO_ZEROCOPY not available: {e}") from e
            self.send = self.raw.send
            return
        if mode not in ("zcnet", "zcnet-forced", "zcnet-batch", *ZCNET_URING_SEND_MODES,
                        *LEASE_SEND_MODES):
            raise ModeUnavailable(f"unknown send mode {mode!r}")
        try:
            from zcnet.sender import Sender, SendPolicy
        except ImportError as e:
            raise ModeUnavailable(f"zcnet.sender is not available: {e}") from e
        kwargs: dict[str, Any] = {"force_zerocopy": mode == "zcnet-forced"}
        if mode == "zcnet-forced":
            kwargs["zerocopy_threshold"] = 0
        if zerocopy_threshold is not None:
            kwargs["zerocopy_threshold"] = zerocopy_threshold
        kwargs["engine"] = "io_uring" if mode in ZCNET_URING_SEND_MODES else "msg_zerocopy"
        from zcnet.errors import UnsupportedSocketError, ZerocopyUnavailable

        try:
            self.sender = Sender(sock.dup(), SendPolicy(**kwargs))
        except UnsupportedSocketError as e:
            raise ModeUnavailable(f"zcnet.Sender not available for this socket: {e}") from e
        except ZerocopyUnavailable as e:
            raise ModeUnavailable(f"the io_uring send engine is not available: {e}") from e
        if mode == "zcnet-uring-batch" or mode in LEASE_SEND_MODES:
            from zcnet.pool import BufferPool

            self.pool = BufferPool()
        self.send = self.sender.send

    def finish(self) -> None:
        if self.sender is not None:
            self.sender.flush()
        if self.raw is not None:
            self.raw.finish()

    def stats(self) -> dict[str, Any]:
        if self.raw is not None:
            return self.raw.stats()
        if self.sender is None:
            return {}
        return _stats_dict(self.sender.stats)

    def describe(self) -> dict[str, Any]:
        if self.sender is None:
            return {}
        st = self.sender.stats
        return {"tx_mode": str(getattr(st, "mode", "")),
                "fallback_reason": getattr(st, "fallback_reason", None),
                "engine": getattr(st, "engine", "msg_zerocopy"),
                "registration_reason": getattr(st, "registration_reason", None)}

    def leases(self, views: list[memoryview]) -> list[Any]:
        """``views`` copied into pool leases (zcnet-uring-batch, the lease modes), before the
        timed window; a message larger than the pool's largest buffer: ``ModeUnavailable``."""
        largest = self.pool.size_classes[-1]
        out = []
        for view in views:
            if view.nbytes > largest:
                raise ModeUnavailable(f"a {view.nbytes}-byte message does not fit a pool lease "
                                      f"(the pool's buffers go up to {largest} bytes)")
            lease = self.pool.acquire(view.nbytes)
            lease.view[:] = view
            out.append(lease)
        return out

    def lease_plan(self, messages: list[Any]) -> list[Any]:
        """``messages`` as the engine sends them: views as they are, or (with a pool) each
        view, or each group of views, copied into pool leases, the pool's slabs then registered
        on the io_uring engine, as the C reference registers its buffer before it times (not
        at the first send of each slab, inside the timed window)."""
        if self.pool is None:
            return messages
        leased = [self.leases(m) if isinstance(m, list) else self.leases([m])[0]
                  for m in messages]
        if self.mode in ZCNET_URING_SEND_MODES:
            self.sender.register_pool(self.pool)
        return leased

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        if self.pool is not None:
            self.pool.close()


MAX_MESSAGE = 4 * 1024 * 1024
_SOURCES: dict[int, Source] = {}


def _source(verifier: Verifier, size: int) -> Source:
    """The sender's source buffer of ``size`` bytes (built once per worker process)."""
    if size not in _SOURCES:
        _SOURCES.clear()  # one at a time: they can be large
        _SOURCES[size] = Source(verifier, size, MAX_MESSAGE)
    return _SOURCES[size]


def _timed(engine: _Engine, plan: Callable[[int, int], list[Any]],
           send: Callable[[Any], object], warmup: int,
           nbytes: int) -> tuple[CpuWindow, dict[str, Any]]:
    """Send ``warmup`` untimed bytes, then ``nbytes`` inside a CPU window (final flush
    included); returns the window and the engine's counters over the timed bytes only.

    ``plan(start, total)`` lists the messages (views of the source) for stream bytes
    ``[start, start + total)``; it runs before the window starts, so the timed loop is the send
    calls alone, as in the C reference loops (docs/bench.md, 'What the sender rows time')."""
    for message in plan(0, warmup):
        send(message)
    engine.finish()
    before = engine.stats()
    messages = plan(warmup, nbytes)
    window = CpuWindow()
    window.start()
    for message in messages:
        send(message)
    engine.finish()
    window.stop()
    return window, _delta(engine.stats(), before)


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _c_send(cmd: dict[str, Any], sock: socket.socket, transport: str) -> dict[str, Any]:
    """Run the C reference sender on ``sock`` (``cmd["cref"]``: the compiled program)."""
    from zcnet.bench import cref

    program = cmd.get("cref")
    if not program:
        raise ModeUnavailable(f"C reference not available: {cref.build().reason}")
    result = cref.run_sender(str(program), sock, mode=cmd["send_mode"], transport=transport,
                             msg_size=int(cmd["msg_size"]), warmup=int(cmd["warmup"]),
                             nbytes=int(cmd["bytes"]),
                             source_bytes=int(cmd.get("source_bytes", 0)))
    result.update(mode=cmd["send_mode"], msg_size=int(cmd["msg_size"]))
    return result


def tcp_stream(cmd: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    """Connect to ``cmd["addr"]``, stream, and return ``{"sender": ..., "receiver": ...}``."""
    host, port = cmd["addr"]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    msg = int(cmd["msg_size"])
    warmup, nbytes = int(cmd["warmup"]), int(cmd["bytes"])
    header = {"op": "stream", "mode": cmd["recv_mode"], "warmup": warmup, "bytes": nbytes,
              "verify": cmd["verify"], "recv_size": int(cmd.get("recv_size", 256 * 1024)),
              "rcvlowat": int(cmd.get("rcvlowat", 0))}
    source = _source(verifier, int(cmd.get("source_bytes", 0)))
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect((host, int(port)))
        sock.sendall(encode_header(header))
        if cmd["send_mode"] in C_SEND_MODES:
            sender = _c_send(cmd, sock, "tcp")
            if not sender.get("ok"):  # the receiver waits for bytes that will not come
                sock.shutdown(socket.SHUT_WR)
            return {"sender": sender, "receiver": read_result(sock)}
        engine = _Engine(sock, cmd["send_mode"], cmd.get("zerocopy_threshold"))
        try:
            def plan(start: int, total: int) -> list[Any]:
                end = start + total
                return engine.lease_plan([source.window(off, min(msg, end - off))
                                          for off in range(start, end, msg)])

            window, delta = _timed(engine, plan, engine.send, warmup, nbytes)
            sender = {"ok": True, "mode": cmd["send_mode"], "msg_size": msg, "bytes": nbytes,
                      "source_bytes": source.size if source.cold else 0, "cpu": window.cpu,
                      "user": window.user, "sys": window.sys,
                      "wall": window.wall}
            sender.update(delta)
            sender.update(engine.describe())
            receiver = read_result(sock)
        finally:
            engine.close()
    return {"sender": sender, "receiver": receiver}


def udp_stream(cmd: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    """Send datagrams (GSO) toward the ifb sink ``cmd["addr"]``; sender figures only."""
    host, port = cmd["addr"]
    msg, gso = int(cmd["msg_size"]), int(cmd["gso_size"])
    warmup, nbytes = int(cmd["warmup"]), int(cmd["bytes"])
    source = _source(verifier, int(cmd.get("source_bytes", 0)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, int(port)))
        if msg > gso:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, gso)
        if cmd["send_mode"] in C_SEND_MODES:
            sender = _c_send(cmd, sock, "udp")
            sender["gso_size"] = gso
            return {"sender": sender, "receiver": None}
        engine = _Engine(sock, cmd["send_mode"], cmd.get("zerocopy_threshold"))
        if engine.sender is None and engine.raw is None:
            engine.send = _udp_send(sock)
        batched = cmd["send_mode"] in ("zcnet-batch", "zcnet-uring-batch")
        batch = int(cmd.get("batch", 32)) if batched else 0
        try:
            def plan(start: int, total: int) -> list[Any]:
                # whole datagrams (the last one complete too); groups of `batch` for send_batch
                # (pool leases for zcnet-uring-batch and the lease modes)
                offsets = range(start, start + total, msg)
                if not batch:
                    return engine.lease_plan([source.window(off, msg) for off in offsets])
                return engine.lease_plan([[source.window(off, msg) for off in offsets[i:i + batch]]
                                          for i in range(0, len(offsets), batch)])

            send = engine.sender.send_batch if batch else engine.send
            window, delta = _timed(engine, plan, send, warmup, nbytes)
            sent = ((nbytes + msg - 1) // msg) * msg
            sender = {"ok": True, "mode": cmd["send_mode"], "msg_size": msg, "bytes": sent,
                      "gso_size": gso, "batch": batch or None,
                      "source_bytes": source.size if source.cold else 0,
                      "cpu": window.cpu, "user": window.user,
                      "sys": window.sys, "wall": window.wall}
            sender.update(delta)
            sender.update(engine.describe())
        finally:
            engine.close()
    return {"sender": sender, "receiver": None}


def _udp_send(sock: socket.socket) -> Callable[[memoryview], object]:
    def send(view: memoryview) -> None:
        while True:
            try:
                sock.send(view)
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise

    return send
