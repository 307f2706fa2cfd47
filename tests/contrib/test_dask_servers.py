"""The zc:// scheme through Dask's own entry doors: Scheduler/Worker objects and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from tests.contrib.conftest import run
from zcnet._core.pattern import StreamPattern

HAS_EP = bool(list(entry_points(group="distributed.comm.backends", name="zc")))


def pattern_bytes(offset: int, nbytes: int) -> np.ndarray:
    pattern = StreamPattern(max_block=nbytes)
    return np.frombuffer(pattern.block(offset, nbytes), dtype="u1").copy()


def checks(arr: np.ndarray, offset: int) -> bool:
    return StreamPattern(max_block=arr.nbytes).matches(offset, memoryview(arr))


def test_scheduler_and_worker_objects() -> None:
    from distributed import Client, Scheduler, Worker

    async def main() -> None:
        async with Scheduler(protocol="zc://", host="127.0.0.1", dashboard=False,
                             dashboard_address="127.0.0.1:0") as s:
            assert s.address.startswith("zc://127.0.0.1:")
            async with Worker(s.address, nthreads=1, dashboard=False, host="127.0.0.1") as w, \
                    Client(s.address, asynchronous=True) as c:
                assert w.address.startswith("zc://127.0.0.1:")  # the scheme is inherited
                fut = c.submit(pattern_bytes, 11, 3 << 20, pure=False)
                assert await c.submit(checks, fut, 11)
                arr = await fut
                assert StreamPattern(max_block=3 << 20).matches(11, memoryview(arr))

    run(main())


@pytest.mark.skipif(not HAS_EP, reason="the zc entry point is not installed")
def test_dask_cli_scheduler_protocol_zc(tmp_path: Path) -> None:
    from distributed import Client

    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    dask_cli = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen(
        [*dask_cli, "scheduler", "--protocol", "zc", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
         "--scheduler-file", str(sched_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert time.monotonic() < deadline, "the scheduler did not start"
            assert procs[0].poll() is None, "the scheduler exited"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("zc://127.0.0.1:")
        procs.append(subprocess.Popen(
            [*dask_cli, "worker", address, "--nthreads", "1", "--no-dashboard",
             "--no-nanny", "--host", "127.0.0.1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            (worker,) = client.scheduler_info()["workers"]
            assert worker.startswith("zc://127.0.0.1:")
            fut = client.submit(pattern_bytes, 5, 2 << 20, pure=False)
            assert client.submit(checks, fut, 5).result()
            assert checks(fut.result(), 5)
    finally:
        stop_processes(procs)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop ``procs`` newest first: SIGINT (Dask's orderly shutdown), then SIGKILL after 20 s."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
