"""The ``rpc`` experiment: many connections, small request/response, zero-copy receive on/off.

Theory of operation: a server process accepts ``connections`` (default 100) TCP connections and
answers each ``size``-byte request (default 4 KB) with a ``size``-byte response, driven by one
level-triggered epoll loop; a client process keeps one request outstanding per connection
(closed loop) and measures latency per request. The server receives either with
``recv_into`` (off) or with one zcnet ``Receiver`` per connection: mapping every request (on,
``rx_policy`` "map") or with the default policy, which copies requests below
``min_map_bytes`` (on-default, ``rx_policy`` "default"). The listener sets
``TCP_MAXSEG`` 4108 (MSS 4096, docs/ARCHITECTURE.md, 'Receive: loopback') so a 4 KB request is one
page-aligned segment, and the client sends with zcnet's ``Sender`` forced to MSG_ZEROCOPY in *both*
modes (loopback
pages are mappable only then), or ``sendall`` if that module is missing. A client sender with
completions pending makes its socket report EPOLLERR, so the client reaps them on that event
(msg_zerocopy.rst). Phases: every connection makes ``warmup`` requests, then (a barrier) the
timed ``requests``; each side's CPU window covers the timed phase only (the server starts it
when the first timed request arrives, i.e. after all warm-up requests were answered).
Requests and responses are pattern streams per connection; verification as elsewhere: full on
verification repetitions, first/last byte on timed ones. The server's receive paths are
:data:`zcnet.bench.modes.RPC_MODES`; the plan and the loop are :mod:`zcnet.bench.driver`'s
(the workload: :class:`_RpcWorkload`, a fresh server per repetition). ``rpc --mmap-churn``
(:mod:`zcnet.bench.rpcchurn`) runs the same server with ``rx_policy`` "fresh" (a new window per
receive, :mod:`zcnet.bench.freshwindow`) and a churn thread (:mod:`zcnet.bench.rpcextras`); the
server also reports its receiving thread's CPU (``thread_cpu``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from zcnet.bench.common import Progress, experiment_result, group_summary
from zcnet.bench.driver import Config, Item, drive, first_unavailable, plan_runs, verified
from zcnet.bench.env import Environment, environment
from zcnet.bench.meter import CpuWindow
from zcnet.bench.modes import RPC_MODES
from zcnet.bench.pattern import Verifier
from zcnet.bench.peers import client_worker
from zcnet.bench.results import Experiment, RpcRun
from zcnet.bench.rpcextras import ServerExtras
from zcnet.bench.server import make_listener
from zcnet.bench.workers import Worker, spawn
from zcnet.errors import TimeoutExpired

__all__ = ["RpcParams", "plan_count", "rpc_client", "rpc_mode", "rpc_server",
           "run_rpc", "serve_once"]

MSS_4K_LISTENER = 4096 + 12
RESPONSE_BASE = 7919           # responses use the pattern from another offset than requests
METRICS = ("requests_per_s", "server_cpu_us_per_req", "client_cpu_us_per_req",
           "latency_p50_us", "latency_p99_us", "mapped_pct")


@dataclass
class RpcParams:
    """Parameters of the rpc experiment."""

    connections: int = 100
    size: int = 4096
    requests: int = 200
    warmup: int = 10
    reps: int = 3
    verify: str = "sample"
    use_netns: bool = True


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class _ServerConn:
    __slots__ = ("buf", "got", "rx", "rx_off", "sock", "tx_off", "view")

    def __init__(self, sock: socket.socket, size: int, rx: Any) -> None:
        self.sock = sock
        self.rx = rx
        self.buf = bytearray(size if rx is None else 0)  # recv_into's target
        self.view = memoryview(self.buf)
        self.got = 0
        self.rx_off = 0
        self.tx_off = 0


def rpc_server(pipe: Connection, host: str, cfg: dict[str, Any]) -> None:
    """Worker body: accept, answer requests, report CPU and mapping figures on ``pipe``."""
    conns_n, size = int(cfg["connections"]), int(cfg["size"])
    warm_total = conns_n * int(cfg["warmup"])
    total = warm_total + conns_n * int(cfg["requests"])
    full = bool(cfg["full"])
    verifier = Verifier(span=max(size, 4096))
    make_rx: Callable[[socket.socket], Any] | None = None
    if cfg["zerocopy"] and cfg["rx_policy"] == "fresh":  # rpc --mmap-churn's naive variant
        from zcnet.bench.freshwindow import FreshWindowReceiver

        make_rx = FreshWindowReceiver
    elif cfg["zerocopy"]:
        from zcnet.receiver import Receiver, RecvPolicy

        pages = max(1, -(-size // 4096))
        # "map": map the requests even when smaller than the default threshold (16 KiB), the
        # kernel's cost of mapping them; "default": the policy a user gets (it copies requests
        # below min_map_bytes, into a reused copy buffer)
        policy = RecvPolicy() if cfg["rx_policy"] == "default" else RecvPolicy(
            window_bytes=4 * pages * 4096, max_windows=4, min_map_bytes=min(4096, pages * 4096))

        def make_rx(sock: socket.socket) -> Any:
            return Receiver(sock, policy)
    listener = make_listener(host, 0, mss=MSS_4K_LISTENER, backlog=conns_n)
    pipe.send(listener.getsockname()[:2])
    window = CpuWindow()
    ep = select.epoll()
    conns: dict[int, _ServerConn] = {}
    extras: ServerExtras | None = None
    thread0 = 0.0
    try:
        for _ in range(conns_n):
            sock, _peer = listener.accept()
            rx = make_rx(sock) if make_rx is not None else None
            conns[sock.fileno()] = _ServerConn(sock, size, rx)
            ep.register(sock.fileno(), select.EPOLLIN)
        extras = ServerExtras(cfg)  # rpc --mmap-churn: the churn thread, the lock profile
        extras.start()

        def check(offset: int, data: memoryview, done: int) -> None:
            if full or done < warm_total:
                with window.exclude():
                    verifier.verify(offset, data)
            else:
                verifier.spot(offset, data)

        done = 0
        while done < total:
            for fd, _ev in ep.poll():
                c = conns[fd]
                while True:
                    if c.rx is not None:  # the request is used where it was mapped
                        try:
                            chunk = c.rx.recv(size - c.got, timeout=0)
                        except TimeoutExpired:
                            break
                        with chunk:
                            n = len(chunk)
                            if n:
                                check(c.rx_off, chunk.view, done)
                    else:
                        n = c.sock.recv_into(c.view[c.got:], size - c.got)
                        if n:
                            check(c.rx_off, c.view[c.got:c.got + n], done)
                    if n == 0:
                        raise ConnectionError("client closed early")
                    c.rx_off += n
                    c.got += n
                    if c.got < size:
                        if c.rx is not None and c.rx.buffered:
                            continue
                        break
                    c.got = 0
                    if done == warm_total:
                        window.start()
                        thread0 = time.thread_time()
                    c.sock.sendall(verifier.window(RESPONSE_BASE + c.tx_off, size))
                    c.tx_off += size
                    done += 1
                    if c.rx is None or not c.rx.buffered:
                        break
        window.stop()
        thread_cpu = max(0.0, time.thread_time() - thread0 - window.excluded)
        mapped = copied = 0
        for c in conns.values():
            if c.rx is not None:
                st = c.rx.stats
                mapped += st.bytes_mapped
                copied += st.bytes_copied
        pipe.send({"ok": True, "cpu": window.cpu, "wall": window.wall, "thread_cpu": thread_cpu,
                   **extras.stop(),
                   "requests": total - warm_total, "verify_cpu": window.excluded,
                   "bytes_mapped": mapped, "bytes_copied": copied,
                   "bytes_plain": sum(c.rx_off for c in conns.values()) if not cfg["zerocopy"]
                   else 0})
    finally:
        if extras is not None:
            extras.stop()
        for c in conns.values():
            with contextlib.suppress(Exception):
                (c.rx or c.sock).close()
        ep.close()
        listener.close()
    pipe.recv()  # wait to be stopped


class _ClientConn:
    __slots__ = ("buf", "count", "got", "rx_off", "sender", "sock", "t0", "tx_off", "view")

    def __init__(self, sock: socket.socket, size: int, sender: Any) -> None:
        self.sock = sock
        self.sender = sender
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.got = 0
        self.count = 0
        self.rx_off = 0
        self.tx_off = 0
        self.t0 = 0


def rpc_client(cmd: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    """Client command: open the connections, run warm-up and timed requests, report."""
    host, port = cmd["addr"]
    conns_n, size = int(cmd["connections"]), int(cmd["size"])
    warm, timed = int(cmd["warmup"]), int(cmd["requests"])
    full = bool(cmd["full"])
    verifier = Verifier(span=max(size, 4096))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    notes: list[str] = []
    try:
        from zcnet.sender import Sender, SendPolicy
        policy: Any = SendPolicy(force_zerocopy=True, zerocopy_threshold=0)
    except ImportError as e:
        Sender = None  # type: ignore[assignment,misc]
        notes.append(f"zcnet.sender missing ({e}): requests sent with sendall")
    conns: dict[int, _ClientConn] = {}
    ep = select.epoll()
    window = CpuWindow()
    latencies: list[int] = []
    try:
        for _ in range(conns_n):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.connect((host, int(port)))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sender = Sender(s.dup(), policy) if Sender is not None else None
            conns[s.fileno()] = _ClientConn(s, size, sender)
            ep.register(s.fileno(), select.EPOLLIN)

        def send_request(c: _ClientConn) -> None:
            data = verifier.window(c.tx_off, size)
            c.t0 = time.perf_counter_ns()
            if c.sender is not None:
                c.sender.send(data)
            else:
                c.sock.sendall(data)
            c.tx_off += size

        def phase(limit: int, timed_phase: bool) -> None:
            pending = 0
            for c in conns.values():
                if c.count < limit:
                    send_request(c)
                    pending += 1
            while pending:
                for fd, ev in ep.poll():
                    c = conns[fd]
                    if c.sender is not None and ev & select.EPOLLERR:
                        c.sender.poll()
                    if not ev & select.EPOLLIN or c.count >= limit:
                        continue
                    n = c.sock.recv_into(c.view[c.got:], size - c.got)
                    if n == 0:
                        raise ConnectionError("server closed early")
                    data = c.view[c.got:c.got + n]
                    if full or not timed_phase:
                        with window.exclude():
                            verifier.verify(RESPONSE_BASE + c.rx_off, data)
                    else:
                        verifier.spot(RESPONSE_BASE + c.rx_off, data)
                    c.rx_off += n
                    c.got += n
                    if c.got < size:
                        continue
                    c.got = 0
                    c.count += 1
                    if timed_phase:
                        latencies.append(time.perf_counter_ns() - c.t0)
                    if c.count < limit:
                        send_request(c)
                    else:
                        pending -= 1

        phase(warm, False)
        window.start()
        phase(warm + timed, True)
        for c in conns.values():
            if c.sender is not None:
                c.sender.flush()
        window.stop()
    finally:
        for c in conns.values():
            with contextlib.suppress(Exception):
                if c.sender is not None:
                    c.sender.close()
                c.sock.close()
        ep.close()
    latencies.sort()
    p50, p99 = _percentile(latencies, 50), _percentile(latencies, 99)
    return {"ok": True, "cpu": window.cpu, "wall": window.wall, "requests": conns_n * timed,
            "verify_cpu": window.excluded, "notes": notes,
            "latency_p50_us": None if p50 is None else p50 / 1000,
            "latency_p99_us": None if p99 is None else p99 / 1000}


def _config(mode: str) -> Config:
    zerocopy, policy = RPC_MODES[mode]
    return {"zerocopy_receive": zerocopy, "rx_policy": policy}


def rpc_mode(config: Mapping[str, Any]) -> str:
    """The name in :data:`zcnet.bench.modes.RPC_MODES` of a configuration, an item or a
    run (which carry ``zerocopy_receive`` and ``rx_policy``)."""
    return next(m for m, (zc, policy) in RPC_MODES.items()
                if (zc, policy) == (config["zerocopy_receive"], config["rx_policy"]))


def _plan(p: RpcParams) -> list[Item]:
    return plan_runs([[[_config(m) for m in RPC_MODES]]], reps=p.reps, verify=p.verify)


def plan_count(p: RpcParams) -> int:
    """How many runs :func:`run_rpc` makes."""
    return len(_plan(p))


def _record(item: Item, p: RpcParams, client: dict[str, Any],
            server: dict[str, Any]) -> RpcRun:
    ok = bool(client.get("ok") and server.get("ok"))
    m: dict[str, float | None] = {k: None for k in METRICS}
    if ok:
        reqs = int(client["requests"])
        m["requests_per_s"] = reqs / client["wall"] if client["wall"] > 0 else None
        m["client_cpu_us_per_req"] = client["cpu"] / reqs * 1e6
        m["server_cpu_us_per_req"] = server["cpu"] / int(server["requests"]) * 1e6
        m["latency_p50_us"] = client["latency_p50_us"]
        m["latency_p99_us"] = client["latency_p99_us"]
        total = server["bytes_mapped"] + server["bytes_copied"] + server["bytes_plain"]
        m["mapped_pct"] = 100.0 * server["bytes_mapped"] / total if total else None
    return {"zerocopy_receive": item["zerocopy_receive"], "rx_policy": item["rx_policy"],
            "rep": item["rep"], "role": item["role"],
            "verified": verified(p.verify, item["role"]), "ok": ok,
            "error": None if ok else str(client.get("error") or server.get("error")
                                         or "failed"),
            "unavailable": None if ok else first_unavailable(client, server),
            "client": client, "server": server, "metrics": m}


class _RpcWorkload:
    """One rpc repetition: a fresh server worker per repetition, the client worker's
    connections against it."""

    mode_kind = "rpc receive"

    def __init__(self, p: RpcParams, env: Environment, client: Worker,
                 notes: list[str]) -> None:
        self.p, self.env, self.client, self.notes = p, env, client, notes

    def mode(self, item: Mapping[str, Any]) -> str:
        return rpc_mode(item)

    def label(self, item: Item) -> str:
        return f"rpc zero-copy rx {item['rx_policy'] or 'off'}"

    def run(self, item: Item) -> RpcRun:
        p = self.p
        cfg = {"connections": p.connections, "size": p.size, "warmup": p.warmup,
               "requests": p.requests, "zerocopy": item["zerocopy_receive"],
               "rx_policy": item["rx_policy"], "full": verified(p.verify, item["role"]) == "full"}
        res, srv = serve_once(self.env, self.client, cfg, self.notes, server_timeout=60)
        return _record(item, p, res, srv)

    def profile_pids(self, item: Item) -> dict[str, int]:
        return {}  # rpc has no --profile


def serve_once(env: Environment, client: Worker, cfg: dict[str, Any], notes: list[str], *,
               server_timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One repetition: a fresh :func:`rpc_server` with ``cfg`` in the namespace, the client
    worker's requests against it; the client's and the server's results (the server's waited
    for up to ``server_timeout`` s). The client's notes are added to ``notes`` once each."""
    server: Worker = spawn(rpc_server, env.ns_name, env.host, cfg)
    try:
        addr = tuple(server.recv(60))
        res = client.call(dict(cfg, kind="rpc", addr=addr))
        srv = server.recv(server_timeout) if res.get("ok") else {"ok": False}
    finally:
        server.stop(2.0)
    for n in res.get("notes") or []:
        if n not in notes:
            notes.append(n)
    return res, srv


def run_rpc(p: RpcParams, progress: Progress) -> Experiment:
    """Run the rpc experiment; the JSON-ready result (see docs/bench.md)."""
    with environment(use_netns=p.use_netns) as env:
        notes = list(env.notes)
        notes.append(f"listener TCP_MAXSEG {MSS_4K_LISTENER} (MSS 4096); client sends with "
                     "zcnet Sender forced to MSG_ZEROCOPY in both modes")
        with spawn(client_worker, env.ns_name) as client:
            out = drive(_plan(p), _RpcWorkload(p, env, client, notes), progress)
        notes += out.notes()
        keys = ("zerocopy_receive", "rx_policy")
        summary = group_summary(out.runs, keys, METRICS)
        summary += out.unavailable_rows([_config(m) for m in RPC_MODES], summary, keys)
        return experiment_result("rpc", status=out.status(), environment=env.describe(),
                                 parameters=asdict(p), runs=out.runs, summary=summary,
                                 notes=notes)
