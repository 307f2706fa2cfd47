"""Print the CPython versions zcnet supports ("3.11 3.12 ..."), read from pyproject.toml.

The "Programming Language :: Python :: 3.X" classifiers are the one list; the Makefile (mypy per
version) and scripts/test-every-python.sh (the suite per interpreter) both read it through this.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def supported_versions() -> list[str]:
    """The supported "3.X" versions, oldest first."""
    classifiers = tomllib.loads(PYPROJECT.read_text())["project"]["classifiers"]
    found = {tuple(map(int, m.groups())) for c in classifiers
             if (m := re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c))}
    return [f"{major}.{minor}" for major, minor in sorted(found)]


if __name__ == "__main__":
    print(" ".join(supported_versions()))
