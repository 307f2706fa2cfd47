"""The ``zcnet bench`` command line: argument errors, a tiny end-to-end run, JSON, plot.

The end-to-end runs move a few MB and check every byte (``--verify all``); they use a namespace
of their own when running as root and plain loopback otherwise (UDP toward the ifb sink is
then skipped by the benchmark itself, and says so).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zcnet.bench.cli import build_parser, main
from zcnet.bench.protocol import encode_header
from zcnet.bench.results import SHAPES, Profile, Report, shape_errors

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")
pytest.importorskip("matplotlib", reason="the [bench] extra (matplotlib) is not installed")

TINY = ["--bytes", "2M", "--warmup", "256K", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table"]


@pytest.mark.parametrize(("argv", "message"), [
    (["bench"], "required: EXPERIMENT"),
    (["bench", "nosuch"], "invalid choice: 'nosuch'"),
    (["bench", "stream", "--sizes", "4X"], "invalid size '4X'"),
    (["bench", "stream", "--sizes", ""], "empty list of sizes"),
    (["bench", "stream", "--modes", "sendall,turbo"], "invalid choice(s) turbo"),
    (["bench", "stream", "--modes", "sendall,sendall"], "duplicate entries"),
    (["bench", "stream", "--transports", "sctp"], "invalid choice(s) sctp"),
    (["bench", "stream", "--reps", "0"], "must be a positive integer"),
    (["bench", "stream", "--bytes", "-5"], "invalid size"),
    (["bench", "stream", "--connect", "nohost"], "expected HOST:PORT"),
    (["bench", "stream", "--connect", "::1:80"], "put an IPv6 address in brackets"),
    (["bench", "stream", "--verify", "some"], "invalid choice: 'some'"),
    (["bench", "rx", "--recv-modes", "mmap"], "invalid choice(s) mmap"),
    (["bench", "rx", "--rcvlowat", "-1"], "invalid size '-1'"),
    (["bench", "rpc", "--connections", "x"], "invalid integer 'x'"),
    (["bench", "memory", "--duration", "0"], "must be positive"),
    (["serve"], "the following arguments are required: --listen"),
    (["serve", "--listen", "1.2.3.4"], "expected HOST:PORT"),
])
def test_argument_errors_exit_2(argv: list[str], message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["stream", "--connect", "127.0.0.1:9", "--transports", "udp"], "--connect runs TCP only"),
    (["stream", "--sizes", "8M"], "the largest message size is 4M"),
    (["rpc", "--bytes", "1M"], "rpc takes --requests and --size"),
    (["rpc", "--size", "2M"], "at most 1M per request"),
    (["memory", "--warmup", "1M"], "memory takes --duration"),
    (["rpc", "--source", "1M"], "--source applies to stream and rx only"),
    (["rx", "--json", "/nonexistent-dir/r.json"], "--json: directory of"),
    (["rx", "--plot", "/nonexistent-dir/r.png"], "--plot: directory of"),
])
def test_inconsistent_arguments_exit_2(argv: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("zcnet bench ")


def _check_summary_entry(entry: dict[str, Any]) -> None:
    assert isinstance(entry["metrics"], dict)
    for stats in entry["metrics"].values():
        assert set(stats) == {"median", "min", "max", "n"}
        assert stats["min"] <= stats["median"] <= stats["max"]
        assert stats["n"] >= 1


def _check_report(report: dict[str, Any], names: list[str]) -> None:
    assert report["schema_version"] == 1
    assert report["generator"] == "zcnet bench"
    machine = report["machine"]
    assert {"kernel", "cpu", "nproc", "python", "root"} <= set(machine)
    assert isinstance(machine["nproc"], int)
    assert isinstance(report["parameters"]["experiments"], dict)
    assert [e["name"] for e in report["experiments"]] == names
    assert shape_errors(report, Report) == []
    for exp in report["experiments"]:
        assert set(exp) >= {"name", "status", "reason", "environment", "parameters", "runs",
                            "summary", "notes"}
        run_shape, row_shape = SHAPES[exp["name"]]
        for i, run in enumerate(exp["runs"]):
            assert shape_errors(run, run_shape, f"{exp['name']}.runs[{i}]") == []
        for i, row in enumerate(exp["summary"]):
            assert shape_errors(row, row_shape, f"{exp['name']}.summary[{i}]") == []
        for i, prof in enumerate(exp.get("profiles") or []):
            assert shape_errors({k: prof[k] for k in ("ok", "error", "sender", "receiver")},
                                Profile, f"{exp['name']}.profiles[{i}]") == []
        assert exp["status"] == "ok", exp
        assert exp["runs"], exp["name"]
        for run in exp["runs"]:
            assert run["ok"], run.get("error")
            assert run["role"] == "timed"
            assert run["verified"] in ("full", "none")  # none: UDP toward the sink
            assert isinstance(run["metrics"], dict)
        for entry in exp["summary"]:
            _check_summary_entry(entry)


def test_stream_json_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["stream", "--sizes", "4K,64K",
               "--modes", "sendall,zcnet,zcnet-forced,raw-zerocopy",
               *TINY, "--json", str(out), "--plot", str(png)])
    assert rc == 0
    report = json.loads(out.read_text())
    _check_report(report, ["stream"])
    exp = report["experiments"][0]
    tcp = [r for r in exp["runs"] if r["transport"] == "tcp"]
    assert {(r["msg_size"], r["send_mode"]) for r in tcp} == {
        (s, m) for s in (4096, 65536)
        for m in ("sendall", "zcnet", "zcnet-forced", "raw-zerocopy")}
    for run in tcp:
        assert run["sender"]["source_bytes"] == 8 << 20  # messages walk through 8 MB
        assert run["receiver"]["bytes"] == 2 << 20
        assert run["receiver"]["verified"] == "full"
        assert run["metrics"]["sender_cpu_s_per_gb"] is not None
        assert run["metrics"]["throughput_gbit_s"] > 0
    if exp["environment"]["ifb_sink"]:
        assert any(r["transport"] == "udp" for r in exp["runs"])
    else:
        assert any("UDP" in n for n in exp["notes"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rx_rpc_memory_json(tmp_path: Path) -> None:
    out, png = tmp_path / "rx.json", tmp_path / "rx.png"
    assert main(["rx", *TINY, "--json", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    _check_report(report, ["rx"])
    modes = {e["recv_mode"] for e in report["experiments"][0]["summary"]}
    from zcnet.bench.modes import RECEIVE_MODES

    if importlib.util.find_spec("uvloop") is not None:
        assert modes == set(RECEIVE_MODES)
    else:
        assert modes == {m for m in RECEIVE_MODES if not m.endswith("-uvloop")}

    out = tmp_path / "rpc.json"
    assert main(["rpc", "--connections", "4", "--requests", "5", "--reps", "1",
                 "--verify", "all", "--no-progress", "--no-table", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    _check_report(report, ["rpc"])
    for run in report["experiments"][0]["runs"]:
        assert run["client"]["requests"] == 20
        assert run["metrics"]["latency_p99_us"] >= run["metrics"]["latency_p50_us"]
        if run["rx_policy"] == "default":  # 4 KB requests are below min_map_bytes: copies
            assert run["metrics"]["mapped_pct"] == 0
    modes = {(e["zerocopy_receive"], e["rx_policy"]) for e in report["experiments"][0]["summary"]}
    assert modes == {(False, None), (True, "map"), (True, "default")}

    out = tmp_path / "mem.json"
    assert main(["memory", "--duration", "0.2", "--bytes", "4M", "--no-progress", "--no-table",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    _check_report(report, ["memory"])
    for run in report["experiments"][0]["runs"]:
        assert run["samples"], "the sampler read nothing"
        m = run["metrics"]
        if run["send_mode"] == "zerocopy":  # zcnet's own ledger saw the pinned and mapped bytes
            assert m["zcnet_pinned_mb"] > 0 and all("zcnet_pinned" in s for s in run["samples"])
        else:
            assert m["zcnet_pinned_mb"] == 0 and m["zcnet_mapped_mb"] == 0


def test_two_host_mode_over_loopback(tmp_path: Path) -> None:
    """``zcnet serve`` in a process of its own, ``bench stream --connect`` here (loopback only).

    The server is a separate process, as on another host; run as a thread of this process, the
    benchmark's forked workers would fork a multi-threaded process (which Python 3.12+ warns
    about, rightly: a lock held by that thread stays locked in the child).
    """
    server = subprocess.Popen(
        [sys.executable, "-m", "zcnet.bench", "serve", "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        out = tmp_path / "two.json"
        rc = main(["stream", "--connect", f"127.0.0.1:{port}", "--sizes", "16K",
                   "--modes", "sendall,zcnet", "--bytes", "1M", "--warmup", "64K",
                   "--reps", "2", "--verify", "all", "--source", "8M", "--no-progress",
                   "--no-table",
                   "--json", str(out)])
        assert rc == 0
        with socket.create_connection(("127.0.0.1", port)) as s:  # tell the server to quit
            s.sendall(encode_header({"op": "quit"}))
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stderr is not None:
            server.stderr.close()
    report = json.loads(out.read_text())
    _check_report(report, ["stream"])
    exp = report["experiments"][0]
    assert exp["environment"]["netns"] is False
    assert all(r["receiver"]["verified"] == "full" for r in exp["runs"])


def test_without_namespace_runs_on_loopback_and_says_why(tmp_path: Path) -> None:
    """``--no-netns`` is the path a non-root user gets: TCP on loopback, UDP skipped."""
    out = tmp_path / "plain.json"
    assert main(["stream", "--no-netns", "--sizes", "64K", "--modes", "sendall", *TINY,
                 "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    assert exp["environment"]["netns"] is False
    assert {r["transport"] for r in exp["runs"]} == {"tcp"}
    assert any("ifb sink skipped" in n for n in exp["notes"])
    out = tmp_path / "plainrx.json"
    assert main(["rx", "--no-netns", "--recv-modes", "recv_into,zcnet", "--rcvlowat", "0", *TINY,
                 "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    assert any("TCP_MAXSEG" in n for n in exp["notes"])
    assert all(r["receiver"]["verified"] == "full" for r in exp["runs"])
