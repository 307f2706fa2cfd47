#!/usr/bin/env python3
"""Benchmark zcnet's buffer pools: acquire+release throughput, and the huge-page fill cost.

    python scripts/pool_bench.py                 # per-thread vs locked pool, 1/2/4 threads
    python scripts/pool_bench.py --thp           # first-touch cost of slabs with/without THP

Throughput: each thread loops ``acquire(size)`` then ``release()`` (``--batch`` leases held at a
time); the two pools alternate within each repetition; the figure is the median over
repetitions of total operations per second (min-max in brackets), plus the ratio of medians.
THP: fills ``--thp-mib`` MiB of fresh 4 MiB leases (the first touch faults the pages in) with and
without ``MADV_HUGEPAGE`` slabs, and reports CPU time per GiB and AnonHugePages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from zcnet.pool import BufferPool, LockedFreeListPool

PoolFactory = Callable[[], BufferPool | LockedFreeListPool]


def run_threads(pool: BufferPool | LockedFreeListPool, threads: int, iters: int, size: int,
                batch: int) -> float:
    """Operations (acquire+release pairs) per second over all threads."""
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        acquire = pool.acquire
        for lease in [acquire(size) for _ in range(batch)]:  # warm this thread's list
            lease.release()
        barrier.wait()
        for _ in range(iters // batch):
            held = [acquire(size) for _ in range(batch)]
            for lease in held:
                lease.release()
        barrier.wait()

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    barrier.wait()
    elapsed = time.perf_counter() - t0
    for t in ts:
        t.join()
    return threads * (iters // batch) * batch / elapsed


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs) / 1e3:8.0f} k/s [{min(xs) / 1e3:.0f}-{max(xs) / 1e3:.0f}]"


def throughput(args: argparse.Namespace) -> None:
    kinds: dict[str, PoolFactory] = {
        "per-thread": lambda: BufferPool(max_size=1 << 20, slab_bytes=4 << 20),
        "locked": lambda: LockedFreeListPool(max_size=1 << 20, slab_bytes=4 << 20),
    }
    print(f"acquire+release of {args.size} B, {args.iters} per thread, batch {args.batch}, "
          f"{args.reps} repetitions (median [min-max])")
    print(f"{'threads':>7} {'per-thread pool':>28} {'locked-list pool':>28} {'ratio':>6}")
    for threads in args.threads:
        res: dict[str, list[float]] = {k: [] for k in kinds}
        for rep in range(args.reps):
            order = list(kinds) if rep % 2 == 0 else list(reversed(kinds))
            for name in order:
                with kinds[name]() as pool:
                    res[name].append(run_threads(pool, threads, args.iters, args.size,
                                                 args.batch))
        ratio = statistics.median(res["per-thread"]) / statistics.median(res["locked"])
        print(f"{threads:>7} {fmt(res['per-thread']):>28} {fmt(res['locked']):>28} "
              f"{ratio:5.2f}x")


def anon_huge_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


def thp(args: argparse.Namespace) -> None:
    lease_size = 4 << 20
    n = max(1, (args.thp_mib << 20) // lease_size)
    src = bytes(range(256)) * (lease_size // 256)
    res: dict[bool, list[float]] = {False: [], True: []}
    huge: dict[bool, int] = {False: 0, True: 0}
    for rep in range(args.reps):
        for hp in ((False, True) if rep % 2 == 0 else (True, False)):
            with BufferPool(max_size=lease_size, slab_bytes=lease_size, hugepages=hp) as pool:
                leases = [pool.acquire(lease_size) for _ in range(n)]
                base = anon_huge_kib()
                c0 = time.process_time()
                for lease in leases:
                    lease.view[:] = src
                cpu = time.process_time() - c0
                huge[hp] = anon_huge_kib() - base
                for lease in leases:
                    assert lease.view[: len(src)] == src
                    lease.release()
            res[hp].append(cpu / (n * lease_size / 2**30))
    print(f"first touch of {n} x 4 MiB fresh leases, {args.reps} repetitions "
          "(CPU s per GiB, median [min-max])")
    for hp in (False, True):
        xs = res[hp]
        print(f"  MADV_HUGEPAGE={hp!s:5}: {statistics.median(xs):.3f} "
              f"[{min(xs):.3f}-{max(xs):.3f}] s/GiB, AnonHugePages +{huge[hp] // 1024} MiB")
    ratio = statistics.median(res[True]) / statistics.median(res[False])
    print(f"  ratio (huge / small pages): {ratio:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--iters", type=int, default=100_000, help="acquire+release per thread")
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--batch", type=int, default=4, help="leases held at once per thread")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--thp", action="store_true", help="measure the huge-page fill cost instead")
    ap.add_argument("--thp-mib", type=int, default=256)
    args = ap.parse_args()
    if args.thp:
        thp(args)
    else:
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
