"""``zcnet bench rpc --mmap-churn`` (experiment ``rpc-churn``): zero-copy receive vs mmap_lock.

Theory of operation (docs/bench.md, "rpc --mmap-churn"; docs/ARCHITECTURE.md, 'Receive:
long-lived windows'): the rpc experiment's server (:func:`zcnet.bench.rpc.rpc_server`, 100
connections of 4 KiB requests, MSS 4096) receives with zero-copy in two variants: ``windows``,
zcnet's Receiver with its few long-lived windows per connection, and ``fresh``, a bench-only
naive receiver that maps a new window for every receive and unmaps it after
(:class:`zcnet.bench.freshwindow.FreshWindowReceiver`). Each runs with no churn, with the
``mmap`` churn (a thread of the same server process mapping and unmapping 1 MiB in a tight loop
outside the GIL, :class:`zcnet.bench.mmapchurn.ChurnThread`: ``mmap_lock`` taken for write all
the time) and with the ``syscall`` control (the same thread as busy, two ``getppid`` calls per
iteration, no lock of the address space). Since Linux 6.5 zcnet's receive finds its window under
the window's VMA lock and should not notice the lock; the fresh variant takes the write lock
itself twice per receive and must wait for the churn each time.

The server's CPU per request is its receiving thread's CPU (``CLOCK_THREAD_CPUTIME_ID``, the
verification subtracted), so the churn thread's own CPU is not in it; the churn's rate is
reported apart. On a machine with few CPUs a busy thread slows the server and the client by
taking CPU time and caches whatever it does: the ``syscall`` control measures that part, and
what the ``mmap`` churn costs beyond it is the lock's. Where ``perf`` can record, one more
untimed repetition per configuration without churn and with the ``mmap`` churn profiles the
server's receiving thread and gives the share of its samples in the lock path
(:mod:`zcnet.bench.lockpath`) in ``profiles`` and the summary's ``lock_path_pct``. Without the
compiled extension the churn configurations are unavailable (said once, with the reason); the
others run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from zcnet.bench.common import Progress, experiment_result, group_summary
from zcnet.bench.driver import Config, Item, drive, first_unavailable, plan_runs, verified
from zcnet.bench.env import Environment, environment
from zcnet.bench.mmapchurn import churn_unavailable_reason
from zcnet.bench.modes import RPC_CHURN_VARIANTS, RPC_CHURNS
from zcnet.bench.peers import client_worker
from zcnet.bench.profile import perf_unavailable_reason
from zcnet.bench.results import Experiment, RpcChurnRun
from zcnet.bench.rpc import MSS_4K_LISTENER, RpcParams, serve_once
from zcnet.bench.workers import Worker, spawn

__all__ = ["CHURNS", "METRICS", "VARIANTS", "RpcChurnParams", "plan_count", "run_rpc_churn"]

#: Receive variant -> the rpc server's ``rx_policy``.
VARIANTS: Final = RPC_CHURN_VARIANTS
METRICS: Final = ("requests_per_s", "server_cpu_us_per_req", "client_cpu_us_per_req",
                  "latency_p50_us", "latency_p99_us", "mapped_pct", "churn_per_s")
KEYS: Final = ("rx_variant", "churn")
#: What runs beside the server: nothing, the mmap churn, or the control (as busy, no lock).
CHURNS: Final = RPC_CHURNS
#: A lock-profile repetition makes this many times the timed repetitions' requests.
PROFILE_LENGTH: Final = 3


@dataclass
class RpcChurnParams(RpcParams):
    """Parameters of ``rpc --mmap-churn``: the rpc experiment's, and its lock profile."""

    lock_profile: bool = True    # one perf repetition per configuration, where perf records


def _configs() -> list[Config]:
    return [{"rx_variant": v, "churn": c} for v in VARIANTS for c in CHURNS]


def _mode(config: Mapping[str, Any]) -> str:
    """``windows``, ``windows+mmap``, ``fresh+syscall``, ..."""
    churn = str(config["churn"])
    return str(config["rx_variant"]) + ("" if churn == "none" else f"+{churn}")


def _plan(p: RpcChurnParams) -> list[Item]:
    return plan_runs([[_configs()]], reps=p.reps, verify=p.verify)


def _profiled() -> list[Config]:
    return [c for c in _configs() if c["churn"] in ("none", "mmap")]


def plan_count(p: RpcChurnParams) -> int:
    """How many runs :func:`run_rpc_churn` makes (lock profiles included, if asked)."""
    return len(_plan(p)) + (len(_profiled()) if p.lock_profile else 0)


def _record(item: Item, p: RpcChurnParams, client: dict[str, Any],
            server: dict[str, Any]) -> RpcChurnRun:
    ok = bool(client.get("ok") and server.get("ok"))
    m: dict[str, float | None] = {k: None for k in METRICS}
    if ok:
        reqs = int(client["requests"])
        m["requests_per_s"] = reqs / client["wall"] if client["wall"] > 0 else None
        m["client_cpu_us_per_req"] = client["cpu"] / reqs * 1e6
        m["server_cpu_us_per_req"] = server["thread_cpu"] / int(server["requests"]) * 1e6
        m["latency_p50_us"] = client["latency_p50_us"]
        m["latency_p99_us"] = client["latency_p99_us"]
        total = server["bytes_mapped"] + server["bytes_copied"]
        m["mapped_pct"] = 100.0 * server["bytes_mapped"] / total if total else None
        churn = server.get("churn")
        m["churn_per_s"] = churn["per_s"] if churn else None
    return {"rx_variant": item["rx_variant"], "churn": item["churn"],
            "zerocopy_receive": True, "rx_policy": VARIANTS[item["rx_variant"]],
            "rep": item["rep"], "role": item["role"],
            "verified": verified(p.verify, item["role"]), "ok": ok,
            "error": None if ok else str(client.get("error") or server.get("error")
                                         or "failed"),
            "unavailable": None if ok else first_unavailable(client, server),
            "client": client, "server": server, "metrics": m}


class _ChurnWorkload:
    """One repetition: a fresh server worker (with the churn thread if asked), the client
    worker's connections against it."""

    mode_kind = "rpc receive"

    def __init__(self, p: RpcChurnParams, env: Environment, client: Worker,
                 notes: list[str]) -> None:
        self.p, self.env, self.client, self.notes = p, env, client, notes

    def mode(self, item: Mapping[str, Any]) -> str:
        return _mode(item)

    def label(self, item: Item) -> str:
        return f"rpc {_mode(item)}"

    def run(self, item: Item, lock_profile: bool = False) -> RpcChurnRun:
        p = self.p
        if item["churn"] != "none" and (why := churn_unavailable_reason()) is not None:
            side = {"ok": False, "unavailable": why, "error": f"not available: {why}"}
            return _record(item, p, side, side)
        # a profile repetition runs longer: more samples for a share of about 1 %
        requests = p.requests * (PROFILE_LENGTH if lock_profile else 1)
        cfg = {"connections": p.connections, "size": p.size, "warmup": p.warmup,
               "requests": requests, "zerocopy": True,
               "rx_policy": VARIANTS[item["rx_variant"]],
               "churn": None if item["churn"] == "none" else item["churn"],
               "lock_profile": lock_profile,
               "full": verified(p.verify, item["role"]) == "full"}
        res, srv = serve_once(self.env, self.client, cfg, self.notes, server_timeout=120)
        return _record(item, p, res, srv)

    def profile_pids(self, item: Item) -> dict[str, int]:
        return {}  # the lock profile is taken inside the server (lock_profile)


_RELATIVE: Final = (("requests_per_s", "requests_per_s"),
                    ("server_cpu_us_per_req", "server_cpu"),
                    ("latency_p99_us", "latency_p99"))


def _relative(summary: list[dict[str, Any]]) -> None:
    """Churn rows: their medians as % of the same variant's without churn (``*_vs_no_churn_
    pct``); ``mmap`` rows also as % of the same variant's under the control
    (``*_vs_control_pct``: what the lock costs beyond a busy thread)."""
    def pct(e: dict[str, Any], b: dict[str, Any], metric: str) -> float | None:
        mine, theirs = e["metrics"].get(metric), b["metrics"].get(metric)
        return (100.0 * mine["median"] / theirs["median"]
                if mine and theirs and theirs["median"] else None)

    rows = {(e["rx_variant"], e["churn"]): e for e in summary if e["metrics"]}
    for (variant, churn), e in rows.items():
        base, control = rows.get((variant, "none")), rows.get((variant, "syscall"))
        if churn != "none" and base is not None:
            for metric, name in _RELATIVE:
                e[f"{name}_vs_no_churn_pct"] = pct(e, base, metric)
        if churn == "mmap" and control is not None:
            for metric, name in _RELATIVE:
                e[f"{name}_vs_control_pct"] = pct(e, control, metric)


def run_rpc_churn(p: RpcChurnParams, progress: Progress) -> Experiment:
    """Run ``rpc --mmap-churn``; the JSON-ready result (see docs/bench.md)."""
    with environment(use_netns=p.use_netns) as env:
        notes = list(env.notes)
        notes.append(f"listener TCP_MAXSEG {MSS_4K_LISTENER} (MSS 4096); client sends with "
                     "zcnet Sender forced to MSG_ZEROCOPY; server CPU = its receiving thread's "
                     "(the churn thread's CPU is not in it)")
        profiles: list[dict[str, Any]] = []
        perf_why = perf_unavailable_reason() if p.lock_profile else None
        with spawn(client_worker, env.ns_name) as client:
            work = _ChurnWorkload(p, env, client, notes)
            out = drive(_plan(p), work, progress)
            if p.lock_profile:
                for config in _profiled():
                    item = {**config, "rep": -1, "role": "profile"}
                    if perf_why is not None or _mode(config) in out.unavailable:
                        progress(f"lock profile {_mode(config)}: skipped")
                        continue
                    run = work.run(item, lock_profile=True)
                    lp = run["server"].get("lock_profile") if run["ok"] else None
                    # the server is the receiving side: its receiving thread's lock-path
                    # symbols as the receiver's "top", their sum as lock_pct
                    profiles.append({**config, "ok": run["ok"], "error": run["error"],
                                     "sender": None,
                                     "receiver": None if lp is None else {
                                         k: lp[k] for k in ("samples", "top", "error")},
                                     "lock_pct": None if lp is None else lp["lock_pct"]})
                    progress(f"lock profile {_mode(config)}")
        notes += out.notes()
        if perf_why is not None:
            notes.append(f"no lock-path profile: {perf_why}")
        summary = group_summary(out.runs, KEYS, METRICS)
        summary += out.unavailable_rows(_configs(), summary, KEYS)
        _relative(summary)
        share = {(q["rx_variant"], q["churn"]): q["lock_pct"] for q in profiles}
        if p.lock_profile and perf_why is None:
            for e in summary:
                e["lock_path_pct"] = share.get((e["rx_variant"], e["churn"]))
        exp = experiment_result("rpc-churn", status=out.status(), environment=env.describe(),
                                parameters=asdict(p), runs=out.runs, summary=summary,
                                notes=notes)
        exp["profiles"] = profiles
        exp["profile_unavailable"] = perf_why
        return exp

