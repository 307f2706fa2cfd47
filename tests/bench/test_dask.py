"""``zcnet bench dask``: tcp:// vs zc:// between two Dask workers (argument errors, skip, tiny run).

The tiny run moves 2 arrays of 4 MB per variant; every byte is checked on the receiving worker
(``zcnet.bench.dask.verify``), outside the timed window.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from zcnet.bench.cli import build_parser, main
from zcnet.bench.dask import DaskParams, dask_unavailable_reason
from zcnet.bench.results import DaskRun, DaskSummary, Report, shape_errors

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")


@pytest.mark.parametrize(("argv", "message"), [
    (["bench", "dask", "--variants", "udp"], "invalid choice(s) udp"),
    (["bench", "dask", "--arrays", "0"], "must be a positive integer"),
    (["bench", "dask", "--array-size", "1X"], "invalid size '1X'"),
])
def test_argument_errors(argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["dask", "--bytes", "1M"], "dask takes --array-size and --arrays"),
    (["dask", "--warmup", "1M"], "dask takes --array-size and --arrays"),
    (["dask", "--source", "1M"], "--source applies to stream and rx only"),
    (["dask", "--array-size", "2G"], "--array-size: at most 1G"),
])
def test_inconsistent_arguments(argv: list[str], message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_parsed_values() -> None:
    from zcnet.bench.cli import _params

    args = build_parser().parse_args(["bench", "dask", "--array-size", "8M", "--arrays", "3",
                                      "--variants", "tcp,zc-forced", "--reps", "2"])
    [(name, p)] = _params(args, "dask")
    assert name == "dask"
    assert (p.array_bytes, p.arrays, p.variants, p.reps) == (8 << 20, 3, ("tcp", "zc-forced"), 2)
    assert DaskParams().variants == ("tcp", "zc", "zc-forced")


def test_missing_distributed_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "distributed" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    reason = dask_unavailable_reason()
    assert reason is not None and "distributed" in reason and "zcnet[dask]" in reason
    out = tmp_path / "d.json"
    assert main(["dask", "--no-progress", "--no-table", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert shape_errors(report, Report) == []
    exp = report["experiments"][0]
    assert exp["status"] == "skipped"
    assert "distributed" in exp["reason"]
    assert exp["runs"] == []


def test_tiny_transfer(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="distributed (the [dask] extra) is not installed")
    pytest.importorskip("numpy", reason="numpy (the [dask] extra) is not installed")
    out = tmp_path / "d.json"
    assert main(["dask", "--array-size", "4M", "--arrays", "2", "--reps", "2",
                 "--variants", "tcp,zc", "--no-progress", "--no-table", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert shape_errors(report, Report) == []
    exp = report["experiments"][0]
    assert exp["status"] == "ok", exp["notes"]
    for i, run in enumerate(exp["runs"]):
        assert shape_errors(run, DaskRun, f"runs[{i}]") == []
    for i, row in enumerate(exp["summary"]):
        assert shape_errors(row, DaskSummary, f"summary[{i}]") == []
    assert exp["parameters"]["protocols"] == {"tcp": "tcp://", "zc": "zc://"}
    assert len(exp["runs"]) == 4
    for run in exp["runs"]:
        assert run["ok"], run["error"]
        assert run["verified"] == "full"
        assert run["bytes"] == 2 * (4 << 20)
        assert run["sender"]["worker"] != run["receiver"]["worker"]
        assert run["metrics"]["throughput_gbit_s"] > 0
        assert run["metrics"]["sender_cpu_s_per_gb"] is not None
    entries = {e["variant"]: e for e in exp["summary"]}
    assert set(entries) == {"tcp", "zc"}
    assert entries["tcp"]["sender_cpu_vs_tcp_pct"] in (100.0, None)
    assert "receiver_cpu_vs_tcp_pct" in entries["zc"]
    assert "zc" in exp["zc_worker_stats"]
