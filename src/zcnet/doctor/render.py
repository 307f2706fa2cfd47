"""Printing the doctor's document: a rich table, or plain text where rich is not installed.

rich is an optional dependency (the ``bench`` extra); it is imported here only, when printing.
"""

from __future__ import annotations

import json
from typing import IO, Any, Final

__all__ = ["print_json", "print_report", "render_plain"]

_MARK: Final = {"ok": "ok", "warn": "warn", "no": "NO", "unknown": "?", "skipped": "skip",
                "info": "info"}
_STYLE: Final = {"ok": "green", "warn": "yellow", "no": "bold red", "unknown": "magenta",
                 "skipped": "dim", "info": "cyan"}
_TITLES: Final = {"kernel": "Kernel", "limits": "Limits", "interfaces": "Interfaces",
                  "selftest": "Self-test"}


def _header(doc: dict[str, Any]) -> str:
    p = doc["platform"]
    who = "root" if p["root"] else f"euid {p['euid']}"
    return (f"zcnet doctor {doc['zcnet']} (report {doc['schema']} v{doc['version']}): "
            f"{p['system']} {p['kernel']} {p['machine']}, Python {p['python']}, {who}, "
            f"{p['implementation']} implementation")


def render_plain(doc: dict[str, Any]) -> str:
    """The document as plain text, one line per check."""
    lines = [_header(doc)]
    section = None
    for c in doc["checks"]:
        if c["section"] != section:
            section = c["section"]
            lines.append(f"\n{_TITLES.get(section, section)}")
        lines.append(f"  [{_MARK[c['status']]:>4}] {c['subject']}: {c['evidence']}")
        if c["fix"]:
            lines.append(f"         change: {c['fix']}")
    lines.append("\nVerdict")
    for v in doc["verdicts"]:
        lines.append(f"  [{_MARK[v['status']]:>4}] {v['direction']}: {v['summary']}")
    if doc["next_step"]:
        lines.append(f"\nNext step: {doc['next_step']}")
    return "\n".join(lines) + "\n"


def print_report(doc: dict[str, Any], out: IO[str] | None = None) -> None:
    """Print the document as a rich table (plain text when rich is not installed)."""
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        import sys

        (out or sys.stdout).write(render_plain(doc))
        return
    console = Console(file=out, soft_wrap=False)
    console.print(Text(_header(doc), style="bold"))
    table = Table(show_lines=False, expand=True)
    table.add_column("status", no_wrap=True)
    table.add_column("item", width=22, overflow="fold")
    table.add_column("evidence", ratio=5, overflow="fold")
    table.add_column("change that would enable it", ratio=3, overflow="fold")
    section = None
    for c in doc["checks"]:
        if c["section"] != section:
            if section is not None:
                table.add_section()
            section = c["section"]
            table.add_row("", Text(_TITLES.get(section, section), style="bold underline"))
        table.add_row(Text(_MARK[c["status"]], style=_STYLE[c["status"]]), c["subject"],
                      c["evidence"], c["fix"] or "")
    console.print(table)
    for v in doc["verdicts"]:
        line = Text(f"{v['direction']:>9}: ", style="bold")
        line.append(_MARK[v["status"]], style=_STYLE[v["status"]])
        line.append(f"  {v['summary']}")
        console.print(line)
    if doc["next_step"]:
        console.print(Text("next step: ", style="bold") + Text(doc["next_step"]))


def print_json(doc: dict[str, Any], out: IO[str] | None = None) -> None:
    """Print the document as indented JSON."""
    import sys

    (out or sys.stdout).write(json.dumps(doc, indent=2) + "\n")
