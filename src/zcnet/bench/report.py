"""Reporting: the versioned JSON document and the rich tables (the plot: :mod:`zcnet.bench.plot`).

Theory of operation: experiments return JSON-ready dicts (typed by :mod:`zcnet.bench.results`);
:func:`build_report` wraps them with the schema version, the machine and the parameters (schema
documented in docs/bench.md). Tables and plots only read that document, so a saved JSON can be
re-rendered. rich (the ``[bench]`` extra) is imported inside the functions that need it.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from typing import Any, Final

from zcnet.bench.machine import machine_info
from zcnet.bench.results import Experiment, Report
from zcnet.bench.stats import Summary, ratio_percent

__all__ = ["SCHEMA_VERSION", "build_report", "print_tables", "write_json"]

SCHEMA_VERSION: Final = 1
KiB = 1024
DASH: Final = "\N{EN DASH}"


def build_report(experiments: Sequence[Experiment], parameters: dict[str, Any],
                 command: Sequence[str] | None = None) -> Report:
    """The whole JSON document (schema :data:`SCHEMA_VERSION`)."""
    from zcnet import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "generator": "zcnet bench",
        "zcnet_version": __version__,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": list(command) if command is not None else None,
        "machine": machine_info(),
        "parameters": parameters,
        "experiments": list(experiments),
    }


def write_json(report: Report, path: str) -> None:
    """Write ``report`` to ``path`` (atomically: temp file, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


# -- tables ----------------------------------------------------------------------------------

def _summary(entry: dict[str, Any] | None, metric: str) -> Summary | None:
    if entry is None:
        return None
    m = entry["metrics"].get(metric)
    if m is None:
        return None
    return Summary(m["median"], m["min"], m["max"], m["n"])


def _cell(s: Summary | None, fmt: str = "{:.3f}") -> str:
    if s is None:
        return DASH
    if s.n == 1 or s.min == s.max:
        return fmt.format(s.median)
    return f"{fmt.format(s.median)}\n[dim]{fmt.format(s.min)}{DASH}{fmt.format(s.max)}[/dim]"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.0f}%"


def _size(n: int) -> str:
    if n % (1024 * KiB) == 0:
        return f"{n // (1024 * KiB)}M"
    if n % KiB == 0:
        return f"{n // KiB}K"
    return str(n)


def _vs_c(entry: dict[str, Any] | None, field: str, every: str | None = None) -> str:
    """``"120% c-zc"``: the ratio to the C reference, naming it (— for the C rows); with
    ``every`` (``sender_cpu_vs_c``: {C mode: ratio}), one such line per C reference."""
    if entry is None or not entry.get("c_reference"):
        return DASH
    ratios = entry.get(every) if every else None
    if isinstance(ratios, dict) and ratios:
        return "\n".join(f"{_pct(pct)} {ref}" for ref, pct in ratios.items())
    return f"{_pct(entry.get(field))} {entry['c_reference']}"


def _unavailable(entry: dict[str, Any] | None) -> str | None:
    return None if entry is None or not entry.get("unavailable") else (
        f"unavailable: {entry['unavailable']}")


def _profile_table(exp: Experiment, keys: Sequence[str]) -> list[Any]:
    """The top symbols per mode and side (``--profile``)."""
    from rich.table import Table

    from zcnet.bench.profile import format_top

    if not exp.get("profiles"):
        return []
    t = Table(title=f"{exp['name']} --profile: top symbols (perf record -e cpu-clock; "
              "\\[k] kernel symbols, % of the side's samples)", show_lines=True)
    for col in (*keys, "side", "samples", "top symbols"):
        t.add_column(col, justify="left" if col == "top symbols" else "right")
    for prof in exp["profiles"]:
        for side in ("sender", "receiver"):
            data = prof.get(side)
            if not data:
                continue
            cells = [(_size(prof[k]) if k == "msg_size" else str(prof[k])) for k in keys]
            t.add_row(*cells, side, str(data.get("samples") or DASH), format_top(data))
    return [t]


def _find(summary: list[dict[str, Any]], **keys: Any) -> dict[str, Any] | None:
    for entry in summary:
        if all(entry.get(k) == v for k, v in keys.items()):
            return entry
    return None


def _stream_tables(exp: Experiment) -> list[Any]:
    from rich.table import Table

    tables = []
    summary = exp["summary"]
    for transport in ("tcp", "udp"):
        entries = [e for e in summary if e["transport"] == transport]
        if not entries:
            continue
        sizes = sorted({e["msg_size"] for e in entries})
        modes = [m for m in dict.fromkeys(e["send_mode"] for e in entries) if m != "sendall"]
        connect = exp["parameters"].get("connect")
        where = f"to zcnet serve at {connect[0]}:{connect[1]}" if connect else "over loopback"
        title = (f"stream TCP {where}: process cost s/GB, std = sendall"
                 if transport == "tcp" else
                 "stream UDP (GSO) toward the ifb sink: sender cost s/GB, std = sendall")
        t = Table(title=title, show_lines=True)
        for col in ("size", "zc mode", "Gbit/s std", "Gbit/s zc", "snd std", "snd zc",
                    "snd zc/std", "snd std/C", "snd zc/C", "snd uncopied"):
            t.add_column(col, justify="right")
        if transport == "tcp":
            for col in ("rcv std", "rcv zc", "rcv zc/std"):
                t.add_column(col, justify="right")
        for size in sizes:
            std = _find(entries, msg_size=size, send_mode="sendall")
            for mode in modes or [DASH]:
                zc = _find(entries, msg_size=size, send_mode=mode)
                why = _unavailable(zc)
                if why is not None:
                    t.add_row(_size(size), mode, why, *[DASH] * (len(t.columns) - 3))
                    continue
                row = [_size(size), mode,
                       _cell(_summary(std, "throughput_gbit_s"), "{:.1f}"),
                       _cell(_summary(zc, "throughput_gbit_s"), "{:.1f}"),
                       _cell(_summary(std, "sender_cpu_s_per_gb")),
                       _cell(_summary(zc, "sender_cpu_s_per_gb")),
                       _pct(ratio_percent(_summary(zc, "sender_cpu_s_per_gb"),
                                          _summary(std, "sender_cpu_s_per_gb"))),
                       _vs_c(std, "sender_cpu_vs_c_pct", "sender_cpu_vs_c"),
                       _vs_c(zc, "sender_cpu_vs_c_pct", "sender_cpu_vs_c"),
                       _cell(_summary(zc, "sender_uncopied_pct"), "{:.0f}%")]
                if transport == "tcp":
                    row += [_cell(_summary(std, "receiver_cpu_s_per_gb")),
                            _cell(_summary(zc, "receiver_cpu_s_per_gb")),
                            _pct(ratio_percent(_summary(zc, "receiver_cpu_s_per_gb"),
                                               _summary(std, "receiver_cpu_s_per_gb")))]
                t.add_row(*row)
        tables.append(t)
    return tables + _profile_table(exp, ("transport", "msg_size", "send_mode"))


def _rx_tables(exp: Experiment) -> list[Any]:
    from rich.table import Table

    summary = exp["summary"]
    base = _find(summary, recv_mode="recv_into")
    send_mode = next((r["send_mode"] for r in exp["runs"] if r.get("ok")), "?")
    env = exp["environment"]
    where = f"lo MTU {env['lo_mtu']}" if env and env["lo_mtu"] else "host loopback"
    t = Table(title=f"rx (tcp_mmap style): receiver cost s/GB; sender {send_mode}, {where}",
              show_lines=True)
    for col in ("receive mode", "rcv s/GB", "vs recv_into", "vs C", "Gbit/s", "mapped",
                "rx mode", "snd s/GB"):
        t.add_column(col, justify="right")
    for e in summary:
        why = _unavailable(e)
        if why is not None:
            t.add_row(e["recv_mode"], why, *[DASH] * (len(t.columns) - 2))
            continue
        t.add_row(e["recv_mode"], _cell(_summary(e, "receiver_cpu_s_per_gb")),
                  _pct(ratio_percent(_summary(e, "receiver_cpu_s_per_gb"),
                                     _summary(base, "receiver_cpu_s_per_gb"))),
                  _vs_c(e, "receiver_cpu_vs_c_pct"),
                  _cell(_summary(e, "throughput_gbit_s"), "{:.1f}"),
                  _cell(_summary(e, "mapped_pct"), "{:.0f}%"),
                  str(e.get("rx_mode") or "\N{EM DASH}"),
                  _cell(_summary(e, "sender_cpu_s_per_gb")))
    return [t, *_profile_table(exp, ("recv_mode",))]


def _rpc_tables(exp: Experiment) -> list[Any]:
    from rich.table import Table

    summary = exp["summary"]
    base = _find(summary, zerocopy_receive=False)
    p = exp["parameters"]
    t = Table(title=f"rpc: {p.get('connections')} connections, {p.get('size')}-byte "
              "request/response", show_lines=True)
    for col in ("zero-copy receive", "req/s", "server µs/req", "vs off", "client µs/req",
                "p50 µs", "p99 µs", "mapped"):
        t.add_column(col, justify="right")
    for e in summary:
        label = {"map": "on (map)", "default": "on (default policy)"}
        t.add_row(label.get(e.get("rx_policy") or "", "on") if e["zerocopy_receive"] else "off",
                  _cell(_summary(e, "requests_per_s"), "{:.0f}"),
                  _cell(_summary(e, "server_cpu_us_per_req"), "{:.1f}"),
                  _pct(ratio_percent(_summary(e, "server_cpu_us_per_req"),
                                     _summary(base, "server_cpu_us_per_req"))),
                  _cell(_summary(e, "client_cpu_us_per_req"), "{:.1f}"),
                  _cell(_summary(e, "latency_p50_us"), "{:.0f}"),
                  _cell(_summary(e, "latency_p99_us"), "{:.0f}"),
                  _cell(_summary(e, "mapped_pct"), "{:.0f}%"))
    return [t]


def _memory_tables(exp: Experiment) -> list[Any]:
    from rich.table import Table

    t = Table(title="memory: kernel socket memory while the receiver stalls (peak MB; "
              "sockstat TCP mem and cgroup above their baseline)", show_lines=True)
    for col in ("send mode", "TCP mem (stall)", "cgroup sock", "wmem_queued", "fwd_alloc",
                "optmem", "rcv rmem_alloc", "TCP mem (drain)", "zcnet pinned",
                "zcnet mapped", "samples"):
        t.add_column(col, justify="right")
    for e in exp["summary"]:
        def mb(metric: str, entry: dict[str, Any] = e) -> str:
            return _cell(_summary(entry, metric), "{:.2f}")

        t.add_row(e["send_mode"], mb("sockstat_tcp_mem_mb"),
                  mb("cgroup_sock_mb"), mb("wmem_queued_mb"), mb("fwd_alloc_mb"),
                  mb("optmem_mb"), mb("receiver_rmem_alloc_mb"),
                  mb("drain_sockstat_tcp_mem_mb"), mb("zcnet_pinned_mb"),
                  mb("zcnet_mapped_mb"), _cell(_summary(e, "samples"), "{:.0f}"))
    return [t]


def _dask_tables(exp: Experiment) -> list[Any]:
    from rich.table import Table

    summary = exp["summary"]
    base = _find(summary, variant="tcp")
    p = exp["parameters"]
    t = Table(title=f"dask: {p.get('arrays')} arrays x {_size(int(p.get('array_bytes', 0)))} "
              "from worker A to worker B; CPU s/GB of each worker process", show_lines=True)
    for col in ("variant", "Gbit/s", "snd s/GB", "snd vs tcp", "rcv s/GB", "rcv vs tcp"):
        t.add_column(col, justify="right")
    for e in summary:
        row = [e["variant"], _cell(_summary(e, "throughput_gbit_s"), "{:.2f}")]
        for side in ("sender", "receiver"):
            metric = f"{side}_cpu_s_per_gb"
            row += [_cell(_summary(e, metric)),
                    _pct(ratio_percent(_summary(e, metric), _summary(base, metric)))]
        t.add_row(*row)
    return [t]


def _rpc_churn_tables(exp: Experiment) -> list[Any]:
    from rich.table import Table

    p = exp["parameters"]
    t = Table(title=f"rpc --mmap-churn: {p.get('connections')} connections, {p.get('size')}-byte "
              "requests, zero-copy receive; churn: a server thread mapping and unmapping 1 MiB "
              "in a loop (mmap) or as busy without the lock (syscall); server µs/req = its "
              "receiving thread", show_lines=True)
    for col in ("receive", "churn", "req/s", "vs no churn", "server µs/req", "vs no churn",
                "client µs/req", "p50 µs", "p99 µs", "vs no churn", "mmap vs control",
                "lock path", "churn /s", "mapped"):
        t.add_column(col, justify="right")
    words = {"windows": "zcnet windows", "fresh": "fresh window\nper receive"}
    for e in exp["summary"]:
        if _unavailable(e):
            t.add_row(words.get(e["rx_variant"], e["rx_variant"]), e["churn"],
                      _unavailable(e) or "",
                      *[""] * 11)
            continue
        lock = e.get("lock_path_pct")
        t.add_row(words.get(e["rx_variant"], e["rx_variant"]), e["churn"],
                  _cell(_summary(e, "requests_per_s"), "{:.0f}"),
                  _pct(e.get("requests_per_s_vs_no_churn_pct")),
                  _cell(_summary(e, "server_cpu_us_per_req"), "{:.1f}"),
                  _pct(e.get("server_cpu_vs_no_churn_pct")),
                  _cell(_summary(e, "client_cpu_us_per_req"), "{:.1f}"),
                  _cell(_summary(e, "latency_p50_us"), "{:.0f}"),
                  _cell(_summary(e, "latency_p99_us"), "{:.0f}"),
                  _pct(e.get("latency_p99_vs_no_churn_pct")),
                  DASH if "requests_per_s_vs_control_pct" not in e else
                  f"req/s {_pct(e['requests_per_s_vs_control_pct'])}\n"
                  f"CPU {_pct(e.get('server_cpu_vs_control_pct'))}\n"
                  f"p99 {_pct(e.get('latency_p99_vs_control_pct'))}",
                  DASH if lock is None else f"{lock:.2f}%",
                  _cell(_summary(e, "churn_per_s"), "{:.0f}"),
                  _cell(_summary(e, "mapped_pct"), "{:.0f}%"))
    return [t]


def _rxmem_tables(exp: Experiment) -> list[Any]:
    from rich.table import Table

    t = Table(title="rxmem: a receiver in a memory cgroup of its own holds N MiB (MiB above its "
              "baseline; sockstat is kernel-wide); unaccounted = held - cgroup charge - zcnet "
              "mapped", show_lines=True)
    # (the cgroup's anonymous and file-mapped parts are in the JSON)
    for col in ("N", "mode", "held", "mapped", "copied", "cgroup charge", "cgroup sock",
                "sockstat TCP", "rmem_alloc", "RSS", "RSS file", "zcnet mapped",
                "peak / limit", "unaccounted"):
        t.add_column(col, justify="right")
    for e in exp["summary"]:
        def mib(metric: str, entry: dict[str, Any] = e) -> str:
            return _cell(_summary(entry, metric), "{:.1f}")

        limit = _summary(e, "limit_mib")
        peak = mib("zcnet_mapped_peak_mib")
        t.add_row(f"{e['size_mib']}M", e["mode"], mib("held_mib"), mib("held_mapped_mib"),
                  mib("held_copied_mib"), mib("cgroup_charge_mib"), mib("cgroup_sock_mib"),
                  mib("sockstat_tcp_mib"), mib("rmem_alloc_mib"), mib("rss_mib"),
                  mib("rss_file_mib"), mib("zcnet_mapped_mib"),
                  f"{peak} / {DASH if limit is None else f'{limit.median:.1f}'}",
                  mib("unaccounted_mib"))
    return [t]


_TABLES = {"stream": _stream_tables, "rx": _rx_tables, "rpc": _rpc_tables,
           "rpc-churn": _rpc_churn_tables, "memory": _memory_tables, "rxmem": _rxmem_tables,
           "dask": _dask_tables}


def print_tables(report: Report, console: Any = None) -> None:
    """Print one rich table per experiment (plus its notes) to ``console``."""
    from rich.console import Console

    if console is None:
        # the stream table needs ~180 columns: never truncate numbers to fit a narrow terminal
        console = Console(width=max(Console().width, 190))
    m = report["machine"]
    console.print(f"[bold]zcnet bench[/bold] — kernel {m['kernel']}, {m['nproc']} CPUs "
                  f"({m['cpu']}), Python {m['python']}", highlight=False)
    for exp in report["experiments"]:
        if exp["status"] == "skipped":
            console.print(f"[yellow]{exp['name']}: skipped — {exp['reason']}[/yellow]")
            continue
        for table in _TABLES[exp["name"]](exp):
            console.print(table)
        failed = [r for r in exp["runs"] if not r.get("ok")]
        for note in exp["notes"]:
            console.print(f"  [dim]note:[/dim] {note}")
        if failed:
            console.print(f"  [red]{len(failed)} run(s) failed; first error: "
                          f"{failed[0].get('error')}[/red]")
