"""Smoke test of scripts/dask_bench.py with tiny volumes (figures are not asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ZEROCOPY_SKIP

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "dask_bench.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dask_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(ZEROCOPY_SKIP is not None, reason=ZEROCOPY_SKIP or "")
def test_bench_runs_both_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load()
    out = tmp_path / "r.json"
    assert bench.main(["--size-mb", "2", "--arrays", "2", "--reps", "1", "--variants", "tcp,zc",
                       "--policy-mb", "16", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tcp " in text and "zc " in text and "recv_into" in text
    result = json.loads(out.read_text())
    assert set(result["transfer"]["runs"]) == {"tcp", "zc"}
    assert all(len(v) == 1 for v in result["transfer"]["runs"].values())
    assert len(result["policy"]["runs"]["recv_into_cpu_s_per_gb"]) == 1
