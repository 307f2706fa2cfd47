"""The ``memory`` experiment: kernel socket memory while streaming, copy vs zero-copy sends.

Theory of operation: a receiver accepts one connection and does not read for ``stall``
seconds, so the sender's data piles up in the kernel (send queue and the receiver's queue);
then it reads and verifies every byte. Meanwhile a sampler thread in the sender process reads,
every ``interval``, the kernel's own figures through :func:`zcnet.lowlevel.meminfo.
kernel_memory_snapshot`: ``SO_MEMINFO`` of the sending socket (wmem_queued, fwd_alloc, optmem),
``/proc/net/sockstat`` "TCP ... mem" (the protocol's page charge, kernel-wide, so other
traffic on the host shows up too) and the memory cgroup's socket charge where exposed
(cgroup v2 ``memory.stat`` ``sock``; v1 ``memory.kmem.tcp.usage_in_bytes``, charged only once
a TCP limit is set). Copy sends are compared with MSG_ZEROCOPY sends (zcnet ``Sender`` forced):
since Linux 5.17 the pinned user pages of a pure zero-copy skb are not charged to the socket
again, so the protocol charge rises far less (docs/ARCHITECTURE.md, 'Memory: what the kernel
charges'). Peaks are taken over the stall (samples tagged ``"phase": "stall"``), sockstat and cgroup
relative to a baseline read
before the connection was opened; the sockstat peak while the receiver drains is reported
apart (over loopback the receiver copies zero-copy frags then, and that charge is its own).
The receiver samples its own ``SO_MEMINFO`` rmem_alloc (the receive queue's charge) while it
stalls.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

from zcnet.bench.common import Progress, experiment_result, group_summary
from zcnet.bench.driver import Item, drive, plan_runs
from zcnet.bench.env import Environment, environment
from zcnet.bench.modes import MEMORY_SEND_MODES
from zcnet.bench.pattern import Verifier
from zcnet.bench.peers import client_worker
from zcnet.bench.results import Experiment, MemoryRun
from zcnet.bench.server import make_listener
from zcnet.bench.workers import Worker, spawn

__all__ = ["MemoryParams", "memory_receiver", "memory_sender", "plan_count", "run_memory"]

MB = 1e6
METRICS = ("sockstat_tcp_mem_mb", "cgroup_sock_mb", "wmem_queued_mb", "fwd_alloc_mb",
           "optmem_mb", "receiver_rmem_alloc_mb", "drain_sockstat_tcp_mem_mb",
           "zcnet_pinned_mb", "zcnet_mapped_mb", "samples")


@dataclass
class MemoryParams:
    """Parameters of the memory experiment."""

    duration: float = 3.0          # seconds the receiver stalls (sampling runs throughout)
    interval: float = 0.05
    nbytes: int = 48 * 1024 * 1024
    msg_size: int = 256 * 1024
    sndbuf: int = 4 * 1024 * 1024  # the kernel doubles it: an 8 MB send buffer
    reps: int = 1
    use_netns: bool = True


def memory_receiver(pipe: Connection, host: str, stall: float, nbytes: int,
                    interval: float, zerocopy: bool = False) -> None:
    """Worker body: accept one connection, stall (sampling its queue), read and verify.

    With ``zerocopy`` the drain uses a zcnet ``Receiver`` whose mapped chunks are charged to a
    zcnet account (``recv_accounted``); the account's peak "mapped" bytes are reported.
    """
    from zcnet.lowlevel.meminfo import so_meminfo

    verifier = Verifier()
    rmem_peak: int | None = None
    with make_listener(host, 0) as listener:
        pipe.send(listener.getsockname()[:2])
        conn, _ = listener.accept()
        with conn:
            end = time.monotonic() + stall
            while time.monotonic() < end:
                with contextlib.suppress(OSError):
                    rmem = so_meminfo(conn).rmem_alloc
                    rmem_peak = rmem if rmem_peak is None else max(rmem_peak, rmem)
                time.sleep(min(interval, max(0.0, end - time.monotonic())))
            if zerocopy:
                off, mapped_peak = _drain_accounted(conn.dup(), nbytes, verifier)
            else:
                off, mapped_peak = _drain_copy(conn, nbytes, verifier), 0
            pipe.send({"ok": True, "bytes": off, "verified": "full", "rmem_alloc_peak": rmem_peak,
                       "zcnet_mapped_peak": mapped_peak})
    pipe.recv()


def _drain_copy(conn: socket.socket, nbytes: int, verifier: Verifier) -> int:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    off = 0
    while off < nbytes:
        n = conn.recv_into(view, min(len(buf), nbytes - off))
        if n == 0:
            raise ConnectionError(f"EOF after {off} of {nbytes} bytes")
        verifier.verify(off, view[:n])
        off += n
    return off


def _drain_accounted(conn: socket.socket, nbytes: int, verifier: Verifier) -> tuple[int, int]:
    """Read with a zcnet Receiver, mapped chunks charged to an account; (bytes, peak mapped)."""
    from zcnet.accounting import MAPPED, Account, recv_accounted
    from zcnet.receiver import Receiver

    account = Account("bench-receiver")
    peak = off = 0
    with Receiver(conn) as rx:
        while off < nbytes:
            got = recv_accounted(rx, account, min(1 << 20, nbytes - off), timeout=60)
            with got:
                n = len(got)
                if n == 0:
                    raise ConnectionError(f"EOF after {off} of {nbytes} bytes")
                peak = max(peak, account.usage(MAPPED))
                verifier.verify(off, got.view)
            off += n
    if account.usage():
        raise AssertionError(f"receiver account not back to zero: {account.snapshot()}")
    return off, peak


def _sample(sock: socket.socket, t0: float) -> dict[str, Any]:
    from zcnet.lowlevel.meminfo import kernel_memory_snapshot

    snap = kernel_memory_snapshot(sock)
    mi, ss, cg = snap.meminfo, snap.sockstat, snap.cgroup
    return {
        "t": round(time.monotonic() - t0, 4),
        "wmem_queued": mi.wmem_queued if mi else None,
        "wmem_alloc": mi.wmem_alloc if mi else None,
        "fwd_alloc": mi.fwd_alloc if mi else None,
        "optmem": mi.optmem if mi else None,
        "sndbuf": mi.sndbuf if mi else None,
        "sockstat_tcp_mem": ss.tcp_mem_bytes if ss else None,
        "cgroup_sock": cg.sock_bytes if cg and cg.active else None,
        "reasons": dict(snap.reasons),
    }


def memory_sender(cmd: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    """Client command: stream ``bytes`` while a thread samples kernel memory figures."""
    host, port = cmd["addr"]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    nbytes, msg, interval = int(cmd["bytes"]), int(cmd["msg_size"]), float(cmd["interval"])
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    t0 = time.monotonic()
    from zcnet.accounting import PINNED, Account

    account = Account("bench-sender")  # zcnet's own ledger, sampled beside the kernel's
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(cmd["sndbuf"]))
        baseline = _sample(sock, t0)
        sock.connect((host, int(port)))
        # the receiver stalls from accept (~ now); keep a margin before it starts reading
        stall_end = time.monotonic() - t0 + float(cmd["stall"]) - interval

        def sampler() -> None:
            while not stop.is_set():
                s = _sample(sock, t0)
                s["zcnet_pinned"] = account.usage(PINNED)
                s["phase"] = "stall" if s["t"] < stall_end else "drain"
                samples.append(s)
                stop.wait(interval)

        thread = threading.Thread(target=sampler, name="zcnet-bench-sampler", daemon=True)
        sender: Any = None
        if cmd["mode"] == "zerocopy":
            from zcnet.accounting import send_accounted
            from zcnet.sender import Sender, SendPolicy

            sender = Sender(sock.dup(), SendPolicy(force_zerocopy=True, zerocopy_threshold=0))
        thread.start()
        try:
            off = 0
            while off < nbytes:
                n = min(msg, nbytes - off)
                if sender is not None:  # pinned bytes charged until their completion
                    send_accounted(sender, verifier.window(off, n), account)
                else:
                    sock.sendall(verifier.window(off, n))
                off += n
            if sender is not None:
                sender.flush()
        finally:
            stop.set()
            thread.join()
            stats = None
            if sender is not None:
                st = sender.stats
                stats = {"bytes_zerocopy": st.bytes_zerocopy, "bytes_copied": st.bytes_copied,
                         "bytes_plain": st.bytes_plain, "mode": str(st.mode),
                         "fallback_reason": st.fallback_reason}
                with contextlib.suppress(Exception):
                    sender.close()
    return {"ok": True, "bytes": nbytes, "baseline": baseline, "samples": samples,
            "sender_stats": stats}


def _peak(samples: list[dict[str, Any]], key: str, base: int | None) -> float | None:
    vals: list[int] = [int(s[key]) for s in samples if s.get(key) is not None]
    if not vals:
        return None
    return (max(vals) - (base or 0)) / MB


def _plan(p: MemoryParams) -> list[Item]:
    # every repetition verifies every byte (the receiver drains after the stall)
    return plan_runs([[[{"send_mode": m} for m in MEMORY_SEND_MODES]]], reps=p.reps,
                     verify="all")


def plan_count(p: MemoryParams) -> int:
    """How many runs :func:`run_memory` makes."""
    return len(_plan(p))


def _record(item: Item, snd: dict[str, Any], rcv: dict[str, Any]) -> MemoryRun:
    run: dict[str, Any] = dict(item)
    ok = bool(snd.get("ok") and rcv.get("ok"))
    run["ok"] = ok
    run["verified"] = "full" if ok else None
    run["error"] = None if ok else (snd.get("error") or rcv.get("error") or "failed")
    m: dict[str, float | None] = {k: None for k in METRICS}
    if ok:
        samples, base = snd["samples"], snd["baseline"]
        stall = [s for s in samples if s["phase"] == "stall"]
        drain = [s for s in samples if s["phase"] == "drain"]
        m["sockstat_tcp_mem_mb"] = _peak(stall, "sockstat_tcp_mem", base["sockstat_tcp_mem"])
        m["drain_sockstat_tcp_mem_mb"] = _peak(drain, "sockstat_tcp_mem",
                                               base["sockstat_tcp_mem"])
        m["cgroup_sock_mb"] = _peak(stall, "cgroup_sock", base["cgroup_sock"])
        m["wmem_queued_mb"] = _peak(stall, "wmem_queued", None)
        m["fwd_alloc_mb"] = _peak(stall, "fwd_alloc", None)
        m["optmem_mb"] = _peak(stall, "optmem", None)
        m["zcnet_pinned_mb"] = _peak(samples, "zcnet_pinned", None)
        m["zcnet_mapped_mb"] = float(rcv.get("zcnet_mapped_peak") or 0) / MB
        m["samples"] = float(len(samples))
        peak = rcv.get("rmem_alloc_peak")
        m["receiver_rmem_alloc_mb"] = None if peak is None else peak / MB
        run["reasons"] = samples[-1]["reasons"] if samples else base["reasons"]
        run["sender_stats"] = snd["sender_stats"]
        run["baseline"] = base
        run["samples"] = [{k: v for k, v in s.items() if k != "reasons"} for s in samples]
    run["metrics"] = m
    return cast(MemoryRun, run)  # built key by key: the keys MemoryRun lists


class _MemoryWorkload:
    """One memory repetition: a fresh stalled receiver, the client worker's sender against it."""

    mode_kind = "send"

    def __init__(self, p: MemoryParams, env: Environment, client: Worker) -> None:
        self.p, self.env, self.client = p, env, client

    def mode(self, item: Mapping[str, Any]) -> str:
        return str(item["send_mode"])

    def label(self, item: Item) -> str:
        return f"memory {item['send_mode']}"

    def run(self, item: Item) -> MemoryRun:
        p = self.p
        receiver: Worker = spawn(memory_receiver, self.env.ns_name, self.env.host, p.duration,
                                 p.nbytes, p.interval, item["send_mode"] == "zerocopy")
        try:
            addr = tuple(receiver.recv(60))
            snd = self.client.call({"kind": "memory", "addr": addr, "mode": item["send_mode"],
                                    "bytes": p.nbytes, "msg_size": p.msg_size,
                                    "stall": p.duration, "interval": p.interval,
                                    "sndbuf": p.sndbuf})
            rcv = receiver.recv(60) if snd.get("ok") else {"ok": False}
        finally:
            receiver.stop(2.0)
        return _record(item, snd, rcv)

    def profile_pids(self, item: Item) -> dict[str, int]:
        return {}  # memory has no --profile


def run_memory(p: MemoryParams, progress: Progress) -> Experiment:
    """Run the memory experiment; the JSON-ready result (see docs/bench.md)."""
    with environment(use_netns=p.use_netns) as env:
        notes = list(env.notes)
        notes.append("sockstat TCP mem is kernel-wide: other traffic on this host adds noise")
        with spawn(client_worker, env.ns_name) as client:
            out = drive(_plan(p), _MemoryWorkload(p, env, client), progress)
        runs = out.runs
        reasons = next((r.get("reasons") for r in runs if r.get("reasons")), None)
        for key, why in (reasons or {}).items():
            notes.append(f"{key}: {why}")
        summary = group_summary(runs, ("send_mode",), METRICS)
        return experiment_result("memory", status=out.status(), environment=env.describe(),
                                 parameters=asdict(p), runs=runs, summary=summary, notes=notes)
