"""Command line of the benchmark: ``zcnet bench EXPERIMENT [options]`` and ``zcnet serve``.

The lead's ``zcnet.cli`` calls :func:`add_subparsers` with its subparsers action and
:func:`run` with the parsed namespace. ``python -m zcnet.bench`` runs the same commands on its
own (:func:`main`). Argument errors print a clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zcnet.bench.results import Experiment

__all__ = ["add_subparsers", "build_parser", "main", "parse_size", "run"]

EXPERIMENTS = ("stream", "rx", "rpc", "memory", "rxmem", "dask", "quick")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"4K"``, ``"64KiB"``, ``"1M"``, ``"512"`` → bytes (binary units); positive only."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a number with an optional K, M or G suffix (e.g. 64K)")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be positive")
    return value


def _size_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else parse_size(text)


def _size_list(text: str) -> tuple[int, ...]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("empty list of sizes")
    return tuple(parse_size(p) for p in parts)


def _choice_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(p.strip() for p in text.split(",") if p.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"empty list; choose from {', '.join(choices)}")
        bad = [i for i in items if i not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"invalid choice(s) {', '.join(bad)}: choose from {', '.join(choices)}")
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"duplicate entries in {text!r}")
        return items
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _lo_mtu(text: str) -> int | None:
    """``"default"`` → None (keep 65536); otherwise an MTU an IPv6 loopback accepts."""
    if text.strip().lower() == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid MTU {text!r}: an integer from 1280 to 65536, or 'default'") from None
    if not 1280 <= value <= 65536:
        raise argparse.ArgumentTypeError(
            f"invalid MTU {value}: IPv6 needs 1280 to 65536 (or 'default')")
    return value


def _hostport(text: str) -> tuple[str, int]:
    from zcnet.bench.server import parse_hostport

    try:
        return parse_hostport(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output and measurement")
    g.add_argument("--json", metavar="PATH", help="write the full results (schema: docs/bench.md)")
    g.add_argument("--plot", metavar="PATH.png", help="write a PNG plot (matplotlib, Agg)")
    g.add_argument("--reps", type=_positive_int, help="timed repetitions per configuration")
    g.add_argument("--bytes", type=parse_size, dest="nbytes", metavar="SIZE",
                   help="bytes per timed repetition (stream, rx), e.g. 512M")
    g.add_argument("--warmup", type=parse_size, metavar="SIZE",
                   help="untimed bytes before each repetition")
    g.add_argument("--source", type=parse_size, metavar="SIZE", dest="source_bytes",
                   help="stream, rx: memory the sender's messages walk through (default 256M, "
                   "beyond the CPU caches, like sending a large array); 4M or less: one "
                   "cache-hot buffer, as netperf")
    g.add_argument("--verify", choices=("sample", "all"), default="sample",
                   help="sample: one extra untimed repetition per configuration checks every "
                   "byte, timed ones spot-check each chunk; all: every repetition checks every "
                   "byte (verification CPU is subtracted, but it slows the receiver)")
    g.add_argument("--no-netns", action="store_true",
                   help="run on the host's loopback even as root (no MTU or ifb set-up)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-table", action="store_true", help="do not print the result tables")


def _profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", action="store_true",
                   help="one more, untimed repetition per mode under `perf record -e "
                   "cpu-clock` on each side; the top symbols in the table and the JSON "
                   "(needs perf; stream: one message size per transport)")


def add_subparsers(subparsers: Any) -> None:
    """Add ``bench`` (with its experiments) and ``serve`` to the ``zcnet`` command."""
    from zcnet.bench.modes import (
        ASKED_SEND_MODES,
        DASK_VARIANT_NAMES,
        RECEIVE_MODES,
        RX_SENDERS,
        RXMEM_MODES,
        SEND_MODES,
    )

    bench = subparsers.add_parser(
        "bench", help="measure CPU per GB and throughput, copy vs zero-copy (docs/bench.md)",
        description="Benchmarks of zero-copy networking against plain sockets and asyncio.")
    exp = bench.add_subparsers(dest="bench_experiment", metavar="EXPERIMENT", required=True)

    p = exp.add_parser("stream", help="netperf TCP_STREAM style: cost per message size")
    _common(p)
    p.add_argument("--sizes", type=_size_list, help="message sizes, e.g. 4K,16K,64K,256K,1M")
    p.add_argument("--modes", type=_choice_list(SEND_MODES),
                   help=f"send modes, comma-separated from {','.join(SEND_MODES)} (default: "
                   f"all but raw-zerocopy and the io_uring and pool lease modes "
                   f"{', '.join(ASKED_SEND_MODES)})")
    p.add_argument("--transports", type=_choice_list(("tcp", "udp")),
                   help="tcp (loopback), udp (GSO toward the ifb sink); default both")
    p.add_argument("--batch", type=_positive_int, metavar="N",
                   help="zcnet-batch, zcnet-uring-batch: datagrams per Sender.send_batch call "
                   "(default 32, at "
                   "most 1024)")
    p.add_argument("--connect", type=_hostport, metavar="HOST:PORT",
                   help="two-host mode: stream TCP to a `zcnet serve` there")
    _profile(p)

    p = exp.add_parser("rx", help="tcp_mmap style: receive cost, copy vs asyncio vs zero-copy")
    _common(p)
    p.add_argument("--recv-modes", type=_choice_list(RECEIVE_MODES),
                   help=f"receive modes, comma-separated from {','.join(RECEIVE_MODES)}")
    p.add_argument("--rcvlowat", type=_size_or_zero, metavar="SIZE",
                   help="bytes each recv_into/zcnet call waits for (default 512K; 0: any)")
    p.add_argument("--sender", choices=RX_SENDERS, default=None,
                   help="the sending side: zcnet-forced (default; MSG_ZEROCOPY, so loopback "
                   "pages are mappable), zcnet (default policy: copies once the kernel reports "
                   "copies) or sendall (plain copies: nothing can be mapped)")
    p.add_argument("--lo-mtu", type=_lo_mtu, metavar="MTU|default", default=argparse.SUPPRESS,
                   help="the namespace's loopback MTU: 61512 (default; IPv6 MSS 61440, 15 "
                   "pages) or 'default' to keep 65536 (MSS 65464: nothing can be mapped); "
                   "without a namespace, 'default' drops the listener's TCP_MAXSEG")
    _profile(p)

    p = exp.add_parser("rpc", help="100 connections, 4 KB request/response, zero-copy rx on/off")
    _common(p)
    p.add_argument("--connections", type=_positive_int, default=100)
    p.add_argument("--requests", type=_positive_int,
                   help="timed requests per connection per repetition")
    p.add_argument("--size", type=parse_size, default=4096, help="request and response size")
    p.add_argument("--mmap-churn", action="store_true",
                   help="instead: zcnet's long-lived windows vs a naive fresh window per "
                   "receive, each with and without a server thread mapping and unmapping "
                   "memory in a loop (needs the compiled extension; lock-path share by perf)")

    p = exp.add_parser("memory", help="kernel socket memory with copy vs zero-copy sends")
    _common(p)
    p.add_argument("--duration", type=_positive_float, help="seconds of sampling per mode")
    p.add_argument("--interval", type=_positive_float, default=0.05, help="sampling period, s")

    p = exp.add_parser("rxmem", help="received memory held mapped vs copied: who is charged "
                       "(memory cgroup, socket, RSS, zcnet's account)")
    _common(p)
    p.add_argument("--sizes", type=_size_list, help="bytes held per run, MiB multiples "
                   "(default 16M,64M,256M)")
    p.add_argument("--modes", type=_choice_list(RXMEM_MODES),
                   help=f"comma-separated from {','.join(RXMEM_MODES)} (default all)")
    p.add_argument("--limit-pct", type=_positive_int, metavar="PCT",
                   help="limit-* modes: zcnet's account limit, %% of the size (default 25)")

    p = exp.add_parser("dask", help="Dask: large arrays between two workers, tcp:// vs zc://")
    _common(p)
    p.add_argument("--array-size", type=parse_size, metavar="SIZE",
                   help="bytes per array (default 32M)")
    p.add_argument("--arrays", type=_positive_int, help="arrays per transfer (default 4)")
    p.add_argument("--variants", type=_choice_list(DASK_VARIANT_NAMES),
                   help="comma-separated from " + ",".join(DASK_VARIANT_NAMES)
                   + " (default tcp,zc,zc-forced)")

    p = exp.add_parser("quick", help="a short version of every experiment (about a minute)")
    _common(p)
    _profile(p)

    serve = subparsers.add_parser(
        "serve", help="receiver for `zcnet bench stream --connect` from another host",
        description="Receive benchmark streams (one connection at a time) until interrupted.")
    serve.add_argument("--listen", type=_hostport, required=True, metavar="HOST:PORT",
                       help="address to listen on, e.g. 0.0.0.0:5201 or [::]:5201")


def build_parser(prog: str = "zcnet") -> argparse.ArgumentParser:
    """A parser with just the ``bench`` and ``serve`` commands (for ``python -m zcnet.bench``)."""
    parser = argparse.ArgumentParser(prog=prog)
    add_subparsers(parser.add_subparsers(dest="command", required=True))
    return parser


class _ArgError(Exception):
    pass


def _params(args: argparse.Namespace, experiment: str) -> list[tuple[str, Any]]:
    """The experiments to run, with their parameter objects."""
    from zcnet.bench.dask import DaskParams
    from zcnet.bench.memory import MemoryParams
    from zcnet.bench.modes import QUICK_SEND_MODES
    from zcnet.bench.rpc import RpcParams
    from zcnet.bench.rpcchurn import RpcChurnParams
    from zcnet.bench.rx import RxParams
    from zcnet.bench.rxmem import RxmemParams
    from zcnet.bench.stream import StreamParams

    use_netns = not args.no_netns
    verify = args.verify
    over: dict[str, Any] = {}
    if args.reps is not None:
        over["reps"] = args.reps
    if args.nbytes is not None:
        over["nbytes"] = args.nbytes
    if args.warmup is not None:
        over["warmup"] = args.warmup
    source = {} if args.source_bytes is None else {"source_bytes": args.source_bytes}
    profile: dict[str, Any] = {"profile": True} if getattr(args, "profile", False) else {}
    if experiment == "quick":
        q: dict[str, Any] = {"nbytes": 128 << 20, "warmup": 16 << 20, "reps": 3}
        q.update(over)
        return [
            ("stream", StreamParams(send_modes=QUICK_SEND_MODES, use_netns=use_netns, verify=verify,
                                    **q, **source, **profile)),
            ("rx", RxParams(use_netns=use_netns, verify=verify, **q, **source, **profile)),
            ("rpc", RpcParams(use_netns=use_netns, verify=verify, requests=200,
                              reps=q["reps"])),
            ("rpc-churn", RpcChurnParams(use_netns=use_netns, verify=verify, requests=200,
                                         reps=2)),
            ("memory", MemoryParams(use_netns=use_netns, duration=1.0, reps=2)),
            ("rxmem", RxmemParams(use_netns=use_netns, sizes_mib=(16,))),
            ("dask", DaskParams(use_netns=use_netns, array_bytes=16 << 20, arrays=2,
                                reps=q["reps"])),
        ]
    if experiment == "stream":
        kw: dict[str, Any] = dict(over)
        if args.sizes:
            kw["sizes"] = args.sizes
        if args.modes:
            kw["send_modes"] = args.modes
        if args.transports:
            kw["transports"] = args.transports
        if args.connect:
            if args.transports and "udp" in args.transports:
                raise _ArgError("--connect runs TCP only; drop udp from --transports")
            kw["connect"] = args.connect
            kw["transports"] = ("tcp",)
        if args.batch is not None:
            if args.batch > 1024:
                raise _ArgError("--batch: at most 1024 datagrams per call")
            if args.modes and not {"zcnet-batch", "zcnet-uring-batch"} & set(args.modes):
                raise _ArgError("--batch applies to the zcnet-batch and zcnet-uring-batch send "
                                "modes only")
            kw["batch"] = args.batch
        if args.sizes and max(args.sizes) > 4 << 20:
            raise _ArgError("--sizes: the largest message size is 4M")
        return [("stream", StreamParams(use_netns=use_netns, verify=verify, **kw, **source,
                                        **profile))]
    if experiment == "rx":
        kw = dict(over)
        if args.recv_modes:
            kw["recv_modes"] = args.recv_modes
        if args.rcvlowat is not None:
            kw["rcvlowat"] = args.rcvlowat
        if args.sender is not None:
            kw["send_mode"] = args.sender
        if hasattr(args, "lo_mtu"):  # given (the default is suppressed)
            if args.no_netns and args.lo_mtu is not None:
                raise _ArgError("--lo-mtu MTU needs a namespace (drop --no-netns); "
                                "--lo-mtu default works without one")
            kw["lo_mtu"] = args.lo_mtu
        return [("rx", RxParams(use_netns=use_netns, verify=verify, **kw, **source, **profile))]
    if experiment in ("rpc", "memory", "dask", "rxmem") and args.source_bytes is not None:
        raise _ArgError("--source applies to stream and rx only")
    if experiment == "rxmem":
        if args.nbytes is not None or args.warmup is not None:
            raise _ArgError("rxmem takes --sizes (bytes held), not --bytes or --warmup")
        kw = {}
        if args.sizes:
            if any(s % (1 << 20) for s in args.sizes):
                raise _ArgError("--sizes: rxmem holds whole MiB (e.g. 16M,64M,256M)")
            if max(args.sizes) > 4 << 30:
                raise _ArgError("--sizes: at most 4G held")
            kw["sizes_mib"] = tuple(s >> 20 for s in args.sizes)
        if args.modes:
            kw["modes"] = args.modes
        if args.limit_pct is not None:
            if args.limit_pct >= 100:
                raise _ArgError("--limit-pct: the limit must be below the size (1 to 99)")
            if args.modes and not {"limit-copy", "limit-wait"} & set(args.modes):
                raise _ArgError("--limit-pct applies to the limit-copy and limit-wait modes")
            kw["limit_pct"] = args.limit_pct
        if args.reps:
            kw["reps"] = args.reps
        return [("rxmem", RxmemParams(use_netns=use_netns, **kw))]
    if experiment == "dask":
        if args.nbytes is not None or args.warmup is not None:
            raise _ArgError("dask takes --array-size and --arrays, not --bytes or --warmup")
        if args.array_size is not None and args.array_size > 1 << 30:
            raise _ArgError("--array-size: at most 1G")
        kw = {}
        if args.array_size is not None:
            kw["array_bytes"] = args.array_size
        if args.arrays is not None:
            kw["arrays"] = args.arrays
        if args.variants:
            kw["variants"] = args.variants
        if args.reps:
            kw["reps"] = args.reps
        return [("dask", DaskParams(use_netns=use_netns, **kw))]
    if experiment == "rpc":
        if args.nbytes is not None or args.warmup is not None:
            raise _ArgError("rpc takes --requests and --size, not --bytes or --warmup")
        if args.size > 1 << 20:
            raise _ArgError("--size: at most 1M per request")
        kw = {"connections": args.connections, "size": args.size}
        if args.requests:
            kw["requests"] = args.requests
        if args.reps:
            kw["reps"] = args.reps
        if args.mmap_churn:
            return [("rpc-churn", RpcChurnParams(use_netns=use_netns, verify=verify, **kw))]
        return [("rpc", RpcParams(use_netns=use_netns, verify=verify, **kw))]
    if experiment == "memory":
        if args.warmup is not None:
            raise _ArgError("memory takes --duration, --interval and --bytes, not --warmup")
        kw = {"interval": args.interval}
        if args.nbytes is not None:
            kw["nbytes"] = args.nbytes
        if args.duration:
            kw["duration"] = args.duration
        if args.reps:
            kw["reps"] = args.reps
        return [("memory", MemoryParams(use_netns=use_netns, **kw))]
    raise _ArgError(f"unknown experiment {experiment!r}")


def _run_one(name: str, params: Any, progress: Callable[[str], None]) -> Experiment:
    from zcnet.bench import dask, memory, rpc, rpcchurn, rx, rxmem, stream

    runners: dict[str, Callable[[Any, Callable[[str], None]], Experiment]] = {
        "stream": stream.run_stream, "rx": rx.run_rx, "rpc": rpc.run_rpc,
        "rpc-churn": rpcchurn.run_rpc_churn, "memory": memory.run_memory,
        "rxmem": rxmem.run_rxmem, "dask": dask.run_dask}
    return runners[name](params, progress)


def _plan_count(name: str, params: Any) -> int:
    from zcnet.bench import dask, memory, rpc, rpcchurn, rx, rxmem, stream

    counts: dict[str, Callable[[Any], int]] = {
        "stream": stream.plan_count, "rx": rx.plan_count, "rpc": rpc.plan_count,
        "rpc-churn": rpcchurn.plan_count, "memory": memory.plan_count,
        "rxmem": rxmem.plan_count, "dask": dask.plan_count}
    return counts[name](params)


def _bench(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from dataclasses import asdict

    from zcnet.bench.plot import write_plot
    from zcnet.bench.report import build_report, print_tables, write_json

    prog = "zcnet bench"
    try:
        plan = _params(args, args.bench_experiment)
        for opt, path in (("--json", args.json), ("--plot", args.plot)):
            if path is not None and not os.path.isdir(os.path.dirname(path) or "."):
                raise _ArgError(f"{opt}: directory of {path!r} does not exist")
    except _ArgError as e:
        print(f"{prog} {args.bench_experiment}: error: {e}", file=sys.stderr)
        return 2
    try:
        import rich  # noqa: F401
    except ImportError:
        print(f"{prog}: error: rich is not installed (pip install 'zcnet[bench]')",
              file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"{prog}: error: --plot needs matplotlib (pip install 'zcnet[bench]')",
                  file=sys.stderr)
            return 2

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind: stop the workers, delete the namespaces

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)
    experiments: list[Experiment] = []
    total = sum(_plan_count(n, p) for n, p in plan)
    started = time.monotonic()
    progress = Progress(TextColumn("{task.description:<36}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=args.no_progress)
    with progress:
        task = progress.add_task("starting", total=total)

        def advance(description: str) -> None:
            progress.update(task, advance=1, description=description)

        for name, params in plan:
            progress.update(task, description=f"{name}: setting up")
            experiments.append(_run_one(name, params, advance))
    parameters = {"experiment": args.bench_experiment, "verify": args.verify,
                  "use_netns": not args.no_netns,
                  "elapsed_s": round(time.monotonic() - started, 1),
                  "experiments": {n: asdict(p) for n, p in plan}}
    report = build_report(experiments, parameters, command=argv)
    if not args.no_table:
        print_tables(report)
    if args.json:
        write_json(report, args.json)
    if args.plot:
        write_plot(report, args.plot)
    bad = [e for e in experiments if e["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run the parsed ``bench`` or ``serve`` command; the process exit status."""
    if getattr(args, "command", None) == "serve":
        from zcnet.bench.server import main_serve

        host, port = args.listen
        return main_serve(host, port)
    return _bench(args, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zcnet.bench [bench] EXPERIMENT ...`` (``bench`` may be left out)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("bench", "serve", "-h", "--help"):
        argv = ["bench", *argv]
    args = build_parser("python -m zcnet.bench").parse_args(argv)
    return run(args, argv)
