"""The flat API: everything in __all__ exists, and importing zcnet pulls in no third-party code."""

from __future__ import annotations

import subprocess
import sys

import zcnet


def test_all_names_exist() -> None:
    missing = [name for name in zcnet.__all__ if not hasattr(zcnet, name)]
    assert missing == []


def test_every_error_derives_from_the_base() -> None:
    errors = [getattr(zcnet, n) for n in zcnet.__all__ if n.endswith(("Error", "Exceeded",
                                                                     "Expired", "Unavailable",
                                                                     "Timeout", "ByPeer"))]
    assert errors and all(issubclass(e, zcnet.ZcnetError) for e in errors)


def test_core_import_needs_only_the_standard_library() -> None:
    code = ("import sys, zcnet; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('rich', 'matplotlib', 'numpy', 'distributed', 'dask', 'uvloop')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
