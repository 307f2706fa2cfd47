"""``zcnet bench stream``: the io_uring engine's modes (``zcnet-uring``, ``zcnet-uring-batch``).

Tiny runs: TCP bytes are verified in full by the receiver; UDP goes to the namespace's ifb sink,
where nothing is delivered (only sent), so its runs check the sender's counters. Where io_uring
cannot be used the rows must say why instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zcnet.bench.cli import main
from zcnet.bench.modes import QUICK_SEND_MODES, UDP_ONLY_SEND_MODES
from zcnet.bench.stream import StreamParams, c_references_for
from zcnet.lowlevel.uring import unavailable_reason

pytest.importorskip("rich", reason="the [bench] extra (rich) is not installed")

TINY = ["--bytes", "2M", "--warmup", "256K", "--reps", "1", "--verify", "all", "--source", "8M",
        "--no-progress", "--no-table"]


def test_uring_modes_are_asked_for_not_default() -> None:
    p = StreamParams()
    for mode in ("zcnet-uring", "zcnet-uring-batch"):
        assert mode not in p.send_modes and mode not in QUICK_SEND_MODES
    assert "zcnet-uring-batch" in UDP_ONLY_SEND_MODES
    assert c_references_for("zcnet-uring", []) == ("c-uring-single", "c-uring", "c-zc")
    assert c_references_for("zcnet-uring-batch", []) == ("c-uring-fixed-linked", "c-uring-fixed",
                                                         "c-zc")


def test_uring_modes_run_or_say_why(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert main(["stream", "--sizes", "64K", "--modes", "zcnet-uring,zcnet-uring-batch",
                 "--batch", "8", *TINY, "--json", str(out)]) == 0
    exp = json.loads(out.read_text())["experiments"][0]
    why = unavailable_reason()
    if why is not None:
        assert any("io_uring" in n and "unavailable" in n for n in exp["notes"])
        return
    for run in exp["runs"]:
        assert run["ok"], run["error"]
        assert run["sender"]["engine"] == "io_uring"
    tcp = [r for r in exp["runs"] if r["transport"] == "tcp"]
    assert {r["send_mode"] for r in tcp} == {"zcnet-uring"}
    for run in tcp:
        assert run["receiver"]["verified"] == "full"
        assert run["receiver"]["bytes"] == 2 << 20
    if not exp["environment"]["ifb_sink"]:
        return
    batch = [r for r in exp["runs"]
             if r["transport"] == "udp" and r["send_mode"] == "zcnet-uring-batch"]
    assert batch
    for run in batch:
        sender = run["sender"]
        assert sender["batch"] == 8
        assert sender["bytes_zerocopy"] + sender["bytes_copied"] + sender["bytes_plain"] == (
            sender["bytes"])
        assert sender["sends_registered"] == sender["sends_zerocopy"] > 0  # pool leases
        assert sender["registration_reason"] is None
        assert run["metrics"]["sender_uncopied_pct"] == 100
    assert any("zcnet-uring-batch: Sender.send_batch of 8 pool leases" in n
               for n in exp["notes"])
