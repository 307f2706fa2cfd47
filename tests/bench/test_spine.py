"""The benchmark's spine with made-up data: the plan, the driver loop, the typed shapes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from zcnet.bench.driver import Item, drive, first_unavailable, plan_runs, verified
from zcnet.bench.results import (
    Experiment,
    Report,
    StreamRun,
    StreamSummary,
    shape_errors,
    unavailable_side,
)


def _cfg(mode: str, size: int = 1) -> dict[str, Any]:
    return {"size": size, "mode": mode}


def test_plan_verifies_first_rotates_modes_and_profiles_last() -> None:
    cells = [[_cfg("a", 1), _cfg("b", 1), _cfg("c", 1)], [_cfg("a", 2), _cfg("b", 2), _cfg("c", 2)]]
    items = plan_runs([cells], reps=2, verify="sample", profile=[_cfg("a", 2)])
    verify = [(i["size"], i["mode"]) for i in items if i["role"] == "verify"]
    assert verify == [(1, "a"), (1, "b"), (1, "c"), (2, "a"), (2, "b"), (2, "c")]
    assert all(i["rep"] == -1 for i in items if i["role"] != "timed")
    timed = [(i["rep"], i["size"], i["mode"]) for i in items if i["role"] == "timed"]
    # rep 0: cell 0 as listed, cell 1 rotated by one; rep 1: one more each
    assert timed == [(0, 1, "a"), (0, 1, "b"), (0, 1, "c"), (0, 2, "b"), (0, 2, "c"), (0, 2, "a"),
                     (1, 1, "b"), (1, 1, "c"), (1, 1, "a"), (1, 2, "c"), (1, 2, "a"), (1, 2, "b")]
    assert items[-1] == {"size": 2, "mode": "a", "rep": -1, "role": "profile"}
    assert [i["role"] for i in items].count("profile") == 1


def test_plan_without_sample_verification_and_per_group_rotation() -> None:
    groups = [[[_cfg("a"), _cfg("b")]], [[_cfg("x"), _cfg("y")]]]
    items = plan_runs(groups, reps=2, verify="all")
    assert [i["role"] for i in items] == ["timed"] * 8
    assert [i["mode"] for i in items] == ["a", "b", "b", "a", "x", "y", "y", "x"]


def test_verified_and_first_unavailable() -> None:
    assert verified("sample", "timed") == "spot"
    assert verified("sample", "verify") == "full"
    assert verified("all", "timed") == "full"
    assert first_unavailable(None, {"ok": True}, {"unavailable": "no uvloop"}) == "no uvloop"
    assert first_unavailable({"ok": False, "error": "ModeUnavailable: text only"}) is None
    side = unavailable_side("io_uring disabled")
    assert side == {"ok": False, "unavailable": "io_uring disabled",
                    "error": "not available: io_uring disabled"}


class _Fake:
    """A workload whose mode ``gone`` is unavailable and whose mode ``bad`` fails."""

    mode_kind = "send"

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []

    def mode(self, item: Mapping[str, Any]) -> str:
        return str(item["mode"])

    def label(self, item: Item) -> str:
        return f"fake {item['mode']}"

    def run(self, item: Item) -> dict[str, Any]:
        self.ran.append((item["mode"], item["role"]))
        mode = item["mode"]
        ok = mode not in ("gone", "bad")
        return {**item, "ok": ok, "error": None if ok else f"{mode} failed",
                "unavailable": "not on this kernel" if mode == "gone" else None,
                "metrics": {"x": 1.0 if ok else None}}

    def profile_pids(self, item: Item) -> dict[str, int]:
        return {}  # nothing to attach perf to: the session records nothing


def test_drive_skips_an_unavailable_mode_and_says_why() -> None:
    work = _Fake()
    progress: list[str] = []
    configs = [_cfg("ok"), _cfg("gone")]
    out = drive(plan_runs([[configs]], reps=3, verify="sample", profile=[_cfg("ok")]), work,
                progress.append)
    assert [m for m, _ in work.ran].count("gone") == 1  # its first run said it cannot run
    assert [m for m, role in work.ran if role == "timed"] == ["ok"] * 3
    assert sum(p.endswith(": skipped") for p in progress) == 3
    assert len(progress) == 2 + 6 + 1  # one step per planned repetition, skipped ones too
    assert out.unavailable == {"gone": "not on this kernel"}
    assert out.notes() == ["send mode gone unavailable: not on this kernel"]
    assert out.status() == "ok"  # an unavailable mode is not a failure
    assert len(out.runs) == 5 and all(r["role"] != "profile" for r in out.runs)
    assert len(out.profiles) == 1
    prof = out.profiles[0]
    assert (prof["size"], prof["mode"], prof["ok"], prof["error"]) == (1, "ok", True, None)
    rows = out.unavailable_rows([*configs, _cfg("gone", 2)], [{"size": 1, "mode": "ok"}],
                                ("size", "mode"), {"c": "no compiler"})
    assert rows == [{"size": 1, "mode": "gone", "metrics": {}, "unavailable": "not on this kernel"},
                    {"size": 2, "mode": "gone", "metrics": {}, "unavailable": "not on this kernel"}]


def test_drive_reports_a_failed_mode_as_partial() -> None:
    out = drive(plan_runs([[[_cfg("ok"), _cfg("bad")]]], reps=2, verify="all"), _Fake(),
                lambda _: None)
    assert out.unavailable == {}
    assert [r["mode"] for r in out.runs].count("bad") == 2  # a failure is retried each rep
    assert out.status() == "partial"


def _stream_run(**over: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "transport": "tcp", "msg_size": 4096, "send_mode": "zcnet", "rep": 0, "role": "timed",
        "recv_mode": "recv_into", "verified": "spot", "ok": True, "error": None,
        "unavailable": None, "sender": {"cpu": 0.1}, "receiver": {"cpu": 0.2},
        "metrics": {"sender_cpu_s_per_gb": 0.5, "throughput_gbit_s": None}}
    run.update(over)
    return run


def test_shape_errors_accepts_the_shape_and_names_every_departure() -> None:
    assert shape_errors(_stream_run(), StreamRun) == []
    bad = _stream_run(role="warm", msg_size="4K", extra=1)
    del bad["ok"]
    errors = shape_errors(bad, StreamRun)
    assert "$: missing 'ok'" in errors
    assert "$: unexpected key 'extra'" in errors
    assert any(e.startswith("$.role:") for e in errors)
    assert any(e.startswith("$.msg_size:") for e in errors)
    assert len(errors) == 4
    row = {"transport": "udp", "msg_size": 64768, "send_mode": "c-zc", "metrics": {},
           "unavailable": "no compiler"}
    assert shape_errors(row, StreamSummary) == []
    row["metrics"] = {"sender_cpu_s_per_gb": {"median": 1, "min": 0.5, "max": 2.0}}
    assert shape_errors(row, StreamSummary) == [
        "$.metrics.sender_cpu_s_per_gb: missing 'n'"]
    assert shape_errors([], Experiment) == ["$: expected an object, got list"]


def test_shape_errors_of_a_whole_report() -> None:
    exp = {"name": "rpc", "status": "ok", "reason": None, "environment": None,
           "parameters": {}, "runs": [], "summary": [], "notes": []}
    report = {"schema_version": 1, "generator": "zcnet bench", "zcnet_version": "0",
              "created_utc": "now", "command": None,
              "machine": {"kernel": "6", "system": "Linux", "cpu": "x", "nproc": 2,
                          "python": "3.11", "zcnet_implementation": "c",
                          "zcnet_implementation_reason": "", "root": True},
              "parameters": {}, "experiments": [exp]}
    assert shape_errors(report, Report) == []
    exp["status"] = "fine"
    assert shape_errors(report, Report) == [
        "$.experiments[0].status: 'fine' not in ('ok', 'partial', 'skipped')"]


def test_unavailable_modes_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send mode and a receive mode that raise ``ModeUnavailable`` in their worker (patched
    here; the workers are forked, so they inherit it): the first run of each says so in
    ``unavailable``, the mode is skipped afterwards, its summary rows and a note say why, the
    other modes run (every byte checked) and the experiment is still ``ok``."""
    pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")
    import zcnet.bench.receivers as receivers
    import zcnet.bench.senders as senders
    from zcnet.bench.cli import main
    from zcnet.errors import ModeUnavailable

    real_engine = senders._Engine

    def engine(sock: Any, mode: str, threshold: int | None) -> Any:
        if mode == "zcnet":
            raise ModeUnavailable("made up for this test")
        return real_engine(sock, mode, threshold)

    def no_zcnet_receiver(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ModeUnavailable("no receiver in this test")

    monkeypatch.setattr(senders, "_Engine", engine)
    monkeypatch.setattr(receivers, "_zcnet", no_zcnet_receiver)
    tiny = ["--bytes", "1M", "--warmup", "128K", "--reps", "2", "--verify", "all",
            "--source", "4M", "--no-progress", "--no-table"]
    out = tmp_path / "s.json"
    assert main(["stream", "--transports", "tcp", "--sizes", "64K,256K",
                 "--modes", "sendall,zcnet", *tiny, "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    assert exp["status"] == "ok"
    gone = [r for r in exp["runs"] if r["send_mode"] == "zcnet"]
    assert len(gone) == 1 and not gone[0]["ok"]
    assert gone[0]["unavailable"] == "made up for this test"
    assert all(r["ok"] and r["unavailable"] is None for r in exp["runs"]
               if r["send_mode"] == "sendall")
    assert len([r for r in exp["runs"] if r["send_mode"] == "sendall"]) == 4
    rows = {(e["msg_size"], e["send_mode"]): e for e in exp["summary"]}
    for size in (65536, 262144):
        assert rows[size, "zcnet"] == {"transport": "tcp", "msg_size": size,
                                       "send_mode": "zcnet", "metrics": {},
                                       "unavailable": "made up for this test"}
        assert rows[size, "sendall"]["metrics"]["sender_cpu_s_per_gb"]["n"] == 2
    assert "send mode zcnet unavailable: made up for this test" in exp["notes"]

    out = tmp_path / "r.json"
    assert main(["rx", "--recv-modes", "recv_into,zcnet", *tiny, "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    assert exp["status"] == "ok"
    assert [r["recv_mode"] for r in exp["runs"]].count("zcnet") == 1
    rows = {e["recv_mode"]: e for e in exp["summary"]}
    assert rows["zcnet"]["unavailable"] == "no receiver in this test"
    assert rows["zcnet"]["metrics"] == {}
    assert rows["recv_into"]["metrics"]["receiver_cpu_s_per_gb"]["n"] == 2
    assert "receive mode zcnet unavailable: no receiver in this test" in exp["notes"]


def test_one_vocabulary_names_every_mode_in_words() -> None:
    from zcnet.bench import modes
    from zcnet.bench.dask import DASK_VARIANTS

    assert tuple(DASK_VARIANTS) == modes.DASK_VARIANT_NAMES
    every = (*modes.SEND_MODES, *modes.RECEIVE_MODES, *modes.RPC_MODES,
             *modes.MEMORY_SEND_MODES, *modes.DASK_VARIANT_NAMES)
    for mode in every:
        assert modes.split_loop(mode)[0] in modes.MODE_WORDS, mode
    assert modes.describe("zcnet") == "zcnet, default policy"
    assert modes.describe("zcnet", receive=True) == "zcnet Receiver (TCP_ZEROCOPY_RECEIVE)"
    assert modes.describe("asyncio-read-uvloop") == "asyncio read on uvloop"
    assert modes.describe("no-such-mode") == "no-such-mode"
