"""The driver loop that ``stream``, ``rx`` and ``rpc`` share: plan, run, skip, profile.

Theory of operation: an experiment is a *workload* (:class:`Workload`): what one repetition of
one configuration does, and how its peers' answers become a run record. Everything around it is
here, once:

- the **plan** (:func:`plan_runs`): configurations come in *groups* (stream: one per transport)
  of *cells* (stream: one per message size) of modes. With ``verify="sample"`` each group
  starts with one untimed ``"verify"`` repetition per configuration; then each timed repetition
  runs every cell with its modes rotated by ``rep + cell index``, so the order of the modes
  alternates; the ``"profile"`` repetitions (``--profile``, when perf can record) come last;
- the **loop** (:func:`drive`): a mode whose run says ``unavailable`` (the one field, never the
  error text) is skipped for the rest of the experiment; profile repetitions run under
  :class:`~zcnet.bench.profile.PerfSession` and go to ``profiles``, not to ``runs``;
- the **outcome** (:class:`Outcome`): the notes on unavailable modes, the summary rows saying
  why a configuration has no figures, and the experiment's status.

Adding an experiment of this kind means writing its workload (a :class:`Workload`), not
another copy of this loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from zcnet.bench.common import Progress, rotated
from zcnet.bench.profile import PerfSession, perf_unavailable_reason
from zcnet.bench.results import Role, Side, Status, Verified

__all__ = ["Config", "Item", "Outcome", "Workload", "drive", "first_unavailable",
           "plan_runs", "profile_plan", "verified"]

#: The configuration keys of one run, e.g. ``{"transport": "tcp", "msg_size": 65536,
#: "send_mode": "zcnet"}``; they lead the run record and the summary row.
Config = dict[str, Any]
#: One planned repetition: its configuration plus ``rep`` (-1 when untimed) and ``role``.
Item = dict[str, Any]

_ITEM_KEYS = ("rep", "role")


def verified(verify: str, role: str) -> Verified:
    """What the receiver checks in a repetition: every byte (``--verify all`` or a
    verification repetition) or the first and last byte of each chunk."""
    return "full" if verify == "all" or role == "verify" else "spot"


def first_unavailable(*sides: Mapping[str, Any] | None) -> str | None:
    """The reason a mode cannot run here, from the first peer result that gives one."""
    for side in sides:
        if side and side.get("unavailable"):
            return str(side["unavailable"])
    return None


def plan_runs(groups: Sequence[Sequence[Sequence[Config]]], *, reps: int, verify: str,
              profile: Sequence[Config] = ()) -> list[Item]:
    """Every repetition in the order it runs (see the module docstring)."""
    items: list[Item] = []
    for group in groups:
        if verify == "sample":
            items += [_item(c, -1, "verify") for cell in group for c in cell]
        for rep in range(reps):
            for i, cell in enumerate(group):
                items += [_item(c, rep, "timed") for c in rotated(cell, rep + i)]
    items += [_item(c, -1, "profile") for c in profile]
    return items


def _item(config: Config, rep: int, role: Role) -> Item:
    return {**config, "rep": rep, "role": role}


def profile_plan(requested: bool, configs: Iterable[Config]) -> tuple[list[Config], str | None]:
    """The configurations to profile and why none are (``None``: perf can record or no
    profile was asked for)."""
    if not requested:
        return [], None
    reason = perf_unavailable_reason()
    return ([] if reason is not None else list(configs)), reason


class Workload(Protocol):
    """One experiment's work per repetition; :func:`drive` does the rest."""

    #: Which mode a note names: ``"send"``, ``"receive"``, ...
    mode_kind: str

    def mode(self, item: Mapping[str, Any]) -> str:
        """The mode of an item, a run or a configuration (what is skipped once a run says
        ``unavailable``)."""
        ...

    def label(self, item: Item) -> str:
        """A few words for the progress bar."""
        ...

    def run(self, item: Item) -> Mapping[str, Any]:
        """Run one repetition; its record (a run of the experiment's shape, with ``ok``,
        ``error`` and ``unavailable``)."""
        ...

    def profile_pids(self, item: Item) -> dict[str, int]:
        """The processes perf attaches to for a profile repetition, by side."""
        ...


ModeOf = Callable[[Mapping[str, Any]], str]


@dataclass
class Outcome:
    """What :func:`drive` collected."""

    #: names the mode of a run, an item or a configuration (:meth:`Workload.mode`)
    mode_of: ModeOf
    #: which mode the notes name (:attr:`Workload.mode_kind`)
    mode_kind: str
    runs: list[Any] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    #: mode -> why it cannot run here (the first run that said so)
    unavailable: dict[str, str] = field(default_factory=dict)

    def status(self) -> Status:
        """``"partial"`` when a run failed for another reason than its mode being
        unavailable, else ``"ok"``."""
        failed = [r for r in self.runs if not r["ok"] and self.mode_of(r) not in self.unavailable]
        return "partial" if failed else "ok"

    def notes(self) -> list[str]:
        """One note per unavailable mode, saying why."""
        return [f"{self.mode_kind} mode {mode} unavailable: {why}"
                for mode, why in self.unavailable.items()]

    def unavailable_rows(self, configs: Iterable[Config], summary: Iterable[Mapping[str, Any]],
                         keys: Sequence[str], reasons: Mapping[str, str] | None = None
                         ) -> list[dict[str, Any]]:
        """A summary row ``{**config, "metrics": {}, "unavailable": why}`` for each
        configuration whose mode is unavailable (or has a reason in ``reasons``) and that has
        no row in ``summary`` yet (rows are matched on ``keys``)."""
        why_of = {**self.unavailable, **(reasons or {})}
        have = {tuple(e.get(k) for k in keys) for e in summary}
        rows: list[dict[str, Any]] = []
        for config in configs:
            key = tuple(config.get(k) for k in keys)
            why = why_of.get(self.mode_of(config))
            if why is None or key in have:
                continue
            have.add(key)
            rows.append({**config, "metrics": {}, "unavailable": why})
        return rows


def drive(items: Sequence[Item], workload: Workload, progress: Progress) -> Outcome:
    """Run ``items`` through ``workload``; skip a mode once a run said it is unavailable."""
    out = Outcome(workload.mode, workload.mode_kind)
    for item in items:
        mode = workload.mode(item)
        if mode in out.unavailable:
            progress(f"{workload.label(item)}: skipped")
            continue
        if item["role"] == "profile":
            session = PerfSession(workload.profile_pids(item))
            session.start()
            try:
                run = workload.run(item)
            finally:
                sides: dict[str, Side] = session.stop()
            config = {k: v for k, v in item.items() if k not in _ITEM_KEYS}
            out.profiles.append({**config, "ok": run["ok"], "error": run["error"],
                                 "sender": sides.get("sender"),
                                 "receiver": sides.get("receiver")})
            progress(f"profile {workload.label(item)}")
            continue
        run = workload.run(item)
        out.runs.append(run)
        if run.get("unavailable"):
            out.unavailable[mode] = str(run["unavailable"])
        progress(workload.label(item))
    return out
