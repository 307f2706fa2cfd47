"""Shared bookkeeping of the experiments: derived metrics, grouping, summaries, progress.

Pure logic. A *run* is one repetition's record (a JSON-ready dict); a *summary* groups the timed
runs by their configuration keys and gives median/min/max of each metric
(:func:`zcnet.bench.stats.summarize`). CPU costs are CPU seconds per GB (10^9 bytes) moved;
throughput is Gbit/s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from zcnet.bench.results import Environment, Experiment, Status
from zcnet.bench.stats import summarize

_T = TypeVar("_T")

__all__ = ["GB", "Progress", "experiment_result", "gbit_per_s", "group_summary",
           "no_progress", "rotated", "s_per_gb"]

GB = 1e9


#: Progress callback, called with a short description after each run.
Progress = Callable[[str], None]


def s_per_gb(cpu: float | None, nbytes: int) -> float | None:
    """CPU seconds per GB."""
    if cpu is None or nbytes <= 0:
        return None
    return cpu / (nbytes / GB)


def gbit_per_s(nbytes: int, wall: float | None) -> float | None:
    """Throughput in Gbit/s."""
    if wall is None or wall <= 0:
        return None
    return nbytes * 8 / wall / GB


def rotated(items: Sequence[_T], k: int) -> list[_T]:
    """``items`` rotated left by ``k`` (alternates the order of modes between repetitions)."""
    if not items:
        return []
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def group_summary(runs: Iterable[Mapping[str, Any]], keys: Sequence[str],
                  metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Median/min/max of ``metrics`` over the successful timed runs, per ``keys`` group."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        if run.get("role") != "timed" or not run.get("ok"):
            continue
        groups.setdefault(tuple(run.get(k) for k in keys), []).append(run)
    out: list[dict[str, Any]] = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, key, strict=True))
        entry["metrics"] = {}
        for m in metrics:
            s = summarize(r["metrics"][m] for r in members if r["metrics"].get(m) is not None)
            if s is not None:
                entry["metrics"][m] = s.as_dict()
        out.append(entry)
    return out


def experiment_result(name: str, *, status: Status = "ok", reason: str | None = None,
                      environment: Environment | None = None,
                      parameters: dict[str, Any] | None = None,
                      runs: Sequence[Any] | None = None,
                      summary: Sequence[Any] | None = None,
                      notes: list[str] | None = None) -> Experiment:
    """The JSON form of one experiment (see docs/bench.md, "experiments")."""
    return {"name": name, "status": status, "reason": reason, "environment": environment,
            "parameters": parameters or {}, "runs": list(runs or []),
            "summary": list(summary or []),
            "notes": notes or []}


def no_progress(description: str) -> None:
    """A :data:`Progress` callback that does nothing."""
