"""The examples in examples/ run as documented and check their own bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    "argv",
    [["bulk_transfer.py"], ["pool_send.py"], ["aio_echo.py"], ["aio_echo.py", "--uvloop"]],
    ids=lambda argv: " ".join(argv),
)
def test_example_runs_and_verifies(argv: list[str]) -> None:
    if "--uvloop" in argv:
        pytest.importorskip("uvloop", reason="uvloop is not installed (pip install zcnet[uvloop])")
    proc = subprocess.run([sys.executable, str(EXAMPLES / argv[0]), *argv[1:]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("ok:"), proc.stdout
