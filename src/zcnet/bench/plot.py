"""The plot (``--plot PATH.png``): one panel per experiment, each answering its question.

Theory of operation: two steps. :func:`panels` turns a report into :class:`Panel` values (pure
data, no matplotlib): each panel compares modes with the plain path of its experiment as a
ratio, so 1.0 means "costs what the plain path costs" (stream: ``sendall``; rx: ``recv_into``;
rpc: zero-copy receive off; memory: copy sends; dask: ``tcp://``). A bar is a mode's median over
the plain path's median; its whiskers are the mode's min and max over that same median. The C
reference rows stand beside zcnet's, hatched, on the same scale, so zcnet against C reads off
the bars too. :func:`write_plot` draws the panels with matplotlib's Agg backend, titled with
the machine.

One builder per experiment in :data:`PANEL_BUILDERS`, by experiment name; an experiment
without results (skipped, nothing ran, no baseline) gives no panel, so the picture shows what
the report holds. A panel for a new experiment is one function ``Experiment -> list[Panel]``
registered there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from zcnet.bench.modes import (
    C_RECEIVE_MODES,
    C_SEND_MODES,
    MODE_WORDS,
    RECEIVE_MODES,
    SEND_MODES,
    describe,
)
from zcnet.bench.results import Experiment, Report

__all__ = ["PANEL_BUILDERS", "Bar", "Group", "Panel", "panels", "relative_bar", "write_plot"]

KiB: Final = 1024


@dataclass(frozen=True)
class Bar:
    """One mode in one group: its median, min and max over the baseline's median."""

    mode: str
    words: str
    ratio: float
    low: float
    high: float
    reference: bool = False  # a C reference row (drawn hatched)
    #: a second figure of the same mode drawn as a marker on the bar (stream TCP: the
    #: receiver's CPU per GB over the baseline's), ``None`` for none
    marker: float | None = None


@dataclass(frozen=True)
class Group:
    """Bars side by side at one place on the x axis (a message size, a metric)."""

    label: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Panel:
    """One experiment's question, answered as ratios to its plain path (``baseline``)."""

    experiment: str
    title: str
    ylabel: str
    baseline: str
    groups: tuple[Group, ...]
    #: what the bars' markers show (``None``: no markers)
    marker_label: str | None = None


def _median(entry: Mapping[str, Any] | None, metric: str) -> float | None:
    stat = None if entry is None else entry.get("metrics", {}).get(metric)
    return None if not stat else float(stat["median"])


def relative_bar(entry: Mapping[str, Any] | None, metric: str, base: float | None, mode: str,
                 words: str, reference: bool = False) -> Bar | None:
    """``entry``'s ``metric`` over ``base`` (the baseline's median) as a bar; ``None`` when
    either is missing or the baseline is zero."""
    stat = None if entry is None else entry.get("metrics", {}).get(metric)
    if not stat or not base or base <= 0:
        return None
    return Bar(mode, words, stat["median"] / base, stat["min"] / base, stat["max"] / base,
               reference)


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base or base <= 0 else value / base


def _size(n: int) -> str:
    if n % (1024 * KiB) == 0:
        return f"{n // (1024 * KiB)} MiB"
    return f"{n // KiB} KiB" if n % KiB == 0 else f"{n} B"


def _ordered(modes: Iterable[str], vocabulary: Sequence[str]) -> list[str]:
    """``modes`` in the vocabulary's order (summaries list them in the order runs came)."""
    rank = {m: i for i, m in enumerate(vocabulary)}
    return sorted(dict.fromkeys(modes), key=lambda m: (rank.get(m, len(rank)), m))


def _metric_groups(rows: Mapping[str, Mapping[str, Any]], base_mode: str,
                   metrics: Sequence[tuple[str, str]], words: Callable[[str], str]
                   ) -> tuple[Group, ...]:
    """One group per metric (``(key, label)``), one bar per mode but ``base_mode``."""
    groups = []
    for metric, label in metrics:
        base = _median(rows.get(base_mode), metric)
        bars = tuple(b for mode, entry in rows.items() if mode != base_mode
                     for b in [relative_bar(entry, metric, base, mode, words(mode))]
                     if b is not None)
        if bars:
            groups.append(Group(label, bars))
    return tuple(groups)


# -- one builder per experiment ---------------------------------------------------------------

def _stream_panels(exp: Experiment) -> list[Panel]:
    metric = "sender_cpu_s_per_gb"
    out = []
    connect = exp["parameters"].get("connect")
    for transport in ("tcp", "udp"):
        rows = [e for e in exp["summary"] if e["transport"] == transport and e["metrics"]]
        groups = []
        for size in sorted({e["msg_size"] for e in rows}):
            at = {e["send_mode"]: e for e in rows if e["msg_size"] == size}
            base = _median(at.get("sendall"), metric)
            bars = tuple(b for mode in _ordered(at, SEND_MODES) if mode != "sendall"
                         for b in [relative_bar(at[mode], metric, base, mode, describe(mode),
                                                mode in C_SEND_MODES)] if b is not None)
            if transport == "tcp":  # loopback: what the receiver pays is half the answer
                rcv = "receiver_cpu_s_per_gb"
                rcv_base = _median(at.get("sendall"), rcv)
                bars = tuple(replace(b, marker=_ratio(_median(at[b.mode], rcv), rcv_base))
                             for b in bars)
            if bars:
                groups.append(Group(_size(size), bars))
        if not groups:
            continue
        if transport == "tcp":
            where = (f"TCP to zcnet serve at {connect[0]}:{connect[1]}" if connect
                     else "TCP over loopback (the receiver copies anyway)")
        else:
            where = "UDP GSO toward the ifb sink (the true transmit cost)"
        out.append(Panel("stream", f"stream, {where}: sender CPU per GB",
                         "CPU per GB / plain send's", "plain send (sendall) = 1",
                         tuple(groups),
                         "receiver CPU per GB / plain send's receiver" if transport == "tcp"
                         else None))
    return out


def _rx_panels(exp: Experiment) -> list[Panel]:
    metric = "receiver_cpu_s_per_gb"
    rows = {e["recv_mode"]: e for e in exp["summary"] if e["metrics"]}
    base = _median(rows.get("recv_into"), metric)
    bars = tuple(b for mode in _ordered(rows, RECEIVE_MODES) if mode != "recv_into"
                 for b in [relative_bar(rows[mode], metric, base, mode,
                                        describe(mode, receive=True), mode in C_RECEIVE_MODES)]
                 if b is not None)
    if not bars:
        return []
    env = exp["environment"]
    where = f"lo MTU {env['lo_mtu']}" if env and env["lo_mtu"] else "host loopback"
    sender = next((r["send_mode"] for r in exp["runs"] if r.get("ok")), "?")
    return [Panel("rx", f"rx (one bulk TCP stream, sender {sender}, {where}): receiver CPU "
                  "per GB", "CPU per GB / recv_into's", "recv_into (copy) = 1",
                  (Group("receiver CPU per GB", bars),))]


def _rpc_panels(exp: Experiment) -> list[Panel]:
    from zcnet.bench.rpc import rpc_mode

    rows = {rpc_mode(e): e for e in exp["summary"] if e["metrics"]}
    groups = _metric_groups(rows, "off", (
        ("server_cpu_us_per_req", "server CPU per request"),
        ("client_cpu_us_per_req", "client CPU per request"),
        ("latency_p99_us", "p99 latency"),
        ("requests_per_s", "requests per second")), describe)
    if not groups:
        return []
    p = exp["parameters"]
    return [Panel("rpc", f"rpc: {p.get('connections')} connections, {p.get('size')}-byte "
                  "requests, server receiving with zcnet", "ratio to zero-copy receive off",
                  f"{MODE_WORDS['off']} = 1", groups)]


def _memory_panels(exp: Experiment) -> list[Panel]:
    rows = {e["send_mode"]: e for e in exp["summary"] if e["metrics"]}
    groups = _metric_groups(rows, "copy", (
        ("sockstat_tcp_mem_mb", "TCP memory charged\n(stall)"),
        ("cgroup_sock_mb", "cgroup socket memory\n(stall)"),
        ("wmem_queued_mb", "wmem_queued\n(stall)"),
        ("drain_sockstat_tcp_mem_mb", "TCP memory charged\n(drain)"),
        ("receiver_rmem_alloc_mb", "receiver rmem_alloc\n(stall)")), describe)
    if not groups:
        return []
    return [Panel("memory", "memory: kernel socket memory (peaks) while the receiver stalls",
                  "peak / copy sends' peak", f"{MODE_WORDS['copy']} = 1", groups)]


def _dask_panels(exp: Experiment) -> list[Panel]:
    rows = {e["variant"]: e for e in exp["summary"] if e["metrics"] and e.get("variant")}
    groups = _metric_groups(rows, "tcp", (
        ("sender_cpu_s_per_gb", "sending worker CPU per GB"),
        ("receiver_cpu_s_per_gb", "receiving worker CPU per GB"),
        ("throughput_gbit_s", "throughput")), describe)
    if not groups:
        return []
    p = exp["parameters"]
    return [Panel("dask", f"dask: {p.get('arrays')} arrays of {_size(int(p.get('array_bytes', 0)))}"
                  " between two workers", "ratio to Dask tcp://", f"{MODE_WORDS['tcp']} = 1",
                  groups)]


def _rpc_churn_panels(exp: Experiment) -> list[Panel]:
    rows = {e["rx_variant"] + ("" if e["churn"] == "none" else f"+{e['churn']}"): e
            for e in exp["summary"] if e["metrics"]}
    groups = _metric_groups(rows, "windows", (
        ("requests_per_s", "requests per second"),
        ("server_cpu_us_per_req", "server CPU per request"),
        ("latency_p99_us", "p99 latency")), describe)
    if not groups:
        return []
    return [Panel("rpc-churn", "rpc --mmap-churn: zero-copy receive while a server thread maps "
                  "and unmaps memory", "ratio to zcnet windows without churn",
                  "zcnet windows, no churn = 1", groups)]


def _rxmem_panels(exp: Experiment) -> list[Panel]:
    sizes = [e["size_mib"] for e in exp["summary"] if e["metrics"]]
    if not sizes:
        return []
    size = max(sizes)
    rows = {e["mode"]: e for e in exp["summary"] if e["metrics"] and e["size_mib"] == size}
    groups = []
    for metric, label in (("cgroup_charge_mib", "memory cgroup charge"),
                          ("rss_file_mib", "process RSS, file-mapped"),
                          ("rmem_alloc_mib", "socket charge (rmem_alloc)"),
                          ("zcnet_mapped_mib", "zcnet mapped account")):
        bars = tuple(b for mode, e in rows.items()
                     for b in [relative_bar(e, metric, _median(e, "held_mib"), mode,
                                            describe(mode))]
                     if b is not None)
        if bars:
            groups.append(Group(label, bars))
    if not groups:
        return []
    return [Panel("rxmem", f"rxmem: {size} MiB received and held, who sees it",
                  "MiB seen / MiB held", "all of the held bytes = 1", tuple(groups))]


#: Experiment name -> its panels (in this order on the page). A missing name: no panel.
PANEL_BUILDERS: dict[str, Callable[[Experiment], list[Panel]]] = {
    "stream": _stream_panels,
    "rx": _rx_panels,
    "rpc": _rpc_panels,
    "rpc-churn": _rpc_churn_panels,
    "memory": _memory_panels,
    "rxmem": _rxmem_panels,
    "dask": _dask_panels,
}


def panels(report: Report) -> list[Panel]:
    """The panels of ``report``: for each experiment with results, in :data:`PANEL_BUILDERS`
    order, what its builder makes of it."""
    by_name: dict[str, list[Experiment]] = {}
    for exp in report["experiments"]:
        if exp["status"] != "skipped" and exp["summary"]:
            by_name.setdefault(exp["name"], []).append(exp)
    return [panel for name, build in PANEL_BUILDERS.items() for exp in by_name.get(name, [])
            for panel in build(exp)]


# -- drawing ----------------------------------------------------------------------------------

def _title(report: Report) -> str:
    m = report["machine"]
    what = report["parameters"].get("experiment") if report.get("parameters") else None
    impl = m.get("zcnet_implementation")
    return (f"zcnet bench{' ' + what if what else ''}: {m['cpu']}, {m['nproc']} CPUs, "
            f"Linux {m['kernel']}, Python {m['python']}"
            + (f" (zcnet {impl})" if impl else "")
            + "\nbars: median over the plain path's median; whiskers: min to max over the "
            "repetitions; hatched: C reference")


def _positions(panel: Panel) -> tuple[list[list[float]], float]:
    """The x of every bar, per group, and the bar width. One group: its bars one apart (each
    mode named on the axis); several: a slot per mode around each group's place."""
    if len(panel.groups) == 1:
        return [[float(i) for i in range(len(panel.groups[0].bars))]], 0.7
    modes = list(dict.fromkeys(b.mode for g in panel.groups for b in g.bars))
    width = 0.8 / len(modes)
    return [[gi + (modes.index(b.mode) - (len(modes) - 1) / 2) * width for b in g.bars]
            for gi, g in enumerate(panel.groups)], width


def _draw(ax: Any, panel: Panel, colors: Sequence[str]) -> None:
    modes = list(dict.fromkeys(b.mode for g in panel.groups for b in g.bars))
    xs, width = _positions(panel)
    nbars = sum(len(g.bars) for g in panel.groups)
    labelled: set[str] = set()
    for group, gx in zip(panel.groups, xs, strict=True):
        for bar, x in zip(group.bars, gx, strict=True):
            ax.bar(x, bar.ratio, width * 0.92, color=colors[modes.index(bar.mode) % len(colors)],
                   edgecolor="black", linewidth=0.5, hatch="///" if bar.reference else None,
                   yerr=[[bar.ratio - bar.low], [bar.high - bar.ratio]], capsize=2,
                   error_kw={"linewidth": 0.8},
                   label=None if bar.mode in labelled else bar.words)
            labelled.add(bar.mode)
            if bar.marker is not None:
                ax.plot([x], [bar.marker], marker="D", markersize=4, color="black",
                        linestyle="none",
                        label=None if "marker" in labelled else panel.marker_label)
                labelled.add("marker")
            if nbars <= 30:
                ax.text(x, bar.high, f"{bar.ratio:.2f}", ha="center", va="bottom",
                        fontsize=6 if nbars > 12 else 7)
    one = ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, label=panel.baseline)
    if len(panel.groups) == 1:  # the modes are named on the axis: the legend says what 1 is
        ax.set_xticks(xs[0], [b.words for b in panel.groups[0].bars], rotation=25, ha="right",
                      fontsize=7)
        ax.set_xlabel(panel.groups[0].label, fontsize=8)
        ax.legend([one], [panel.baseline], fontsize=7, loc="upper left")
    else:
        ax.set_xticks(range(len(panel.groups)), [g.label for g in panel.groups], fontsize=8)
        ax.legend(fontsize=7, loc="upper left", ncols=2, framealpha=0.85)
    top = max([1.0, *(b.high for g in panel.groups for b in g.bars),
               *(b.marker for g in panel.groups for b in g.bars if b.marker is not None)])
    ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.set_title(panel.title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)


def write_plot(report: Report, path: str) -> None:
    """Draw :func:`panels` of ``report`` into the PNG ``path`` (two panels per row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = panels(report)
    ncols = 1 if len(found) <= 1 else 2
    nrows = max(1, math.ceil(len(found) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(9 * ncols, 5.2 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    flat = [ax for row in axes for ax in row]
    for ax, panel in zip(flat, found, strict=False):
        _draw(ax, panel, colors)
    for ax in flat[len(found):]:
        ax.set_axis_off()
    if not found:
        flat[0].text(0.5, 0.5, "no experiment in this report has results to plot",
                     ha="center", va="center")
    fig.suptitle(_title(report), fontsize=10)
    # leave the top strip to the two-line title (tight_layout alone lets the first row's panel
    # titles run into it)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (5.2 * nrows)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
