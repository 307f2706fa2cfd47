"""The import rule of docs/ARCHITECTURE.md ('Layers and modules'), checked on the source.

Every ``import`` and ``from ... import`` statement of every module under ``src/zcnet`` is read with
:mod:`ast`: at module level, inside functions and under ``if TYPE_CHECKING:`` alike (a type-only
import that points upward still makes a lower layer know an upper layer's shape; give the lower
layer a ``Protocol`` instead, as ``zcnet.pool.TicketLike`` does). Dynamic imports
(``importlib.import_module`` with a computed name) are not seen.

A module may import modules of its own layer and of layers of lower rank (``lowlevel`` sits on
``_core``: it parses kernel messages into the core's value types).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "zcnet"

#: (layer, rank), bottom first.
RANKS: dict[str, int] = {
    "errors": 0,      # zcnet.errors, zcnet._accel (and the compiled zcnet._speedups)
    "core": 1,        # zcnet._core.*: sans-I/O decisions and bookkeeping
    "lowlevel": 2,    # zcnet.lowlevel.*: the kernel ABI
    "blocking": 3,    # zcnet.sender, receiver, pool, accounting, netns
    "api": 4,         # zcnet (the package's __init__: the flat re-exports)
    "aio": 5,         # zcnet.aio.*
    "contrib": 6,     # zcnet.contrib.*
    "bench": 7,       # zcnet.bench.*
    "doctor": 7,      # zcnet.doctor.* (beside the benchmark: neither imports the other)
    "app": 8,         # zcnet.cli, zcnet.demo, zcnet.__main__
}

_BLOCKING = {"zcnet.sender", "zcnet.receiver", "zcnet.pool", "zcnet.accounting", "zcnet.netns"}
_APP = {"zcnet.cli", "zcnet.demo", "zcnet.__main__"}
_PREFIXES = (("zcnet._core", "core"), ("zcnet.lowlevel", "lowlevel"), ("zcnet.aio", "aio"),
             ("zcnet.contrib", "contrib"), ("zcnet.bench", "bench"), ("zcnet.doctor", "doctor"))

#: Known violations, (importing module, imported module): each one names its issue. The test
#: fails when an entry is no longer needed, so the list only shrinks. Empty: the tree obeys.
ALLOWED_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()

#: What ``zcnet._core`` must not import: it stays sans-I/O (no sockets, ctypes, threads, clocks,
#: processes or event loops), so the blocking and asyncio edges can drive the same objects.
CORE_FORBIDDEN = frozenset({
    "_thread", "asyncio", "concurrent", "ctypes", "fcntl", "mmap", "multiprocessing", "os",
    "select", "selectors", "signal", "socket", "subprocess", "threading", "time",
})


def layer_of(module: str) -> str | None:
    """The layer of a ``zcnet`` module, or ``None`` if the table does not place it."""
    if module in ("zcnet.errors", "zcnet._accel", "zcnet._speedups"):
        return "errors"
    if module == "zcnet":
        return "api"
    if module in _BLOCKING:
        return "blocking"
    if module in _APP:
        return "app"
    for prefix, layer in _PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def may_import(importer: str, imported: str) -> bool:
    """The rule: own layer, or a layer of strictly lower rank."""
    return importer == imported or RANKS[imported] < RANKS[importer]


@dataclass(frozen=True)
class Import:
    module: str       # the importing module
    target: str       # the zcnet module it names
    line: int
    where: str        # "module level", "function", "TYPE_CHECKING"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known_modules() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, known: set[str]) -> list[Import]:
    """Every import of a ``zcnet`` module in ``path``, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            here = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                here = "function" if where == "module level" else where
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, "TYPE_CHECKING")
                for stmt in child.orelse:
                    visit_stmt(stmt, here)
                continue
            visit_stmt(child, here)

    def visit_stmt(node: ast.AST, where: str) -> None:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from zcnet import sender`` names the submodule, not the package
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        for t in targets:
            if t == "zcnet" or t.startswith("zcnet."):
                found.append(Import(name, t, getattr(node, "lineno", 0), where))
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            visit(node, where)

    visit(ast.parse(path.read_text(), str(path)), "module level")
    return found


def _all_imports() -> list[Import]:
    known = _known_modules()
    return [imp for p in sorted(PACKAGE.rglob("*.py")) for imp in _imports(p, known)]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in _known_modules() if layer_of(m) is None)
    assert not unplaced, (f"modules not placed in a layer: {unplaced}; add them to "
                          "tests/test_layers.py and docs/ARCHITECTURE.md, 'Layers and modules'")


def test_imports_point_downward() -> None:
    violations: list[str] = []
    used: set[tuple[str, str]] = set()
    for imp in _all_imports():
        src, dst = layer_of(imp.module), layer_of(imp.target)
        assert src is not None and dst is not None, imp
        if may_import(src, dst):
            continue
        if (imp.module, imp.target) in ALLOWED_VIOLATIONS:
            used.add((imp.module, imp.target))
            continue
        violations.append(f"{imp.module} (layer {src}) imports {imp.target} (layer {dst}) "
                          f"at line {imp.line}, {imp.where}")
    assert not violations, "imports that point upward or sideways:\n" + "\n".join(violations)
    stale = sorted(ALLOWED_VIOLATIONS - used)
    assert not stale, f"allow-list entries no longer needed, remove them: {stale}"


def test_errors_is_the_bottom() -> None:
    assert [i for i in _all_imports() if i.module == "zcnet.errors"] == []


def test_core_is_sans_io() -> None:
    bad: list[str] = []
    for path in sorted((PACKAGE / "_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top in CORE_FORBIDDEN or (top != "zcnet" and top not in sys.stdlib_module_names):
                    bad.append(f"{_module_name(path)} imports {n} (line {node.lineno})")
    assert not bad, "zcnet._core must stay pure (stdlib, no I/O):\n" + "\n".join(bad)


# The checker itself, on small sources: it must see what the rule is about.
@pytest.mark.parametrize(("source", "where"), [
    ("from zcnet.sender import Sender\n", "module level"),
    ("def f():\n    from zcnet.sender import Sender\n", "function"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from zcnet.sender import Sender\n",
     "TYPE_CHECKING"),
    ("import typing\nif typing.TYPE_CHECKING:\n    import zcnet.sender\n", "TYPE_CHECKING"),
    ("from .. import sender\n", "module level"),
    ("class C:\n    def m(self):\n        from ..sender import Sender\n", "function"),
])
def test_checker_sees_every_form(tmp_path: Path, source: str, where: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_src = tmp_path / "src"
    (fake_src / "zcnet" / "_core").mkdir(parents=True)
    for rel in ("__init__.py", "sender.py", "_core/__init__.py"):
        (fake_src / "zcnet" / rel).write_text("")
    mod = fake_src / "zcnet" / "_core" / "bad.py"
    mod.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake_src)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_src / "zcnet")
    [imp] = _imports(mod, _known_modules())
    assert (imp.module, imp.target, imp.where) == ("zcnet._core.bad", "zcnet.sender", where)
    assert not may_import(layer_of(imp.module) or "", layer_of(imp.target) or "")
