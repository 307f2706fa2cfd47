"""``zcnet bench rx``: asyncio receive modes (streams, BufferedProtocol, zcnet.aio) on two loops.

Tiny runs with ``--verify all``: every byte is checked by each receive mode.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from zcnet.bench.cli import main
from zcnet.bench.modes import ASYNCIO_RECEIVE_MODES, RECEIVE_MODES, split_loop

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")

TINY = ["--bytes", "2M", "--warmup", "512K", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table"]


def test_mode_names() -> None:
    assert split_loop("recv_into") == ("recv_into", None)
    assert split_loop("zcnet") == ("zcnet", None)
    assert split_loop("zcnet-aio") == ("zcnet-aio", "asyncio")
    assert split_loop("zcnet-aio-uvloop") == ("zcnet-aio", "uvloop")
    assert split_loop("asyncio-buffered-uvloop") == ("asyncio-buffered", "uvloop")
    for mode in ASYNCIO_RECEIVE_MODES:
        assert mode in RECEIVE_MODES
        assert mode + "-uvloop" in RECEIVE_MODES


def _run(tmp_path: Path, modes: list[str]) -> dict[str, object]:
    out = tmp_path / "rx.json"
    assert main(["rx", "--recv-modes", ",".join(modes), *TINY, "--json", str(out)]) == 0
    exp: dict[str, object] = json.loads(out.read_text())["experiments"][0]
    return exp


def test_asyncio_modes_on_both_loops(tmp_path: Path) -> None:
    pytest.importorskip("uvloop", reason="uvloop (the [uvloop] extra) is not installed")
    modes = ["recv_into", *ASYNCIO_RECEIVE_MODES,
             *(m + "-uvloop" for m in ASYNCIO_RECEIVE_MODES)]
    exp = _run(tmp_path, modes)
    assert exp["status"] == "ok"
    runs = exp["runs"]
    assert isinstance(runs, list)
    assert {r["recv_mode"] for r in runs} == set(modes)
    for run in runs:
        assert run["ok"], run["error"]
        receiver = run["receiver"]
        assert receiver["verified"] == "full"
        assert receiver["bytes"] == 2 << 20
        assert run["loop"] == split_loop(run["recv_mode"])[1]
        assert run["metrics"]["receiver_cpu_s_per_gb"] is not None
        assert run["metrics"]["throughput_gbit_s"] > 0
        if run["recv_mode"].startswith("zcnet-aio"):
            assert receiver["loop"] in ("asyncio", "uvloop")
            assert receiver["bytes_mapped"] + receiver["bytes_copied"] == 2 << 20
            assert receiver["rx_mode"] in ("zerocopy", "copy")
    summary = exp["summary"]
    assert isinstance(summary, list)
    assert {e["recv_mode"] for e in summary} == set(modes)


def test_uvloop_missing_is_skipped_with_a_note(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # workers fork: they inherit it
    exp = _run(tmp_path, ["asyncio-buffered", "asyncio-buffered-uvloop", "zcnet-aio-uvloop"])
    assert exp["status"] == "ok"
    runs = exp["runs"]
    assert isinstance(runs, list)
    ran = {r["recv_mode"] for r in runs if r["ok"]}
    assert ran == {"asyncio-buffered"}
    notes = exp["notes"]
    assert isinstance(notes, list)
    for mode in ("asyncio-buffered-uvloop", "zcnet-aio-uvloop"):
        assert any(n.startswith(f"receive mode {mode} unavailable") and "uvloop" in n
                   and "zcnet[uvloop]" in n for n in notes), notes
