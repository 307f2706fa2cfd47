"""``zcnet bench rx --sender/--lo-mtu``: the configurations where pages cannot be mapped.

With a plain copying sender (``--sender sendall``) zcnet's receiver must fall back to copying,
say why, and the report must carry its mode, reason and CPU relative to ``recv_into``. Tiny
runs with ``--verify all`` (every byte checked).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zcnet.bench.cli import build_parser, main

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")

TINY = ["--bytes", "2M", "--warmup", "1M", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table", "--recv-modes", "recv_into,zcnet"]


@pytest.mark.parametrize(("argv", "message"), [
    (["bench", "rx", "--sender", "raw-zerocopy"], "invalid choice: 'raw-zerocopy'"),
    (["bench", "rx", "--lo-mtu", "99"], "IPv6 needs 1280 to 65536"),
    (["bench", "rx", "--lo-mtu", "70000"], "IPv6 needs 1280 to 65536"),
    (["bench", "rx", "--lo-mtu", "big"], "invalid MTU 'big'"),
    (["bench", "stream", "--lo-mtu", "default"], "unrecognized arguments: --lo-mtu"),
])
def test_argument_errors(argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_lo_mtu_number_needs_a_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rx", "--no-netns", "--lo-mtu", "4168"]) == 2
    assert "--lo-mtu MTU needs a namespace" in capsys.readouterr().err


def test_parsed_values() -> None:
    from zcnet.bench.cli import _params

    def rx_params(*extra: str) -> Any:
        args = build_parser().parse_args(["bench", "rx", *extra])
        [(name, params)] = _params(args, "rx")
        assert name == "rx"
        return params

    p = rx_params()
    assert (p.send_mode, p.lo_mtu) == ("zcnet-forced", 61512)
    p = rx_params("--sender", "sendall", "--lo-mtu", "default")
    assert (p.send_mode, p.lo_mtu) == ("sendall", None)
    assert rx_params("--lo-mtu", "4168").lo_mtu == 4168
    assert rx_params("--no-netns", "--lo-mtu", "default").lo_mtu is None


def _zcnet_entry(exp: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in exp["summary"] if e["recv_mode"] == "zcnet")


def _check_runs(exp: dict[str, Any]) -> None:
    assert exp["status"] == "ok", exp
    for run in exp["runs"]:
        assert run["ok"], run["error"]
        assert run["receiver"]["verified"] == "full"
        assert run["receiver"]["bytes"] == 2 << 20
    for entry in exp["summary"]:
        assert "receiver_cpu_vs_recv_into_pct" in entry
    base = next(e for e in exp["summary"] if e["recv_mode"] == "recv_into")
    assert base["receiver_cpu_vs_recv_into_pct"] in (100.0, None)


def test_copying_sender_makes_zcnet_fall_back(tmp_path: Path) -> None:
    out = tmp_path / "rx.json"
    assert main(["rx", "--sender", "sendall", *TINY, "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    _check_runs(exp)
    assert exp["parameters"]["send_mode"] == "sendall"
    assert {r["send_mode"] for r in exp["runs"]} == {"sendall"}
    zc = _zcnet_entry(exp)
    assert zc["rx_mode"] == "copy"
    assert zc["fallback_reason"]
    assert zc["switched_after_calls"] >= 1
    assert zc["metrics"]["mapped_pct"]["max"] == 0.0
    for run in exp["runs"]:
        if run["recv_mode"] == "zcnet":
            assert run["receiver"]["rx_mode"] == "copy"
            assert run["receiver"]["bytes_mapped"] == 0
    assert any("switched to copy" in n for n in exp["notes"])
    assert any("sender sendall" in n for n in exp["notes"])


def test_default_lo_mtu(tmp_path: Path) -> None:
    out = tmp_path / "rx.json"
    assert main(["rx", "--lo-mtu", "default", *TINY, "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    _check_runs(exp)
    assert exp["parameters"]["lo_mtu"] is None
    if exp["environment"]["netns"]:
        assert exp["environment"]["lo_mtu"] == 65536
    else:
        assert any("default MSS" in n for n in exp["notes"])
    zc = _zcnet_entry(exp)
    assert zc["rx_mode"] in ("zerocopy", "copy")
    assert any(n.startswith("zcnet receiver") for n in exp["notes"])
