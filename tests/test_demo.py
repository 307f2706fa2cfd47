"""``zcnet demo`` and the top-level CLI wiring."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zcnet.cli import main
from zcnet.demo import run_demo

from .conftest import NETNS_SKIP


def test_demo_moves_and_verifies_both_ways() -> None:
    where, results = run_demo(8 * 1024 * 1024)
    assert [r.direction for r in results] == ["a->b", "b->a"]
    for r in results:
        assert r.verified
        assert r.receiver.bytes_mapped + r.receiver.bytes_copied == r.nbytes
        s = r.sender
        assert s.bytes_zerocopy + s.bytes_copied + s.bytes_plain == r.nbytes
    if NETNS_SKIP is None:
        assert "namespace" in where
        # MSS 61440 and a MSG_ZEROCOPY sender: the receive side maps nearly everything
        assert all(r.receiver.bytes_mapped >= 0.9 * r.nbytes for r in results)


def test_cli_demo_prints_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--mib", "2"]) == 0
    out = capsys.readouterr().out
    assert "verified=yes" in out and "MiB mapped" in out


@pytest.mark.parametrize("argv", [["demo", "--mib", "0"], ["demo", "--mib", "x"], ["nope"], []])
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_python_dash_m_zcnet_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "zcnet", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "demo" in out and "bench" in out and "serve" in out
