"""Which implementation of the per-operation work is active: the compiled extension or Python.

zcnet's hot paths (a send call with its bookkeeping, a completion drain, a receive call, the
buffer objects handed to the caller) exist twice: in ``zcnet._speedups``, compiled from
``src/zcnet/_ext`` by pip when a C compiler is there, and in the pure-Python modules, which are
the reference and the fallback (docs/ARCHITECTURE.md, 'Compiled fast path'). This module decides
once, at import, which one the rest of the package uses.

``ZCNET_NO_EXTENSIONS`` set to any non-empty value forces the pure-Python implementation (as
multidict, yarl and aiohttp do), which is how the test suite runs both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Final

__all__ = ["Implementation", "implementation", "speedups"]


@dataclass(frozen=True, slots=True)
class Implementation:
    """The active implementation.

    Attributes:
        name: ``"c"`` (the compiled extension) or ``"python"``.
        reason: why (the extension's file, or why it is not used).
    """

    name: str
    reason: str


def _load() -> tuple[ModuleType | None, Implementation]:
    if os.environ.get("ZCNET_NO_EXTENSIONS"):
        return None, Implementation("python", "ZCNET_NO_EXTENSIONS is set")
    try:
        import zcnet._speedups as _speedups
    except ImportError as e:
        return None, Implementation(
            "python", f"the compiled extension zcnet._speedups is not installed ({e}); "
            "it is built by pip when a C compiler and the Python headers are present")
    return _speedups, Implementation("c", f"compiled extension {_speedups.__file__}")


#: The compiled extension module, or ``None`` when the pure-Python implementation is active.
_LOADED: Final = _load()
speedups: Final[ModuleType | None] = _LOADED[0]
_ACTIVE: Final[Implementation] = _LOADED[1]


def implementation() -> Implementation:
    """Which implementation of the per-operation work is active, and why."""
    return _ACTIVE
