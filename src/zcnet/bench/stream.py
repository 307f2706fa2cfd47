"""The ``stream`` experiment: netperf TCP_STREAM style cost per message size, copy vs zero-copy.

Theory of operation: reproduces the table of the MSG_ZEROCOPY paper / netdev 2.1 talk
(Documentation/networking/msg_zerocopy.rst): for each message size, the sender's and the
receiver's CPU seconds per GB and the throughput, with plain ``sendall`` against zcnet's
``Sender``, and the zc/std ratio. TCP runs over the namespace's loopback (IPv6, MSS 15 pages),
where the kernel always copies zero-copy frags (so it measures what the fallback costs); UDP
with ``UDP_SEGMENT`` toward the ``ifb`` sink measures the true transmit cost, since nothing is
delivered there (sender only); there ``zcnet-batch`` hands datagrams to ``Sender.send_batch``
(``sendmmsg``) ``batch`` at a time (left out of TCP, where it would be ``zcnet``).
``--connect HOST:PORT`` runs the TCP part against a remote
``zcnet serve``. ``c-copy``, ``c-zc`` and, asked for, ``c-uring``, ``c-uring-fixed``,
``c-uring-fixed-linked``, ``c-uring-single`` and ``c-uring-fixed-single`` (io_uring SEND_ZC)
are the C reference senders (:mod:`zcnet.bench.cref`), run in the same repetitions;
``zcnet-leases`` and ``zcnet-uring-leases``, asked for, send one pool lease per message on TCP
and UDP;
every other mode's summary entry names its C reference (``c-copy`` for copying modes, ``c-zc``
for zero-copy ones, by what the sender did, or what :data:`C_REFERENCES` says) and gives
``sender_cpu_vs_c_pct``, and ``sender_cpu_vs_c`` for every C reference that ran. A mode that
cannot run here (``ModeUnavailable``, or a C program saying ``unavailable``) is skipped for
the rest of the experiment and its rows say why. With ``profile`` one more repetition per
mode, at one message size per transport, runs under perf (:mod:`zcnet.bench.profile`).
Repetitions alternate the order of the modes; with ``verify="sample"`` one extra untimed
repetition per configuration checks every byte and the timed ones spot-check each chunk.
The plan and the loop are :mod:`zcnet.bench.driver`'s; this module is the workload
(:class:`_StreamWorkload`) and what the summary says about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from zcnet.bench import cref
from zcnet.bench.common import Progress, experiment_result, gbit_per_s, group_summary, s_per_gb
from zcnet.bench.driver import (
    Config,
    Item,
    drive,
    first_unavailable,
    plan_runs,
    profile_plan,
    verified,
)
from zcnet.bench.env import Environment, environment
from zcnet.bench.modes import (
    C_SEND_MODES,
    DEFAULT_C_SEND_MODES,
    LEASE_SEND_MODES,
    UDP_ONLY_SEND_MODES,
)
from zcnet.bench.peers import client_worker, server_worker
from zcnet.bench.results import Experiment, StreamRun
from zcnet.bench.workers import Worker, spawn

__all__ = ["C_REFERENCES", "DEFAULT_SIZES", "StreamParams", "c_reference_for",
           "c_references_for", "plan_count", "run_stream"]

KiB = 1024
DEFAULT_SIZES = (4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1024 * KiB)
UDP_GSO_SIZE = 1472          # one Ethernet-MTU datagram payload (IPv4)
UDP_MAX_SEGMENTS = 44        # 44 * 1472 = 64768 bytes: the "64 KB" GSO send
SINK_PORT = 9                # discard; the ifb drops everything anyway

METRICS = ("sender_cpu_s_per_gb", "receiver_cpu_s_per_gb", "throughput_gbit_s",
           "sender_uncopied_pct", "sender_sys_s_per_gb", "receiver_sys_s_per_gb")


@dataclass
class StreamParams:
    """Parameters of the stream experiment (all recorded in the JSON report)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    nbytes: int = 512 * 1024 * 1024
    warmup: int = 32 * 1024 * 1024
    reps: int = 3
    send_modes: tuple[str, ...] = ("sendall", "zcnet", "zcnet-forced", "zcnet-batch",
                                   *DEFAULT_C_SEND_MODES)
    transports: tuple[str, ...] = ("tcp", "udp")
    recv_mode: str = "recv_into"
    recv_size: int = 256 * KiB
    source_bytes: int = 256 * 1024 * 1024
    verify: str = "sample"
    connect: tuple[str, int] | None = None
    use_netns: bool = True
    udp_sizes: tuple[int, ...] = field(default=())
    batch: int = 32
    profile: bool = False
    profile_size: int = 64 * KiB

    def modes_for(self, transport: str, c_ok: bool = True) -> tuple[str, ...]:
        """The send modes that run on ``transport`` (UDP-only modes are left out of TCP; the
        C modes without ``c_ok``)."""
        modes = self.send_modes if transport == "udp" else tuple(
            m for m in self.send_modes if m not in UDP_ONLY_SEND_MODES)
        return modes if c_ok else tuple(m for m in modes if m not in C_SEND_MODES)

    def profile_sizes(self, transport: str) -> int:
        """The message size profiled on ``transport``: the one closest to ``profile_size``."""
        sizes = list(self.sizes) if transport == "tcp" else self.udp_message_sizes()
        return min(sizes, key=lambda s: (abs(s - self.profile_size), -s))

    def udp_message_sizes(self) -> list[int]:
        """UDP send sizes: the TCP sizes that fit one GSO send, the largest as 64768 bytes."""
        cap = UDP_GSO_SIZE * UDP_MAX_SEGMENTS
        if self.udp_sizes:
            return [min(s, cap) for s in self.udp_sizes]
        out = sorted({min(s, cap) for s in self.sizes if s <= 64 * KiB})
        return out or [cap]


def _c_build(p: StreamParams) -> cref.CBuild | None:
    """The compiled C senders (``None`` when no C mode was asked for)."""
    return cref.build() if any(m in C_SEND_MODES for m in p.send_modes) else None


def _configs(p: StreamParams, transports: list[str],
             c_ok: bool) -> list[list[list[Config]]]:
    """Per transport, per message size, the configuration of each send mode."""
    return [[[{"transport": t, "msg_size": size, "send_mode": mode}
              for mode in p.modes_for(t, c_ok)]
             for size in (p.sizes if t == "tcp" else p.udp_message_sizes())]
            for t in transports]


def _plan(p: StreamParams, transports: list[str], c_ok: bool) -> tuple[list[Item], str | None]:
    """Every repetition, and why there is no profile (``None``: perf records, or not asked)."""
    profiled, why = profile_plan(p.profile, (
        {"transport": t, "msg_size": p.profile_sizes(t), "send_mode": mode}
        for t in transports for mode in p.modes_for(t, c_ok)))
    return plan_runs(_configs(p, transports, c_ok), reps=p.reps, verify=p.verify,
                     profile=profiled), why


def _transports(p: StreamParams, env: Environment | None) -> list[str]:
    if p.connect is not None:
        return [t for t in p.transports if t == "tcp"]
    return [t for t in p.transports if t == "tcp" or (env is not None and env.ifb_sink)]


def plan_count(p: StreamParams) -> int:
    """How many runs :func:`run_stream` will make (for a progress bar; UDP assumed possible)."""
    transports = [t for t in p.transports if p.connect is None or t == "tcp"]
    built = _c_build(p)
    return len(_plan(p, transports, built is not None and built.available)[0])


def _run_record(item: Item, p: StreamParams, res: dict[str, Any]) -> StreamRun:
    """The run record of one repetition from the peers' answers."""
    tcp = item["transport"] == "tcp"
    sender, receiver = res.get("sender"), res.get("receiver")
    ok = bool(sender and sender.get("ok")) and (not tcp or bool(receiver and receiver.get("ok")))
    unavailable = None if ok else first_unavailable(res, sender)
    if ok:
        error = None
    elif unavailable is not None:  # the receiver only saw no bytes come
        error = str(res.get("error") or (sender or {}).get("error")
                    or f"not available: {unavailable}")
    else:
        error = str(res.get("error") or (receiver or {}).get("error")
                    or (sender or {}).get("error") or "failed")
    metrics: dict[str, float | None] = {m: None for m in METRICS}
    if ok and sender is not None:
        nbytes = int(sender["bytes"])
        metrics["sender_cpu_s_per_gb"] = s_per_gb(sender["cpu"], nbytes)
        metrics["sender_sys_s_per_gb"] = s_per_gb(sender["sys"], nbytes)
        if "bytes_zerocopy" in sender and nbytes:
            # bytes_zerocopy counts completed sends the kernel did not copy (SenderStats)
            metrics["sender_uncopied_pct"] = 100.0 * sender["bytes_zerocopy"] / nbytes
        if receiver is not None:
            metrics["receiver_cpu_s_per_gb"] = s_per_gb(receiver["cpu"], int(receiver["bytes"]))
            metrics["receiver_sys_s_per_gb"] = s_per_gb(receiver["sys"], int(receiver["bytes"]))
            metrics["throughput_gbit_s"] = gbit_per_s(int(receiver["bytes"]), receiver["wall"])
        else:
            metrics["throughput_gbit_s"] = gbit_per_s(nbytes, sender["wall"])
    return {"transport": item["transport"], "msg_size": item["msg_size"],
            "send_mode": item["send_mode"], "rep": item["rep"], "role": item["role"],
            "recv_mode": p.recv_mode if tcp else None,
            "verified": verified(p.verify, item["role"]) if tcp else "none",
            "ok": ok, "error": error, "unavailable": unavailable,
            "sender": sender, "receiver": receiver, "metrics": metrics}


class _StreamWorkload:
    """One stream repetition: the client worker sends, the server worker (TCP) receives."""

    mode_kind = "send"

    def __init__(self, p: StreamParams, env: Environment, client: Worker,
                 server: Worker | None, addr: tuple[Any, ...],
                 c_program: str | None) -> None:
        self.p, self.env, self.client, self.server = p, env, client, server
        self.addr, self.c_program = addr, c_program

    def mode(self, item: Mapping[str, Any]) -> str:
        return str(item["send_mode"])

    def label(self, item: Item) -> str:
        return f"stream {item['transport']} {item['msg_size'] // KiB}K {item['send_mode']}"

    def run(self, item: Item) -> StreamRun:
        p = self.p
        cmd: dict[str, Any] = {
            "kind": item["transport"], "msg_size": item["msg_size"],
            "send_mode": item["send_mode"], "recv_mode": p.recv_mode, "recv_size": p.recv_size,
            "warmup": p.warmup, "bytes": p.nbytes, "source_bytes": p.source_bytes,
            "batch": p.batch, "verify": verified(p.verify, item["role"])}
        if self.c_program is not None:
            cmd["cref"] = self.c_program
        if item["transport"] == "udp":
            cmd.update(addr=(self.env.ifb_sink, SINK_PORT), gso_size=UDP_GSO_SIZE)
        else:
            cmd["addr"] = self.addr
        return _run_record(item, p, self.client.call(cmd))

    def profile_pids(self, item: Item) -> dict[str, int]:
        pids = {"sender": self.client.process.pid}
        if item["transport"] == "tcp" and self.server is not None:
            pids["receiver"] = self.server.process.pid
        return {k: v for k, v in pids.items() if v is not None}


def run_stream(p: StreamParams, progress: Progress) -> Experiment:
    """Run the stream experiment; the JSON-ready result (see docs/bench.md)."""
    if p.connect is not None:
        env = Environment(None, p.connect[0], None, None,
                          [f"two-host mode: receiver is `zcnet serve` at "
                           f"{p.connect[0]}:{p.connect[1]}"])
        return _run(p, env, progress)
    with environment(ifb="udp" in p.transports, use_netns=p.use_netns) as env:
        return _run(p, env, progress)


def _run(p: StreamParams, env: Environment, progress: Progress) -> Experiment:
    transports = _transports(p, env)
    notes = list(env.notes)
    if "udp" in p.transports and "udp" not in transports:
        notes.append("UDP toward the ifb sink skipped: it needs a namespace of our own (root)")
    built = _c_build(p)
    c_ok = built is not None and built.available
    items, perf_reason = _plan(p, transports, c_ok)
    server: Worker | None = None
    with spawn(client_worker, env.ns_name) as client:
        try:
            if p.connect is None:
                server = spawn(server_worker, env.ns_name, env.host, None)
                addr = tuple(server.recv(60))
            else:
                addr = p.connect
            work = _StreamWorkload(p, env, client, server, addr,
                                   built.programs["send"] if built is not None and c_ok
                                   else None)
            out = drive(items, work, progress)
        finally:
            if server is not None:
                server.stop(0.2, graceful=False)
    runs = out.runs
    unavailable = out.unavailable
    notes += out.notes()
    batched = [m for m in UDP_ONLY_SEND_MODES if m in p.send_modes]
    if "zcnet-batch" in batched and "udp" in transports and "zcnet-batch" not in unavailable:
        notes.append(f"zcnet-batch: Sender.send_batch of {p.batch} datagrams per call "
                     "(sendmmsg), default SendPolicy; UDP only (on TCP it is zcnet)")
    if ("zcnet-uring-batch" in batched and "udp" in transports
            and "zcnet-uring-batch" not in unavailable):
        notes.append(f"zcnet-uring-batch: Sender.send_batch of {p.batch} pool leases per call "
                     "(io_uring engine, registered memory); UDP only")
    leased = [m for m in LEASE_SEND_MODES if m in p.send_modes and m not in unavailable]
    if leased:
        notes.append(f"{', '.join(leased)}: Sender.send of one pool lease per message "
                     "(io_uring: the pool's slabs registered), the leases of the timed bytes "
                     "acquired and filled before the window: all held at once "
                     f"({p.nbytes >> 20} MiB of pool memory per repetition)")
    if batched and "udp" not in transports:
        notes.append(f"send mode(s) {', '.join(batched)} run on UDP only: not run here")
    keys = ("transport", "msg_size", "send_mode")
    summary = group_summary(runs, keys, METRICS)
    every = [c for group in _configs(p, transports, True) for cell in group for c in cell]
    # a row per configuration a mode could not run, saying why (the C modes: no compiler)
    no_c = {} if built is None or c_ok else {m: str(built.reason) for m in C_SEND_MODES}
    summary += out.unavailable_rows(every, summary, keys, no_c)
    if no_c:
        notes.append(f"C reference senders unavailable: {built.reason if built else ''}")
    if built is not None:
        _c_ratios(summary, runs)
    if p.profile and perf_reason is not None:
        notes.append(f"--profile: no profile: {perf_reason}")
    params = asdict(p)
    params["udp_message_sizes"] = p.udp_message_sizes()
    params["udp_gso_size"] = UDP_GSO_SIZE
    result = experiment_result("stream", status=out.status(), environment=env.describe(),
                               parameters=params, runs=runs, summary=summary, notes=notes)
    result["c_reference"] = None if built is None else built.describe()
    result["profiles"] = out.profiles
    result["profile_unavailable"] = perf_reason
    return result


#: The C senders a mode is compared with, first its own ``c_reference``: every one that ran
#: at the same transport and size gets a ratio in the summary's ``sender_cpu_vs_c`` and a line
#: in the table's ``snd std/C`` / ``snd zc/C`` cell. One line per mode; modes not listed here
#: (``zcnet``, ``zcnet-batch``, ``zcnet-leases``) are compared with what their runs mostly did,
#: and ``c-copy`` and ``c-zc`` with nothing. zcnet's io_uring modes are compared with the C
#: io_uring loop that does the same work (one send per ``io_uring_enter`` for ``Sender.send``,
#: registered buffers for pool leases, each batch linked in order as ``send_batch`` promises),
#: the batched one, and C ``MSG_ZEROCOPY``.
C_REFERENCES: dict[str, tuple[str, ...]] = {
    "sendall": ("c-copy",),
    "zcnet-forced": ("c-zc",),
    "raw-zerocopy": ("c-zc",),
    "c-uring": ("c-zc",),
    "c-uring-fixed": ("c-zc", "c-uring"),
    "c-uring-fixed-linked": ("c-uring-fixed", "c-zc"),
    "c-uring-single": ("c-zc", "c-uring"),
    "c-uring-fixed-single": ("c-zc", "c-uring-single"),
    "zcnet-uring": ("c-uring-single", "c-uring", "c-zc"),
    "zcnet-uring-batch": ("c-uring-fixed-linked", "c-uring-fixed", "c-zc"),
    "zcnet-uring-leases": ("c-uring-fixed-single", "c-uring-fixed", "c-zc"),
}


def c_references_for(mode: str, runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The C senders a mode is compared with (:data:`C_REFERENCES`), the first one its
    ``c_reference``; ``()`` for ``c-copy`` and ``c-zc``.

    zcnet's default policy decides by itself (copies below the threshold, falls back to copies
    when the kernel reports copied completions, as over loopback), so ``zcnet`` and
    ``zcnet-batch`` (and ``zcnet-leases``) are compared with what their timed runs mostly did.
    """
    if mode in C_REFERENCES:
        return C_REFERENCES[mode]
    if mode in C_SEND_MODES:
        return ()
    zc = sum(int((r["sender"] or {}).get("sends_zerocopy", 0)) for r in runs)
    plain = sum(int((r["sender"] or {}).get("sends_plain", 0)) for r in runs)
    return ("c-zc",) if zc > plain else ("c-copy",)


def c_reference_for(mode: str, runs: list[dict[str, Any]]) -> str | None:
    """The C sender a mode is compared with first (``None`` for ``c-copy`` and ``c-zc``)."""
    refs = c_references_for(mode, runs)
    return refs[0] if refs else None


def _c_ratios(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """``c_reference`` and ``sender_cpu_vs_c_pct`` (100 * median / the C row's median), and
    ``sender_cpu_vs_c``: that ratio for each C reference in the summary (first one always)."""
    def median(entry: dict[str, Any] | None) -> float | None:
        m = None if entry is None else entry["metrics"].get("sender_cpu_s_per_gb")
        return None if m is None else float(m["median"])

    rows = {(e["transport"], e["msg_size"], e["send_mode"]): e for e in summary}
    for entry in summary:
        key = (entry["transport"], entry["msg_size"])
        this = (*key, entry["send_mode"])
        members = [r for r in runs if r["role"] == "timed" and r["ok"]
                   and (r["transport"], r["msg_size"], r["send_mode"]) == this]
        refs = c_references_for(entry["send_mode"], members)
        value = median(entry)
        ratios: dict[str, float | None] = {}
        for i, ref in enumerate(refs):
            if i and (*key, ref) not in rows:
                continue  # a further reference that was not asked for
            base = median(rows.get((*key, ref)))
            ratios[ref] = None if value is None or not base else round(100.0 * value / base, 1)
        entry["c_reference"] = refs[0] if refs else None
        entry["sender_cpu_vs_c_pct"] = ratios[refs[0]] if refs else None
        entry["sender_cpu_vs_c"] = ratios
