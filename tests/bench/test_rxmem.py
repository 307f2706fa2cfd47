"""``zcnet bench rxmem``: held receive memory, mapped vs copied; tiny real runs, every byte checked.

The runs create a memory cgroup and a namespace of their own (root needed: skipped otherwise,
with the reason) and must remove both, also when a run fails.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from zcnet.bench import rxmem
from zcnet.bench.common import no_progress
from zcnet.bench.memcg import PREFIX, memcg_unavailable_reason
from zcnet.bench.rxmem import METRICS, RxmemParams, derive_metrics, run_rxmem
from zcnet.netns import netns_unavailable_reason

SKIP = memcg_unavailable_reason() or netns_unavailable_reason()
requires_root_setup = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
MIB = 1 << 20


def _cgroup_leftovers() -> list[str]:
    out = []
    for mount in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        if os.path.isdir(mount):
            out += [n for n in os.listdir(mount) if n.startswith(PREFIX)]
    return out


def _netns_leftovers() -> list[str]:
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith("zcbench")]
    except FileNotFoundError:
        return []


def test_derive_metrics_pure() -> None:
    rcv: dict[str, Any] = {
        "before": {"cgroup_usage": 1 * MIB, "cgroup_anon": 0, "cgroup_file_mapped": 0,
                   "cgroup_sock": None, "sockstat_tcp": 4096, "rmem_alloc": None,
                   "rss": 10 * MIB, "rss_anon": 8 * MIB, "rss_file": 2 * MIB},
        "at_hold": {"cgroup_usage": 3 * MIB, "cgroup_anon": 2 * MIB, "cgroup_file_mapped": 0,
                    "cgroup_sock": None, "sockstat_tcp": 4096, "rmem_alloc": 0,
                    "rss": 20 * MIB, "rss_anon": 10 * MIB, "rss_file": 10 * MIB,
                    "zcnet_mapped": 8 * MIB},
        "held_mapped": 8 * MIB, "held_copied": 2 * MIB, "received": 10 * MIB,
        "zcnet_mapped_peak": 8 * MIB,
    }
    m = derive_metrics(rcv, 8 * MIB)
    assert set(m) == set(METRICS)
    assert m["held_mib"] == 10 and m["held_mapped_mib"] == 8 and m["held_copied_mib"] == 2
    assert m["cgroup_charge_mib"] == 2 and m["cgroup_sock_mib"] is None
    assert m["rss_file_mib"] == 8 and m["zcnet_mapped_mib"] == 8
    assert m["unaccounted_mib"] == 0 and m["limit_mib"] == 8 and m["sockstat_tcp_mib"] == 0


def test_plan_and_limits() -> None:
    p = RxmemParams(sizes_mib=(4, 8), reps=2)
    assert rxmem.plan_count(p) == 2 * 2 * 4
    assert rxmem._limit(p, "mapped", 8 * MIB) is None
    assert rxmem._limit(p, "limit-copy", 8 * MIB) == 2 * MIB
    assert rxmem._limit(RxmemParams(limit_pct=1), "limit-wait", 64 * 1024) == 4096


@requires_root_setup
def test_tiny_run_all_modes() -> None:
    res = run_rxmem(RxmemParams(sizes_mib=(8,)), no_progress)
    assert res["status"] == "ok", res
    by_mode = {r["mode"]: r for r in res["runs"]}
    assert set(by_mode) == set(rxmem.MODES)
    for r in res["runs"]:
        assert r["ok"] and r["verified"] == "full", r["error"]
        assert r["receiver"]["received"] == r["receiver"]["checked"] == 8 * MIB
    mapped, copied = by_mode["mapped"]["metrics"], by_mode["copied"]["metrics"]
    # mapped pages are the process's file-mapped RSS and zcnet's account, not the cgroup's
    assert mapped["held_mapped_mib"] >= 7.5
    assert mapped["zcnet_mapped_mib"] == mapped["held_mapped_mib"]
    assert mapped["rss_file_mib"] >= 0.9 * mapped["held_mapped_mib"]
    assert mapped["cgroup_charge_mib"] < 0.5 * mapped["held_mapped_mib"]
    # copies are charged to the cgroup
    assert copied["held_copied_mib"] == 8 and copied["zcnet_mapped_mib"] == 0
    assert copied["cgroup_charge_mib"] >= 0.9 * 8
    for mode in ("limit-copy", "limit-wait"):
        m = by_mode[mode]["metrics"]
        assert m["limit_mib"] == 2
        assert m["zcnet_mapped_peak_mib"] <= 2 and m["held_mapped_mib"] <= 2
        assert m["received_mib"] == 8
    assert by_mode["limit-copy"]["metrics"]["held_mib"] == 8          # the rest copied
    assert by_mode["limit-copy"]["metrics"]["held_copied_mib"] >= 5.5
    assert by_mode["limit-wait"]["metrics"]["held_mib"] <= 2          # the rest processed
    assert by_mode["limit-wait"]["receiver"]["limit_waits"] > 0
    assert {s["mode"] for s in res["summary"]} == set(rxmem.MODES)
    assert not _cgroup_leftovers() and not _netns_leftovers()


@requires_root_setup
def test_failing_receiver_leaves_no_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> int:
        raise RuntimeError("injected failure mid-run")

    monkeypatch.setattr(rxmem, "_receive_copied", broken)  # the forked workers see it too
    res = run_rxmem(RxmemParams(sizes_mib=(4,), modes=("copied", "mapped")), no_progress)
    assert res["status"] == "partial"
    failed = [r for r in res["runs"] if not r["ok"]]
    assert [r["mode"] for r in failed] == ["copied"]
    assert "injected failure mid-run" in failed[0]["error"]
    assert not _cgroup_leftovers() and not _netns_leftovers()


@requires_root_setup
def test_orchestrator_failure_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # the receiver is running inside the cgroup when the orchestrator fails
    real_spawn = rxmem.spawn

    def spawn(func: Any, *args: Any, **kw: Any) -> Any:
        if func is rxmem.rxmem_sender:
            raise RuntimeError("injected failure while the receiver waits")
        return real_spawn(func, *args, **kw)

    monkeypatch.setattr(rxmem, "spawn", spawn)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_rxmem(RxmemParams(sizes_mib=(4,), modes=("mapped",)), no_progress)
    assert not _cgroup_leftovers() and not _netns_leftovers()


def test_skipped_without_cgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rxmem, "memcg_unavailable_reason", lambda: "creating a memory cgroup "
                        "needs root")
    res = run_rxmem(RxmemParams(sizes_mib=(4,)), no_progress)
    assert res["status"] == "skipped"
    assert res["reason"] == "creating a memory cgroup needs root"
    assert res["runs"] == []
