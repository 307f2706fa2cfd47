"""``zcnet bench rpc --mmap-churn``: the lock-path share (pure), churn ratios, tiny real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zcnet.bench import rpcchurn
from zcnet.bench.cli import main
from zcnet.bench.common import no_progress
from zcnet.bench.lockpath import is_lock_path, lock_path_share
from zcnet.bench.mmapchurn import churn_unavailable_reason
from zcnet.bench.profile import perf_unavailable_reason
from zcnet.bench.rpcchurn import RpcChurnParams, run_rpc_churn

TINY = {"connections": 4, "requests": 30, "warmup": 2, "reps": 1, "verify": "all"}


@pytest.mark.parametrize(("symbol", "expected"), [
    ("lock_vma_under_rcu", True), ("find_tcp_vma", True), ("down_read", True),
    ("rwsem_down_read_slowpath", True), ("rwsem_optimistic_spin", True), ("osq_lock", True),
    ("down_write_killable", True), ("up_write.isra.0", True), ("vma_start_read", True),
    ("tcp_zerocopy_receive", False), ("_copy_to_iter", False), ("down_reader", False),
])
def test_is_lock_path(symbol: str, expected: bool) -> None:
    assert is_lock_path(symbol) is expected


def test_lock_path_share() -> None:
    pct, hits = lock_path_share({"tcp_zerocopy_receive": 10.0, "down_read": 0.5,
                                 "rwsem_down_read_slowpath": 1.25, "up_read": 0.25})
    assert pct == 2.0
    assert list(hits) == ["rwsem_down_read_slowpath", "down_read", "up_read"]
    assert lock_path_share({}) == (0, {})


def _row(variant: str, churn: str, rps: float, cpu: float, p99: float) -> dict[str, Any]:
    def stat(v: float) -> dict[str, float]:
        return {"median": v, "min": v, "max": v, "n": 1}

    return {"rx_variant": variant, "churn": churn,
            "metrics": {"requests_per_s": stat(rps), "server_cpu_us_per_req": stat(cpu),
                        "latency_p99_us": stat(p99)}}


def test_churn_rows_relative_to_the_same_variant() -> None:
    rows = [_row("windows", "none", 100, 10, 50), _row("windows", "mmap", 100, 11, 50),
            _row("fresh", "none", 80, 20, 40), _row("fresh", "mmap", 40, 30, 160),
            _row("fresh", "syscall", 50, 25, 80)]
    rpcchurn._relative(rows)
    assert rows[1]["requests_per_s_vs_no_churn_pct"] == 100
    assert rows[1]["server_cpu_vs_no_churn_pct"] == pytest.approx(110)
    assert "requests_per_s_vs_control_pct" not in rows[1]   # no control row for windows
    assert rows[3]["requests_per_s_vs_no_churn_pct"] == 50
    assert rows[3]["latency_p99_vs_no_churn_pct"] == 400
    assert rows[3]["requests_per_s_vs_control_pct"] == 80
    assert rows[3]["server_cpu_vs_control_pct"] == 120
    assert rows[3]["latency_p99_vs_control_pct"] == 200
    assert rows[4]["requests_per_s_vs_no_churn_pct"] == 62.5
    assert "requests_per_s_vs_control_pct" not in rows[4]
    assert "requests_per_s_vs_no_churn_pct" not in rows[0]


def test_plan() -> None:
    p = RpcChurnParams(reps=2, verify="sample", lock_profile=False)
    assert rpcchurn.plan_count(p) == 6 + 2 * 6
    assert rpcchurn.plan_count(RpcChurnParams(reps=1, verify="all")) == 6 + 4  # 4 profiled


@pytest.mark.skipif(churn_unavailable_reason() is not None,
                    reason=churn_unavailable_reason() or "")
def test_tiny_run_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")
    pytest.importorskip("matplotlib", reason="the [bench] extra (matplotlib) is not installed")
    from tests.bench.test_cli import _check_report

    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["rpc", "--mmap-churn", "--connections", "4", "--requests", "30", "--reps", "1",
                 "--verify", "all", "--no-progress", "--json", str(out), "--plot",
                 str(png)]) == 0
    assert "rpc --mmap-churn:" in capsys.readouterr().out
    report = json.loads(out.read_text())
    _check_report(report, ["rpc-churn"])
    res = report["experiments"][0]
    for run in res["runs"]:
        assert run["verified"] == "full" and run["metrics"]["mapped_pct"] == 100.0  # MSS 4096
        # (a tiny run may end before the churn thread completed an iteration)
        assert (run["metrics"]["churn_per_s"] is not None) == (run["churn"] != "none")
    rows = {(e["rx_variant"], e["churn"]): e for e in res["summary"]}
    assert set(rows) == {(v, c) for v in ("windows", "fresh") for c in rpcchurn.CHURNS}
    assert rows[("fresh", "mmap")]["requests_per_s_vs_no_churn_pct"] is not None
    assert rows[("windows", "syscall")]["requests_per_s_vs_no_churn_pct"] is not None
    assert rows[("windows", "mmap")]["requests_per_s_vs_control_pct"] is not None
    if perf_unavailable_reason() is None:
        assert res["profile_unavailable"] is None
        assert {(q["rx_variant"], q["churn"]) for q in res["profiles"]} == {
            (v, c) for v in ("windows", "fresh") for c in ("none", "mmap")}
        for q in res["profiles"]:
            assert q["ok"] and q["receiver"]["error"] is None, q
            assert q["lock_pct"] is not None and q["receiver"]["samples"] > 0
            assert q["lock_pct"] == pytest.approx(sum(e["pct"] for e in q["receiver"]["top"]))
            assert rows[(q["rx_variant"], q["churn"])]["lock_path_pct"] == q["lock_pct"]
    else:
        assert res["profile_unavailable"] and not res["profiles"]
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(("argv", "message"), [
    (["rpc", "--mmap-churn", "--bytes", "1M"], "rpc takes --requests and --size"),
    (["rpc", "--mmap-churn", "--source", "4M"], "--source applies to stream and rx only"),
    (["rpc", "--mmap-churn", "--size", "2M"], "--size: at most 1M"),
])
def test_argument_errors(argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "zcnet bench rpc: error:" in err and message in err


def test_parsed_values() -> None:
    from zcnet.bench.cli import _params, build_parser

    args = build_parser().parse_args(["bench", "rpc", "--mmap-churn", "--requests", "500"])
    [(name, params)] = _params(args, "rpc")
    assert name == "rpc-churn" and params.requests == 500 and params.connections == 100
    [(name, _)] = _params(build_parser().parse_args(["bench", "rpc"]), "rpc")
    assert name == "rpc"
    quick = [n for n, _ in _params(build_parser().parse_args(["bench", "quick"]), "quick")]
    assert "rpc-churn" in quick and "rxmem" in quick


def test_without_the_extension_churn_rows_are_unavailable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    why = "the mmap churn thread needs zcnet's compiled extension (test)"
    no_perf = "perf not found on PATH (test)"
    monkeypatch.setattr(rpcchurn, "churn_unavailable_reason", lambda: why)
    monkeypatch.setattr(rpcchurn, "perf_unavailable_reason", lambda: no_perf)
    res = run_rpc_churn(RpcChurnParams(**TINY, lock_profile=True), no_progress)
    assert res["status"] == "ok"
    assert any(why in n for n in res["notes"])
    assert f"no lock-path profile: {no_perf}" in res["notes"]
    assert res["profile_unavailable"] == no_perf and res["profiles"] == []
    rows = {(e["rx_variant"], e["churn"]): e for e in res["summary"]}
    for churn in ("mmap", "syscall"):
        assert rows[("windows", churn)]["unavailable"] == why
        assert not rows[("windows", churn)]["metrics"]
    assert rows[("windows", "none")]["metrics"]["requests_per_s"]["median"] > 0
    assert [r for r in res["runs"] if r["ok"]]
