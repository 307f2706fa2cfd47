"""``zcnet bench stream``: the pool lease modes (``zcnet-leases``, ``zcnet-uring-leases``).

Tiny runs: TCP bytes are verified in full by the receiver; UDP goes to the namespace's ifb sink,
where nothing is delivered (only sent), so its runs check the sender's counters. Where io_uring
cannot be used ``zcnet-uring-leases`` must say why instead.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from zcnet.bench.cli import main
from zcnet.bench.modes import ASKED_SEND_MODES, QUICK_SEND_MODES, UDP_ONLY_SEND_MODES
from zcnet.bench.results import SHAPES, Report, shape_errors
from zcnet.bench.senders import _Engine
from zcnet.bench.stream import StreamParams, c_references_for
from zcnet.errors import ModeUnavailable
from zcnet.lowlevel.uring import unavailable_reason

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")

TINY = ["--bytes", "2M", "--warmup", "256K", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table"]
LEASE_MODES = ("zcnet-leases", "zcnet-uring-leases")


def test_lease_modes_are_asked_for_on_both_transports() -> None:
    p = StreamParams()
    for mode in LEASE_MODES:
        assert mode not in p.send_modes and mode not in QUICK_SEND_MODES
        assert mode in ASKED_SEND_MODES and mode not in UDP_ONLY_SEND_MODES
    asked = StreamParams(send_modes=LEASE_MODES)
    assert asked.modes_for("tcp") == asked.modes_for("udp") == LEASE_MODES
    assert c_references_for("zcnet-uring-leases", []) == ("c-uring-fixed-single",
                                                         "c-uring-fixed", "c-zc")
    # the default policy decides by itself: compared with what its runs mostly did
    assert c_references_for("zcnet-leases", []) == ("c-copy",)


def test_batch_does_not_apply_to_the_lease_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "--modes", ",".join(LEASE_MODES), "--batch", "8"]) == 2
    assert "zcnet-batch and zcnet-uring-batch send modes only" in capsys.readouterr().err


def test_a_message_larger_than_the_pool_makes_the_mode_unavailable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", 9))
        engine = _Engine(sock, "zcnet-leases", None)
        try:
            largest = engine.pool.size_classes[-1]
            fits = engine.leases([memoryview(bytes(largest))])
            assert len(fits) == 1 and fits[0].size == largest
            fits[0].release()
            with pytest.raises(ModeUnavailable, match="does not fit a pool lease"):
                engine.leases([memoryview(bytes(largest + 1))])
        finally:
            engine.close()


def test_lease_modes_run_with_every_byte_verified(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert main(["stream", "--sizes", "64K,1M", "--modes", ",".join(LEASE_MODES), *TINY,
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert shape_errors(report, Report) == []
    exp = report["experiments"][0]
    run_shape, row_shape = SHAPES["stream"]
    for i, run in enumerate(exp["runs"]):
        assert shape_errors(run, run_shape, f"stream.runs[{i}]") == []
    for i, row in enumerate(exp["summary"]):
        assert shape_errors(row, row_shape, f"stream.summary[{i}]") == []
    uring_why = unavailable_reason()
    runs = exp["runs"]
    if uring_why is not None:
        assert any("zcnet-uring-leases unavailable" in n for n in exp["notes"])
        runs = [r for r in runs if r["send_mode"] == "zcnet-leases"]
    assert runs
    for run in runs:
        assert run["ok"], run["error"]
        sender = run["sender"]
        assert sender["engine"] == ("io_uring" if run["send_mode"] == "zcnet-uring-leases"
                                    else "msg_zerocopy")
        assert sender["bytes_zerocopy"] + sender["bytes_copied"] + sender["bytes_plain"] == (
            sender["bytes"])
    tcp = [r for r in runs if r["transport"] == "tcp"]
    assert {(r["send_mode"], r["msg_size"]) for r in tcp} >= {
        ("zcnet-leases", 64 << 10), ("zcnet-leases", 1 << 20)}
    for run in tcp:
        assert run["verified"] == "full"
        assert run["receiver"]["verified"] == "full"
        assert run["receiver"]["bytes"] == 2 << 20
    assert any("Sender.send of one pool lease per message" in n for n in exp["notes"])
    if not exp["environment"]["ifb_sink"]:
        return
    udp = [r for r in runs if r["transport"] == "udp"]
    assert {r["send_mode"] for r in udp} == {r["send_mode"] for r in runs}
    for run in udp:
        sender = run["sender"]
        assert sender["batch"] is None
        assert sender["sends_zerocopy"] > 0
        assert run["metrics"]["sender_uncopied_pct"] == 100
        if run["send_mode"] == "zcnet-uring-leases":
            assert sender["sends_registered"] == sender["sends_zerocopy"]  # registered slabs
            assert sender["registration_reason"] is None
        else:
            assert sender["sends_registered"] == 0
