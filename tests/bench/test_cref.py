"""The C reference loops (zcnet.bench.cref) and ``--profile``.

Every run here moves a few MB and checks every byte (``--verify all``: the C receivers compare
each byte with the pattern; the C senders' bytes are checked by the Python receiver). No timing
is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zcnet.bench import cref
from zcnet.bench.cli import main
from zcnet.bench.profile import parse_report, perf_unavailable_reason

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")

TINY = ["--bytes", "2M", "--warmup", "256K", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table"]


def _built() -> cref.CBuild:
    built = cref.build(refresh=True)
    if not built.available:
        pytest.skip(f"no C reference here: {built.reason}")
    return built


def _experiment(path: Path) -> dict[str, Any]:
    exp: dict[str, Any] = json.loads(path.read_text())["experiments"][0]
    return exp


def test_pattern_period_matches_the_stream_pattern() -> None:
    from zcnet.bench.pattern import PERIOD, Verifier

    period = cref.pattern_period()
    assert len(period) == PERIOD
    assert period == Verifier().window(0, PERIOD).tobytes()


def test_c_senders_move_verified_bytes(tmp_path: Path) -> None:
    built = _built()
    out = tmp_path / "s.json"
    assert main(["stream", "--modes", "sendall,zcnet-forced,c-copy,c-zc", "--sizes", "64K",
                 *TINY, "--json", str(out)]) == 0
    exp = _experiment(out)
    assert exp["c_reference"]["available"] and exp["c_reference"]["programs"] == built.programs
    c_runs = [r for r in exp["runs"] if r["send_mode"] in ("c-copy", "c-zc")]
    assert {r["send_mode"] for r in c_runs} == {"c-copy", "c-zc"}
    for run in c_runs:
        assert run["ok"], run["error"]
        if run["transport"] == "tcp":  # the Python receiver checked every byte
            assert run["receiver"]["verified"] == "full"
            assert run["receiver"]["bytes"] == 2 << 20
            assert run["sender"]["bytes"] == 2 << 20
            assert run["sender"]["source_bytes"] == 8 << 20
        if run["send_mode"] == "c-zc":
            assert run["sender"]["completions"] >= 1
    by_mode = {(e["transport"], e["send_mode"]): e for e in exp["summary"]}
    assert by_mode[("tcp", "sendall")]["c_reference"] == "c-copy"
    assert by_mode[("tcp", "zcnet-forced")]["c_reference"] == "c-zc"
    assert by_mode[("tcp", "c-zc")]["c_reference"] is None
    for key in (("tcp", "sendall"), ("tcp", "zcnet-forced")):
        assert by_mode[key]["sender_cpu_vs_c_pct"] is not None


def test_c_receivers_move_verified_bytes(tmp_path: Path) -> None:
    _built()
    out = tmp_path / "r.json"
    assert main(["rx", "--recv-modes", "recv_into,zcnet,c-recv,c-zerocopy", *TINY,
                 "--json", str(out)]) == 0
    exp = _experiment(out)
    runs = {r["recv_mode"]: r for r in exp["runs"]}
    for mode in ("c-recv", "c-zerocopy"):
        run = runs[mode]
        assert run["ok"], run["error"]
        rcv = run["receiver"]
        assert rcv["verified"] == "full" and rcv["bytes"] == 2 << 20
        assert rcv["bytes_mapped"] + rcv["bytes_copied"] == 2 << 20
    if exp["environment"]["netns"]:  # lo MTU 61512 and a MSG_ZEROCOPY sender: pages map
        assert runs["c-zerocopy"]["receiver"]["bytes_mapped"] > 0
    summary = {e["recv_mode"]: e for e in exp["summary"]}
    assert summary["recv_into"]["c_reference"] == "c-recv"
    assert summary["recv_into"]["receiver_cpu_vs_c_pct"] is not None
    assert summary["zcnet"]["c_reference"] in ("c-zerocopy", "c-recv")
    assert "receiver_cpu_vs_c_pct" in summary["zcnet"]


def test_spot_checking_c_receiver_and_bad_bytes(tmp_path: Path) -> None:
    """Timed repetitions spot-check; a stream that is not the pattern fails verification."""
    import socket
    import threading

    built = _built()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    data = bytearray(cref.pattern_period() * 4)
    data[70000] ^= 0xFF  # one wrong byte in the timed part

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(data)

    t = threading.Thread(target=send)
    t.start()
    conn, _ = listener.accept()
    with conn, listener:
        res = cref.run_receiver(built.programs["recv"], conn, zerocopy=False, warmup=4096,
                                nbytes=len(data) - 4096, recv_size=65536, rcvlowat=0, full=True)
    t.join()
    assert not res["ok"] and "differ from the pattern" in res["error"]


def test_no_compiler_gives_rows_with_a_reason(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "zcnet-no-such-cc")
    try:
        built = cref.build(refresh=True)
        assert not built.available and "not found" in str(built.reason)
        out = tmp_path / "s.json"
        assert main(["stream", "--modes", "sendall,c-copy,c-zc", "--sizes", "64K",
                     "--transports", "tcp", *TINY, "--json", str(out)]) == 0
        exp = _experiment(out)
        assert exp["c_reference"]["available"] is False
        assert "not found" in exp["c_reference"]["reason"]
        rows = {e["send_mode"]: e for e in exp["summary"]}
        assert "not found" in rows["c-copy"]["unavailable"]
        assert rows["c-zc"]["metrics"] == {}
        assert rows["sendall"]["c_reference"] == "c-copy"
        assert rows["sendall"]["sender_cpu_vs_c_pct"] is None
        assert all(r["send_mode"] == "sendall" and r["ok"] for r in exp["runs"])
        out = tmp_path / "r.json"
        assert main(["rx", "--recv-modes", "recv_into,c-recv", *TINY, "--json", str(out)]) == 0
        rows = {e["recv_mode"]: e for e in _experiment(out)["summary"]}
        assert "not found" in rows["c-recv"]["unavailable"]
        from zcnet.bench.report import build_report, print_tables

        print_tables(build_report([_experiment(out)], {}))  # renders "unavailable: ..."
    finally:
        monkeypatch.delenv("CC")
        cref.build(refresh=True)


def test_failing_compiler_gives_a_reason(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        built = cref.build(refresh=True)
        assert not built.available and "failed" in str(built.reason)
    finally:
        monkeypatch.delenv("CC")
        cref.build(refresh=True)


def test_parse_report() -> None:
    text = ("# Samples: 1K of event 'cpu-clock'\n#\n# Overhead  Symbol\n"
            "    41.20%  [k] _copy_from_iter\n     9.00%  [.] main\n\n")
    out = parse_report(text)
    assert out["samples"] == "1K"
    assert out["top"][0] == {"symbol": "_copy_from_iter", "pct": 41.2, "kernel": True}
    assert out["top"][1]["kernel"] is False


def test_profile_gives_top_symbols(tmp_path: Path) -> None:
    reason = perf_unavailable_reason()
    if reason is not None:
        pytest.skip(f"--profile needs perf: {reason}")
    _built()
    out = tmp_path / "r.json"
    assert main(["rx", "--recv-modes", "recv_into,c-recv", *TINY, "--bytes", "256M", "--profile",
                 "--json", str(out)]) == 0
    exp = _experiment(out)
    assert exp["profile_unavailable"] is None
    assert {p["recv_mode"] for p in exp["profiles"]} == {"recv_into", "c-recv"}
    for prof in exp["profiles"]:
        assert prof["ok"], prof["error"]
        rcv = prof["receiver"]
        assert rcv["error"] is None and rcv["top"], rcv
        assert all(0 < e["pct"] <= 100 for e in rcv["top"])
    # profiled repetitions are not timed ones
    assert all(r["role"] != "profile" for r in exp["runs"])
