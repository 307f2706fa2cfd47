"""A cluster laid out as two hosts would run it, on ``tcp://`` and on ``zc://``.

Namespace A holds the scheduler, worker ``a`` and the client (``netns_driver.py``); namespace B
holds worker ``b``; they are joined by a veth pair (198.19.0.1 <-> 198.19.0.2, addresses that exist
only inside the two namespaces, no route out). B's side of the pair is shaped to 1 Gbit/s so that a
transfer lasts long enough to kill worker ``b`` in the middle of it. The driver computes a
dask.array reduction, scatters 200 MiB to ``b`` and gathers it back, and kills ``b`` while ``a``
pulls 160 MiB from it; every result is checked exactly and the cluster must recover (the data is
recomputed on ``a``) on both schemes alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import requires_netns
from tests.contrib.test_dask_conformance import SCHEMES
from tests.contrib.test_dask_servers import stop_processes
from zcnet.netns import VETH_ADDR_A, VETH_ADDR_B, Netns

ROOT = Path(__file__).resolve().parents[2]


@requires_netns
@pytest.mark.parametrize("scheme", SCHEMES)
def test_two_namespace_cluster(scheme: str, tmp_path: Path) -> None:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    dask_cli = [sys.executable, "-m", "dask"]
    sched_file = tmp_path / "scheduler.json"
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("s", "a", "b")}  # noqa: SIM115
    with Netns(lo_mtu=None) as ns_a:
        ns_b = ns_a.add_veth_peer()  # deleted with ns_a
        # shape b -> a so that the kill below lands in the middle of a transfer
        subprocess.run(ns_b.exec_argv(["tc", "qdisc", "add", "dev", "zveth-peer", "root", "tbf",
                                       "rate", "1gbit", "burst", "256kb", "latency", "100ms"]),
                       check=True, capture_output=True)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(subprocess.Popen(ns_a.exec_argv(
                [*dask_cli, "scheduler", "--protocol", scheme, "--host", VETH_ADDR_A,
                 "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)]),
                env=env, stdout=logs["s"], stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 60
            while not sched_file.exists() or not sched_file.read_text().strip():
                assert time.monotonic() < deadline, "the scheduler did not start"
                assert procs[0].poll() is None, (tmp_path / "s.log").read_text()
                time.sleep(0.1)
            address = json.loads(sched_file.read_text())["address"]
            assert address == f"{scheme}://{VETH_ADDR_A}:{address.rsplit(':', 1)[1]}"
            for name, ns, host in (("a", ns_a, VETH_ADDR_A), ("b", ns_b, VETH_ADDR_B)):
                procs.append(subprocess.Popen(ns.exec_argv(
                    [*dask_cli, "worker", address, "--name", name, "--nthreads", "1",
                     "--no-nanny", "--no-dashboard", "--host", host]),
                    env=env, stdout=logs[name], stderr=subprocess.STDOUT))
            driver = subprocess.run(
                ns_a.exec_argv([sys.executable, str(ROOT / "tests/contrib/netns_driver.py"),
                                address]),
                env=env, capture_output=True, timeout=300, check=False)
            worker_b = procs[2]
            assert driver.returncode == 0, (
                driver.stdout.decode()[-3000:] + driver.stderr.decode()[-6000:])
            result = json.loads(driver.stdout.decode().strip().splitlines()[-1])
        finally:
            stop_processes(procs)
            for f in logs.values():
                f.close()
    assert result["workers"]["a"].startswith(f"{scheme}://{VETH_ADDR_A}:")
    assert result["workers"]["b"].startswith(f"{scheme}://{VETH_ADDR_B}:")
    assert result["reduction"]["got"] == result["reduction"]["expected"]
    assert result["scatter_gather"] == {"nbytes": 200 * 1024 * 1024, "on_a": True,
                                        "gathered_exact": True}
    assert result["killed_mid_transfer"] is True
    assert result["after_kill"]["exact"] is True
    assert result["after_kill"]["workers"] == [result["workers"]["a"]]
    assert worker_b.returncode == -signal.SIGKILL
