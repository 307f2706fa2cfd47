"""The client side of ``test_dask_netns_cluster``: run inside namespace A as a script.

Usage: ``python netns_driver.py SCHEDULER_ADDRESS``. Expects two workers named ``a`` (next to the
scheduler) and ``b`` (in the other namespace, behind the veth pair). Checks every result exactly,
prints one JSON object with what it saw, and exits non-zero on any mismatch.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import dask.array as da
import numpy as np
from distributed import Client, wait

from zcnet._core.pattern import StreamPattern

SCATTER_BYTES = 200 * 1024 * 1024
KILL_BYTES = 160 * 1024 * 1024


def pattern(offset: int, nbytes: int) -> np.ndarray:
    """``nbytes`` of the stream pattern starting at ``offset`` (a fresh writeable array)."""
    p = StreamPattern(max_block=8 << 20)
    out = np.empty(nbytes, dtype="u1")
    for pos in range(0, nbytes, p.max_block):
        n = min(p.max_block, nbytes - pos)
        out[pos : pos + n] = np.frombuffer(p.block(offset + pos, n), dtype="u1")
    return out


def matches(arr: np.ndarray, offset: int) -> bool:
    """Whether every byte of ``arr`` is the pattern's at ``offset``."""
    return StreamPattern(max_block=8 << 20).matches(offset, memoryview(arr).cast("B"))


def make(offset: int, nbytes: int) -> np.ndarray:
    return pattern(offset, nbytes)


def check_on_worker(arr: np.ndarray, offset: int) -> tuple[int, bool]:
    return arr.nbytes, matches(arr, offset)


def transfer_incoming(dask_worker: Any) -> int:
    return int(dask_worker.state.transfer_incoming_bytes)


def main(address: str) -> None:
    out: dict[str, Any] = {}
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        by_name = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
        a, b = by_name["a"], by_name["b"]
        out["workers"] = {"a": a, "b": b}

        # a dask.array reduction whose transposed chunks cross the veth pair both ways
        n = 2048
        x = da.arange(n * n, dtype="i8", chunks=n * n // 8).reshape(n, n).rechunk(n // 4)
        total = int((x + x.T).sum().compute())
        expect = 2 * (n * n) * (n * n - 1) // 2
        out["reduction"] = {"got": total, "expected": expect}
        assert total == expect, out

        # scatter 200 MiB to the worker behind the veth, pull it to the other one, gather it
        arr = pattern(7, SCATTER_BYTES)
        fut = client.scatter(arr, workers=[b], direct=False)
        nbytes, ok = client.submit(check_on_worker, fut, 7, workers=[a], pure=False).result()
        back = client.gather(fut)
        out["scatter_gather"] = {"nbytes": nbytes, "on_a": ok,
                                 "gathered_exact": bool(np.array_equal(back, arr))}
        assert nbytes == SCATTER_BYTES and ok and out["scatter_gather"]["gathered_exact"], out
        del arr, back, fut

        # kill worker b while a pulls data from it; the scheduler must recompute and finish
        pid_b = client.run(os.getpid, workers=[b])[b]
        src = client.submit(make, 11, KILL_BYTES, workers=[b], allow_other_workers=True,
                            pure=False)
        wait(src, timeout=60)
        dst = client.submit(check_on_worker, src, 11, workers=[a], pure=False)
        deadline = time.monotonic() + 60
        while client.run(transfer_incoming, workers=[a])[a] == 0 and not dst.done():
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.005)
        out["killed_mid_transfer"] = not dst.done()
        os.kill(pid_b, signal.SIGKILL)
        nbytes, ok = dst.result(timeout=120)
        out["after_kill"] = {"nbytes": nbytes, "exact": ok,
                             "workers": sorted(client.scheduler_info()["workers"])}
        assert nbytes == KILL_BYTES and ok, out
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
