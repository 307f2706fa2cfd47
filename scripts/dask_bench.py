#!/usr/bin/env python3
"""Move large numpy arrays between two Dask worker processes over ``tcp://`` and ``zc://``.

What it measures, side by side in one run (docs/ARCHITECTURE.md, 'Measuring'):

* ``transfer``: for each variant a LocalCluster (2 worker processes, 1 thread each, 127.0.0.1) is
  started once; repetitions alternate between the variants. In each repetition worker A makes
  ``--arrays`` arrays of ``--size-mb`` MiB, then a task on worker B takes them all, so Dask moves
  them A -> B. Wall time of the transfer and CPU seconds (user + sys, ``getrusage`` of each
  worker process, all threads) of both workers are recorded around it; every byte is checked on
  B afterwards (outside the timed window). Variants: ``tcp`` (Dask's own), ``zc`` (zero-copy
  sends with the kernel's copied -> copy fallback), ``zc-forced`` (``MSG_ZEROCOPY`` kept).
* ``policy`` (the read-only frames decision, docs/dask.md): in this process, a forced
  ``MSG_ZEROCOPY`` sender thread streams to (a) ``recv_into`` a writeable buffer, which is what
  zc:// does, and (b) ``zcnet.receiver.Receiver`` mapping pages, followed by the copy Dask makes
  of a read-only frame whose array was writeable; the receiving thread's CPU (``thread_time``)
  per GB is reported for both, plus the copy alone (``np.require(..., "W")`` on a read-only
  array).

Usage (from the repo root)::

    .venv/bin/python scripts/dask_bench.py                  # both sections, defaults
    .venv/bin/python scripts/dask_bench.py --size-mb 64 --arrays 4 --reps 5 --json out.json

Medians with min-max are printed; ratios are relative to ``tcp``. All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

MB = 1024 * 1024
VARIANTS = {
    "tcp": ("tcp://", {}),
    "zc": ("zc://", {"zcnet.dask.force-zerocopy": False}),
    "zc-forced": ("zc://", {"zcnet.dask.force-zerocopy": True}),
}


# -- functions run on the workers: the benchmark's own (importable by Dask's worker processes)

from zcnet.bench.dask import cpu_seconds, make_array, take, verify, zc_stats  # noqa: E402

# -- transfer section ---------------------------------------------------------------------------


def start_cluster(protocol: str, config: dict[str, Any]) -> tuple[Any, Any, Any]:
    import dask
    from distributed import Client, LocalCluster

    settings = {**config, "distributed.worker.memory.target": False,
                "distributed.worker.memory.spill": False,
                "distributed.worker.memory.pause": False,
                "distributed.worker.memory.terminate": False}
    with dask.config.set(settings):
        cluster = LocalCluster(protocol=protocol, host="127.0.0.1", processes=True, n_workers=2,
                               threads_per_worker=1, dashboard_address=None, memory_limit=0,
                               scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    return cluster, client, settings


def one_transfer(client: Any, n_arrays: int, nbytes: int, rep: int) -> dict[str, float]:
    a, b = sorted(client.scheduler_info()["workers"])
    offsets = [(rep * 7919 + i * 1009) % 65521 for i in range(n_arrays)]
    made = [client.submit(make_array, off, nbytes, workers=[a], pure=False) for off in offsets]
    from distributed import wait

    wait(made)
    before = client.run(cpu_seconds, workers=[a, b])
    t0 = time.perf_counter()
    got = client.submit(take, *made, workers=[b], pure=False).result()
    wall = time.perf_counter() - t0
    after = client.run(cpu_seconds, workers=[a, b])
    assert got == n_arrays * nbytes
    ok = client.submit(verify, offsets, *made, workers=[b], pure=False).result()
    if not ok:
        raise AssertionError("arrays corrupted in transit")
    del made
    gb = n_arrays * nbytes / 1e9
    return {"wall_s": wall, "gb_per_s": gb / wall,
            "sender_cpu_s_per_gb": (after[a] - before[a]) / gb,
            "receiver_cpu_s_per_gb": (after[b] - before[b]) / gb}


def transfer_section(args: argparse.Namespace) -> dict[str, Any]:
    nbytes = int(args.size_mb * MB)
    names = [v for v in args.variants.split(",") if v]
    clusters = {name: start_cluster(*VARIANTS[name]) for name in names}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        for name in names:  # warm-up: connections, imports, first allocations
            one_transfer(clusters[name][1], 1, nbytes, 0)
        for rep in range(args.reps):
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                results[name].append(one_transfer(clusters[name][1], args.arrays, nbytes, rep + 1))
        stats = {name: clusters[name][1].run(zc_stats) for name in names
                 if name.startswith("zc")}
    finally:
        for cluster, client, _ in clusters.values():
            client.close()
            cluster.close()
    return {"size_mb": args.size_mb, "arrays": args.arrays, "reps": args.reps,
            "runs": results, "zc_worker_stats": stats}


# -- policy section -----------------------------------------------------------------------------


def _stream(total: int, chunk: int, port: int, force: bool) -> threading.Thread:
    from zcnet._core.txpolicy import SendPolicy
    from zcnet.sender import Sender

    data = make_array(0, chunk)

    def run() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        with Sender(sock, SendPolicy(force_zerocopy=force)) as tx:
            sent = 0
            while sent < total:
                n = min(chunk, total - sent)
                tx.send(memoryview(data)[:n])
                sent += n
            tx.flush(30)

    t = threading.Thread(target=run, name="bench-sender", daemon=True)
    t.start()
    return t


def _receive_copy(conn: socket.socket, total: int, chunk: int) -> tuple[float, bool]:
    from zcnet._core.pattern import StreamPattern

    buf = np.empty(chunk, dtype="u1")
    view = memoryview(buf)
    pattern = StreamPattern(max_block=chunk)
    ok = True
    got = 0
    cpu = 0.0
    while got < total:
        n = min(chunk, total - got)
        t0 = time.thread_time()
        pos = 0
        while pos < n:
            k = conn.recv_into(view[pos:n])
            if k == 0:
                raise ConnectionError("sender closed early")
            pos += k
        cpu += time.thread_time() - t0
        ok = ok and pattern.matches(0, view[:n])  # each send restarts the pattern
        got += n
    return cpu, ok


def _receive_mapped(conn: socket.socket, total: int, chunk: int, copy: bool
                    ) -> tuple[float, bool, float]:
    from zcnet._core.pattern import StreamPattern
    from zcnet.receiver import Receiver, RecvPolicy

    pattern = StreamPattern(max_block=chunk)
    rx = Receiver(conn, RecvPolicy(force_zerocopy=True, window_bytes=2 * MB))
    ok = True
    got = 0
    cpu = 0.0
    frame = np.empty(chunk, dtype="u1")
    fpos = 0
    try:
        while got < total:
            t0 = time.thread_time()
            with rx.recv(min(2 * MB, chunk - fpos), timeout=30) as c:
                if not len(c):
                    raise ConnectionError("sender closed early")
                ro = np.frombuffer(c.view, dtype="u1")  # read-only, as a mapped frame would be
                n = len(c)
                if copy:
                    frame[fpos : fpos + n] = ro  # the copy Dask makes of a read-only frame
                    cpu += time.thread_time() - t0
                else:
                    cpu += time.thread_time() - t0
                    ok = ok and pattern.matches(fpos, c.view)  # checked outside the timing
                del ro
            fpos += n
            got += n
            if fpos == chunk or got == total:
                if copy:
                    ok = ok and pattern.matches(0, memoryview(frame)[:fpos])
                fpos = 0
        mapped = rx.stats.mapped_fraction
    finally:
        rx.close()
    return cpu, ok, mapped


def policy_section(args: argparse.Namespace) -> dict[str, Any]:
    from zcnet.receiver import make_mappable_listener

    total = int(args.policy_mb * MB)
    chunk = 16 * MB
    out: dict[str, list[float]] = {"recv_into_cpu_s_per_gb": [],
                                   "map_only_cpu_s_per_gb": [],
                                   "map_then_copy_cpu_s_per_gb": [],
                                   "readonly_copy_cpu_s_per_gb": [], "mapped_fraction": []}
    ro = make_array(0, chunk)
    ro.flags.writeable = False
    for rep in range(args.reps):
        modes = ("copy", "map", "maponly")
        for mode in (modes if rep % 2 == 0 else modes[::-1]):
            lst = make_mappable_listener("127.0.0.1")
            port = lst.getsockname()[1]
            sender = _stream(total, chunk, port, force=True)
            conn, _ = lst.accept()
            lst.close()
            if mode == "copy":
                cpu, ok = _receive_copy(conn, total, chunk)
                conn.close()
                out["recv_into_cpu_s_per_gb"].append(cpu / (total / 1e9))
            else:
                cpu, ok, mapped = _receive_mapped(conn, total, chunk, copy=mode == "map")
                key = "map_then_copy_cpu_s_per_gb" if mode == "map" else "map_only_cpu_s_per_gb"
                out[key].append(cpu / (total / 1e9))
                out["mapped_fraction"].append(mapped)
            sender.join(60)
            if not ok:
                raise AssertionError(f"{mode}: received bytes differ from the pattern")
        t0 = time.thread_time()
        for _ in range(max(1, total // chunk)):
            w = np.require(ro, requirements=["W"])  # what Dask does to a read-only frame
        cpu = time.thread_time() - t0
        assert w.flags.writeable and np.array_equal(w[:4096], ro[:4096])
        out["readonly_copy_cpu_s_per_gb"].append(cpu / (max(1, total // chunk) * chunk / 1e9))
    return {"policy_mb": args.policy_mb, "runs": out}


# -- reporting ----------------------------------------------------------------------------------


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values):.{digits}f} "
            f"[{min(values):.{digits}f}-{max(values):.{digits}f}]")


def report(result: dict[str, Any]) -> str:
    lines: list[str] = []
    tr = result.get("transfer")
    if tr:
        lines.append(f"transfer: {tr['arrays']} x {tr['size_mb']} MiB from worker A to worker B, "
                     f"{tr['reps']} reps; median [min-max]")
        cols = ("wall_s", "gb_per_s", "sender_cpu_s_per_gb", "receiver_cpu_s_per_gb")
        lines.append(f"{'variant':<10} " + " ".join(f"{c:>26}" for c in cols)
                     + "   sender/recv CPU vs tcp")
        base = tr["runs"].get("tcp")
        for name, runs in tr["runs"].items():
            row = " ".join(f"{_fmt([r[c] for r in runs]):>26}" for c in cols)
            ratio = ""
            if base and name != "tcp":
                s = (statistics.median(r["sender_cpu_s_per_gb"] for r in runs)
                     / statistics.median(r["sender_cpu_s_per_gb"] for r in base))
                r_ = (statistics.median(r["receiver_cpu_s_per_gb"] for r in runs)
                      / statistics.median(r["receiver_cpu_s_per_gb"] for r in base))
                ratio = f"   {s:.2f}x / {r_:.2f}x"
            lines.append(f"{name:<10} {row}{ratio}")
        for name, per_worker in tr["zc_worker_stats"].items():
            for worker, st in sorted(per_worker.items()):
                lines.append(f"  {name} {worker}: sent {st.get('bytes_sent', 0) / 1e9:.2f} GB, "
                             f"MSG_ZEROCOPY {st.get('bytes_zerocopy', 0) / 1e9:.2f} GB "
                             f"(kernel-copied {st.get('bytes_zc_copied', 0) / 1e9:.2f} GB), "
                             f"in flight {st.get('bytes_in_flight', 0)} B")
    po = result.get("policy")
    if po:
        r = po["runs"]
        lines.append(f"policy: {po['policy_mb']} MiB streamed over loopback by a forced "
                     "MSG_ZEROCOPY sender; receiving thread CPU s/GB, median [min-max]")
        lines.append(f"  recv_into writeable buffer (zc:// today): "
                     f"{_fmt(r['recv_into_cpu_s_per_gb'])}")
        lines.append(f"  mapped pages, kept read-only (no copy):   "
                     f"{_fmt(r['map_only_cpu_s_per_gb'])}")
        lines.append(f"  mapped pages + Dask's copy of the frame:  "
                     f"{_fmt(r['map_then_copy_cpu_s_per_gb'])}  "
                     f"(mapped fraction {_fmt(r['mapped_fraction'], 2)})")
        lines.append(f"  the copy alone (np.require W):           "
                     f"{_fmt(r['readonly_copy_cpu_s_per_gb'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=32, help="MiB per array (default 32)")
    parser.add_argument("--arrays", type=int, default=4, help="arrays per transfer (default 4)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--variants", default="tcp,zc,zc-forced",
                        help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--policy-mb", type=float, default=256,
                        help="MiB streamed per policy measurement (default 256)")
    parser.add_argument("--sections", default="transfer,policy",
                        help="comma-separated: transfer, policy")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args(argv)
    for v in args.variants.split(","):
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}")
    sections = set(args.sections.split(","))
    result: dict[str, Any] = {"argv": list(sys.argv), "pid": os.getpid(),
                              "uname": " ".join(os.uname())}
    if "transfer" in sections:
        result["transfer"] = transfer_section(args)
    if "policy" in sections:
        result["policy"] = policy_section(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
