"""``zcnet bench stream``: the ``zcnet-batch`` send mode (``Sender.send_batch``, UDP only).

Tiny runs: TCP bytes are verified in full by the receiver; UDP goes to the namespace's ifb sink,
where nothing is delivered (only sent), so its runs check the sender's counters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zcnet.bench.cli import build_parser, main
from zcnet.bench.stream import StreamParams

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")

TINY = ["--bytes", "2M", "--warmup", "256K", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table"]


def test_batch_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "stream", "--batch", "0"])
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err
    assert main(["stream", "--batch", "2000"]) == 2
    assert "at most 1024" in capsys.readouterr().err
    assert main(["stream", "--modes", "sendall,zcnet", "--batch", "8"]) == 2
    assert "zcnet-batch and zcnet-uring-batch send modes only" in capsys.readouterr().err


def test_modes_per_transport() -> None:
    p = StreamParams()
    assert "zcnet-batch" in p.send_modes
    assert "zcnet-batch" in p.modes_for("udp")
    assert "zcnet-batch" not in p.modes_for("tcp")
    assert p.batch == 32


def test_zcnet_batch_on_udp_only(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert main(["stream", "--sizes", "4K,64K", "--modes", "sendall,zcnet-batch", "--batch", "8",
                 *TINY, "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    assert exp["status"] == "ok"
    assert exp["parameters"]["batch"] == 8
    for run in exp["runs"]:
        assert run["ok"], run["error"]
    tcp = [r for r in exp["runs"] if r["transport"] == "tcp"]
    assert {r["send_mode"] for r in tcp} == {"sendall"}
    for run in tcp:
        assert run["receiver"]["verified"] == "full"
        assert run["receiver"]["bytes"] == 2 << 20
    if not exp["environment"]["ifb_sink"]:
        assert any("UDP only" in n or "not run here" in n for n in exp["notes"])
        return
    udp = [r for r in exp["runs"] if r["transport"] == "udp" and r["send_mode"] == "zcnet-batch"]
    assert {r["msg_size"] for r in udp} == {4096, 64768}
    for run in udp:
        sender = run["sender"]
        assert sender["batch"] == 8
        assert sender["bytes"] >= 2 << 20
        assert sender["bytes_zerocopy"] + sender["bytes_copied"] + sender["bytes_plain"] == (
            sender["bytes"])
        if run["msg_size"] == 64768:  # above the 10 KB threshold: zero-copy, uncopied at the sink
            assert sender["sends_zerocopy"] > 0
            assert run["metrics"]["sender_uncopied_pct"] > 0
    entry = next(e for e in exp["summary"]
                 if e["transport"] == "udp" and e["send_mode"] == "zcnet-batch")
    assert "sender_cpu_s_per_gb" in entry["metrics"]
    assert any("send_batch of 8" in n for n in exp["notes"])
