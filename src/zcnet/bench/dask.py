"""The ``dask`` experiment: moving large arrays between two Dask workers, ``tcp://`` vs ``zc://``.

Theory of operation: the measurement of the DASK engineer's ``scripts/dask_bench.py``
("transfer" section; docs/dask.md), run by the bench. For each variant a ``LocalCluster`` of two
worker processes (one thread each, 127.0.0.1) is started once: ``tcp`` (Dask's own comm),
``zc`` (zcnet's ``zc://`` backend, zero-copy sends with the kernel's copied -> copy fallback),
and ``zc-forced`` (``MSG_ZEROCOPY`` kept). In each repetition worker A makes ``arrays`` numpy
arrays of ``array_bytes`` holding the stream pattern, then a task on worker B takes them all, so
Dask moves them A -> B; the wall time of that task and the CPU seconds (user + system,
``getrusage(RUSAGE_SELF)`` of each worker process, all threads, read with ``Client.run``) of
both workers are recorded around it. Every byte is checked on B afterwards, outside the timed
window. Repetitions alternate the order of the variants; one untimed transfer per variant warms
up connections and allocations first.

Dask, distributed and numpy are imported only inside the experiment's own worker process (a
``fork`` of the CLI that enters the benchmark's namespace, lo MTU 65536, before starting the
clusters); when they are missing the experiment is skipped with the reason. The cluster's worker
processes (multiprocessing ``spawn`` of distributed's nannies) import this module to run
:func:`make_array`, :func:`take`, :func:`verify`, :func:`cpu_seconds` and :func:`zc_stats`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import resource
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from zcnet.bench.common import GB, Progress, experiment_result, group_summary
from zcnet.bench.env import environment
from zcnet.bench.results import Experiment, Status
from zcnet.bench.workers import Worker, WorkerError, spawn

__all__ = ["DASK_VARIANTS", "DaskParams", "dask_unavailable_reason", "plan_count", "run_dask"]

MiB = 1024 * 1024
BLOCK = 8 * MiB
METRICS = ("throughput_gbit_s", "wall_s", "sender_cpu_s_per_gb", "receiver_cpu_s_per_gb")

#: variant (:data:`zcnet.bench.modes.DASK_VARIANT_NAMES`) -> (protocol, dask.config settings)
DASK_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "tcp": ("tcp://", {}),
    "zc": ("zc://", {"zcnet.dask.force-zerocopy": False}),
    "zc-forced": ("zc://", {"zcnet.dask.force-zerocopy": True}),
}


@dataclass
class DaskParams:
    """Parameters of the dask experiment."""

    array_bytes: int = 32 * MiB
    arrays: int = 4
    reps: int = 5
    variants: tuple[str, ...] = ("tcp", "zc", "zc-forced")
    use_netns: bool = True


def dask_unavailable_reason() -> str | None:
    """Why the experiment cannot run here (a missing package), or ``None``."""
    missing = [m for m in ("distributed", "numpy") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed (pip install 'zcnet[dask]'); "
                "the dask experiment needs them")
    return None


def plan_count(p: DaskParams) -> int:
    """How many progress steps :func:`run_dask` reports (cluster start-ups included)."""
    return len(p.variants) * (p.reps + 1)


# -- functions run on the Dask workers ----------------------------------------------------------


def make_array(offset: int, nbytes: int) -> Any:
    """The stream pattern's bytes at ``offset`` as a writeable uint8 numpy array."""
    import numpy as np

    from zcnet._core.pattern import StreamPattern

    pattern = StreamPattern(max_block=BLOCK)
    out = np.empty(nbytes, dtype="u1")
    for pos in range(0, nbytes, BLOCK):
        n = min(BLOCK, nbytes - pos)
        out[pos : pos + n] = np.frombuffer(pattern.block(offset + pos, n), dtype="u1")
    return out


def take(*arrays: Any) -> int:
    """The task on worker B: trivially touches its (transferred) inputs."""
    return sum(int(a.nbytes) for a in arrays)


def verify(offsets: Sequence[int], *arrays: Any) -> bool:
    """Every byte of every array matches the pattern."""
    from zcnet._core.pattern import StreamPattern

    pattern = StreamPattern(max_block=BLOCK)
    return all(pattern.matches(off, memoryview(a)) for off, a in zip(offsets, arrays, strict=True))


def cpu_seconds() -> float:
    """User + system CPU of this (worker) process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def zc_stats() -> dict[str, int]:
    """This worker's ``zc://`` transport counters (empty without the backend)."""
    try:
        from zcnet.contrib.dask import process_stats
    except ImportError:
        return {}
    return dict(process_stats())


# -- the experiment's own process ---------------------------------------------------------------


@contextlib.contextmanager
def _cluster(variant: str) -> Iterator[Any]:
    import dask

    distributed: Any = importlib.import_module("distributed")  # untyped package
    protocol, config = DASK_VARIANTS[variant]
    settings = {**config, "distributed.worker.memory.target": False,
                "distributed.worker.memory.spill": False,
                "distributed.worker.memory.pause": False,
                "distributed.worker.memory.terminate": False,
                "distributed.logging.distributed": "error"}
    with dask.config.set(settings):
        cluster = distributed.LocalCluster(
            protocol=protocol, host="127.0.0.1", processes=True, n_workers=2,
            threads_per_worker=1, dashboard_address=None, memory_limit=0,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR)
        try:
            client = distributed.Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()


def _transfer(client: Any, n_arrays: int, nbytes: int, rep: int) -> dict[str, Any]:
    distributed: Any = importlib.import_module("distributed")
    a, b = sorted(client.scheduler_info()["workers"])
    offsets = [(rep * 7919 + i * 1009) % 65521 for i in range(n_arrays)]
    made = [client.submit(make_array, off, nbytes, workers=[a], pure=False) for off in offsets]
    distributed.wait(made)
    before = client.run(cpu_seconds, workers=[a, b])
    t0 = time.perf_counter()
    got = client.submit(take, *made, workers=[b], pure=False).result()
    wall = time.perf_counter() - t0
    after = client.run(cpu_seconds, workers=[a, b])
    total = n_arrays * nbytes
    if got != total:
        raise AssertionError(f"worker B got {got} bytes, expected {total}")
    if not client.submit(verify, offsets, *made, workers=[b], pure=False).result():
        raise AssertionError("arrays corrupted in transit")
    del made
    return {"bytes": total, "wall": wall,
            "sender": {"worker": a, "cpu": after[a] - before[a]},
            "receiver": {"worker": b, "cpu": after[b] - before[b]}}


def _experiment_body(pipe: Connection, params: dict[str, Any]) -> None:
    """Run in a forked worker: start the clusters, stream the runs back over ``pipe``."""
    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind: close the clusters (and their processes)

    signal.signal(signal.SIGTERM, terminate)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    p = DaskParams(**{**params, "variants": tuple(params["variants"])})
    with contextlib.ExitStack() as stack:
        clients: dict[str, Any] = {}
        for name in p.variants:
            try:
                clients[name] = stack.enter_context(_cluster(name))
                _transfer(clients[name], 1, p.array_bytes, 0)  # warm-up
                pipe.send({"kind": "ready", "variant": name})
            except Exception as e:
                clients.pop(name, None)
                pipe.send({"kind": "unavailable", "variant": name,
                           "error": f"{type(e).__name__}: {e}"})
        for rep in range(p.reps):
            order = list(clients) if rep % 2 == 0 else list(clients)[::-1]
            for name in order:
                try:
                    res: dict[str, Any] = _transfer(clients[name], p.arrays, p.array_bytes,
                                                    rep + 1)
                    res["ok"], res["error"] = True, None
                except Exception as e:
                    res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                pipe.send({"kind": "run", "variant": name, "rep": rep, "result": res})
        stats = {name: client.run(zc_stats) for name, client in clients.items()
                 if DASK_VARIANTS[name][0] == "zc://"}
    pipe.send({"kind": "done", "zc_worker_stats": stats})


def _record(variant: str, rep: int, res: dict[str, Any]) -> dict[str, Any]:
    run: dict[str, Any] = {"variant": variant, "protocol": DASK_VARIANTS[variant][0],
                           "rep": rep, "role": "timed", "verified": "full",
                           "ok": bool(res.get("ok")), "error": res.get("error"),
                           "bytes": res.get("bytes"), "sender": res.get("sender"),
                           "receiver": res.get("receiver")}
    metrics: dict[str, float | None] = {m: None for m in METRICS}
    if run["ok"]:
        nbytes, wall = int(res["bytes"]), float(res["wall"])
        metrics["wall_s"] = wall
        metrics["throughput_gbit_s"] = nbytes * 8 / wall / GB if wall > 0 else None
        metrics["sender_cpu_s_per_gb"] = res["sender"]["cpu"] / (nbytes / GB)
        metrics["receiver_cpu_s_per_gb"] = res["receiver"]["cpu"] / (nbytes / GB)
    run["metrics"] = metrics
    return run


def _relative_to_tcp(summary: list[dict[str, Any]]) -> None:
    def median(entry: dict[str, Any] | None, metric: str) -> float | None:
        m = None if entry is None else entry["metrics"].get(metric)
        return None if m is None else float(m["median"])

    base = next((e for e in summary if e["variant"] == "tcp"), None)
    for entry in summary:
        for side in ("sender", "receiver"):
            metric = f"{side}_cpu_s_per_gb"
            value, ref = median(entry, metric), median(base, metric)
            entry[f"{side}_cpu_vs_tcp_pct"] = (
                None if value is None or not ref else round(100.0 * value / ref, 1))


def run_dask(p: DaskParams, progress: Progress) -> Experiment:
    """Run the dask experiment; the JSON-ready result (see docs/bench.md)."""
    reason = dask_unavailable_reason()
    if reason is not None:
        for _ in range(plan_count(p)):
            progress("dask: skipped")
        return experiment_result("dask", status="skipped", reason=reason,
                                 parameters=asdict(p), notes=[reason])
    runs: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    stats: dict[str, Any] = {}
    with environment(use_netns=p.use_netns, lo_mtu=None) as env:
        notes = [n for n in env.notes if not n.startswith("lo MTU")]
        notes.append("clusters on 127.0.0.1 "
                     + ("in the benchmark's namespace (lo MTU 65536, as a host's loopback)"
                        if env.ns_name is not None else "(host loopback)"))
        worker: Worker = spawn(_experiment_body, env.ns_name, asdict(p), daemon=False)
        try:
            while True:
                try:
                    msg = worker.recv(900)
                except WorkerError as e:
                    crashed = str(e).splitlines()[0]
                    notes.append(f"the experiment's process failed: {crashed}")
                    runs.append({"variant": None, "protocol": None, "rep": None,
                                 "role": "timed", "verified": "none", "ok": False,
                                 "error": crashed, "metrics": {m: None for m in METRICS}})
                    break
                if msg["kind"] == "ready":
                    progress(f"dask {msg['variant']}: cluster up")
                elif msg["kind"] == "unavailable":
                    unavailable[msg["variant"]] = msg["error"]
                    for _ in range(p.reps + 1):
                        progress(f"dask {msg['variant']}: unavailable")
                elif msg["kind"] == "run":
                    runs.append(_record(msg["variant"], msg["rep"], msg["result"]))
                    progress(f"dask {msg['variant']}")
                else:
                    stats = msg["zc_worker_stats"]
                    break
        finally:
            worker.stop(30)
    for name, why in unavailable.items():
        notes.append(f"variant {name} unavailable: {why}")
    for name, per_worker in stats.items():
        for addr, st in sorted(per_worker.items()):
            if st.get("bytes_sent", 0) >= 1e6:  # the sending worker (not control messages)
                notes.append(f"{name} worker {addr}: sent {st['bytes_sent'] / 1e9:.2f} GB, "
                             f"MSG_ZEROCOPY {st.get('bytes_zerocopy', 0) / 1e9:.2f} GB "
                             f"(kernel-copied {st.get('bytes_zc_copied', 0) / 1e9:.2f} GB)")
    summary = group_summary(runs, ("variant",), METRICS)
    _relative_to_tcp(summary)
    failed = [r for r in runs if not r["ok"]]
    status: Status = "ok" if not failed and not unavailable else "partial"
    if not runs and unavailable:
        status = "skipped"
    params = asdict(p)
    params["protocols"] = {v: DASK_VARIANTS[v][0] for v in p.variants}
    result = experiment_result("dask", status=status, environment=env.describe(),
                               parameters=params, runs=runs, summary=summary, notes=notes)
    result["zc_worker_stats"] = stats
    if status == "skipped":
        result["reason"] = "; ".join(f"{k}: {v}" for k, v in unavailable.items())
    return result
