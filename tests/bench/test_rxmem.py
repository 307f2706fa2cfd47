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
    """Groups this process created and did not remove (names carry the creator's pid; other
    sessions may run benchmarks at the same time)."""
    mine = f"-{os.getpid()}-"
    out = []
    for mount in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        if os.path.isdir(mount):
            out += [n for n in os.listdir(mount) if n.startswith(PREFIX) and mine in n]
    return out


def _netns_leftovers() -> list[str]:
    """Namespaces this process created and did not delete (names carry the creator's pid)."""
    try:
        return [n for n in os.listdir("/run/netns")
                if n.startswith("zcbench") and f"-{os.getpid()}-" in n]
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
    assert mapped["held_mapped_mib"] >= 7.5, by_mode["mapped"]["receiver"]["copy_reasons"]
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
    pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")
    import io

    from rich.console import Console

    from zcnet.bench.report import build_report, print_tables

    out = io.StringIO()
    print_tables(build_report([res], {"experiment": "rxmem"}), Console(file=out, width=200))
    assert "rxmem: skipped — creating a memory cgroup needs root" in out.getvalue()


@pytest.mark.parametrize(("argv", "message"), [
    (["rxmem", "--sizes", "1500K"], "rxmem holds whole MiB"),
    (["rxmem", "--sizes", "8G"], "at most 4G held"),
    (["rxmem", "--bytes", "4M"], "rxmem takes --sizes"),
    (["rxmem", "--warmup", "4M"], "rxmem takes --sizes"),
    (["rxmem", "--source", "4M"], "--source applies to stream and rx only"),
    (["rxmem", "--limit-pct", "100"], "must be below the size"),
    (["rxmem", "--limit-pct", "10", "--modes", "mapped,copied"], "applies to the limit-copy"),
])
def test_argument_errors(argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from zcnet.bench.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "zcnet bench rxmem: error:" in err and message in err


@pytest.mark.parametrize(("argv", "message"), [
    (["bench", "rxmem", "--modes", "mapped,nosuch"], "invalid choice(s) nosuch"),
    (["bench", "rxmem", "--limit-pct", "0"], "must be a positive integer"),
    (["bench", "rxmem", "--sizes", "4X"], "invalid size '4X'"),
])
def test_parser_errors(argv: list[str], message: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    from zcnet.bench.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@requires_root_setup
def test_cli_json_table_and_plot(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")
    pytest.importorskip("matplotlib", reason="the [bench] extra (matplotlib) is not installed")
    from tests.bench.test_cli import _check_report
    from zcnet.bench.cli import main

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["rxmem", "--sizes", "4M", "--modes", "mapped,limit-wait", "--limit-pct", "50",
                 "--no-progress", "--json", str(out), "--plot", str(png)]) == 0
    assert "rxmem: a receiver in a memory cgroup" in capsys.readouterr().out
    report = json.loads(out.read_text())
    _check_report(report, ["rxmem"])
    exp = report["experiments"][0]
    assert exp["parameters"]["sizes_mib"] == [4] and exp["parameters"]["limit_pct"] == 50
    assert {r["mode"] for r in exp["runs"]} == {"mapped", "limit-wait"}
    wait = next(r for r in exp["runs"] if r["mode"] == "limit-wait")
    assert wait["limit_bytes"] == 2 << 20 and wait["metrics"]["zcnet_mapped_peak_mib"] <= 2
    assert png.stat().st_size > 10_000
    assert not _cgroup_leftovers() and not _netns_leftovers()
