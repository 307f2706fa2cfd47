#!/usr/bin/env python3
"""Receiver CPU per GB and throughput of zcnet.aio against asyncio streams and BufferedProtocol.

The receiver (this process) runs each mode of ``zcnet.bench.aio_modes`` on asyncio's default
loop and on uvloop; the sender is a child process (a blocking ``zcnet.Sender`` with
``force_zerocopy`` so that loopback pages are mappable, to a ``TCP_MAXSEG`` 4108 listener; see
docs/ARCHITECTURE.md, 'Receive: loopback'). Every byte is verified against ``StreamPattern``; the
verification's own CPU time is measured and subtracted. Configurations alternate within each
repetition; medians and
min-max are reported. Traffic stays on 127.0.0.1.

    .venv/bin/python scripts/aio_cpu.py --bytes 512M --reps 5
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from zcnet._core.pattern import StreamPattern
from zcnet.bench.aio_modes import AIO_LOOPS, ASYNCIO_RECEIVE_MODES, receive
from zcnet.receiver import make_mappable_listener

BLOCK = 1 << 20
REFERENCE = "blocking Receiver"


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper()
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def sender(port: int, total: int) -> None:
    """Child: send ``total`` pattern bytes with MSG_ZEROCOPY forced, then close."""
    from zcnet.sender import Sender, SendPolicy

    pattern = StreamPattern(BLOCK)
    sock = socket.create_connection(("127.0.0.1", port))
    with Sender(sock, SendPolicy(force_zerocopy=True)) as tx:
        off = 0
        while off < total:
            n = min(BLOCK, total - off)
            tx.send(pattern.block(off, n))  # constant bytes: reuse before completion is harmless
            off += n
        tx.flush(30)


def _blocking_receiver(conn: socket.socket, warmup: int, nbytes: int, size: int,
                       consume: Any, begin: Any, end: Any) -> dict[str, Any]:
    """Reference: the blocking zcnet.Receiver on the same connection (no event loop)."""
    from zcnet.receiver import Receiver

    got = 0
    total = warmup + nbytes
    mapped = 0
    if not warmup:
        begin()
    with Receiver(conn) as rx:
        while got < total:
            with rx.recv(min(size, total - got)) as chunk:
                if not len(chunk):
                    raise EOFError(f"EOF with {total - got} bytes missing")
                n = len(chunk)
                if got + n > warmup:
                    k = min(n, got + n - warmup)
                    mapped += k if chunk.mapped else 0
                    if got < warmup:
                        consume(chunk.view[:n - k])
                        begin()
                        consume(chunk.view[n - k:])
                    else:
                        consume(chunk.view)
                else:
                    consume(chunk.view)
                got += n
                if got == warmup:
                    begin()
    end()
    return {"bytes": got, "bytes_mapped": mapped}


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def one_run(mode: str, loop: str, warmup: int, nbytes: int, size: int) -> dict[str, Any]:
    pattern = StreamPattern(max(size, BLOCK))
    lsock = make_mappable_listener("127.0.0.1", 0)
    port = lsock.getsockname()[1]
    child = subprocess.Popen([sys.executable, __file__, "--child", str(port), str(warmup + nbytes)])
    try:
        conn, _ = lsock.accept()
    finally:
        lsock.close()
    state: dict[str, Any] = {"offset": 0, "verify": 0.0}

    def consume(data: Any) -> None:
        t0 = time.process_time()
        view = memoryview(data)
        if not pattern.matches(state["offset"], view):
            raise AssertionError(f"{mode}/{loop}: wrong bytes at {state['offset']}")
        state["offset"] += len(view)
        if "t0" in state and "t1" not in state:
            state["verify"] += time.process_time() - t0

    def begin() -> None:
        state["verify"] = 0.0
        state["t0"] = (*_cpu(), time.monotonic())

    def end() -> None:
        state["t1"] = (*_cpu(), time.monotonic())

    try:
        if mode == REFERENCE:
            res = _blocking_receiver(conn, warmup, nbytes, size, consume, begin, end)
        else:
            res = receive(mode, loop, conn, warmup=warmup, nbytes=nbytes, size=size,
                          consume=consume, begin_timed=begin, end_timed=end)
    finally:
        if child.wait(60) != 0:
            raise RuntimeError(f"sender exited with {child.returncode}")
    assert res["bytes"] == warmup + nbytes == state["offset"]
    user = state["t1"][0] - state["t0"][0]
    sys_ = state["t1"][1] - state["t0"][1]
    cpu = user + sys_ - state["verify"]
    wall = state["t1"][2] - state["t0"][2]
    gb = nbytes / 1e9
    out = {"mode": mode, "loop": loop, "cpu_s_per_gb": cpu / gb, "gb_per_s": gb / wall,
           "sys_s_per_gb": sys_ / gb, "verified_bytes": res["bytes"],
           "verify_cpu_s": state["verify"]}
    if "bytes_mapped" in res:
        out["mapped_fraction"] = res["bytes_mapped"] / max(1, nbytes)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=_size, default=_size("256M"), help="timed bytes per run")
    ap.add_argument("--warmup", type=_size, default=_size("32M"))
    ap.add_argument("--size", type=_size, default=_size("256K"), help="bytes asked per read")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=list(ASYNCIO_RECEIVE_MODES))
    ap.add_argument("--loops", nargs="+", default=list(AIO_LOOPS))
    ap.add_argument("--reference", action="store_true",
                    help="also run the blocking zcnet.Receiver (no event loop) for comparison")
    ap.add_argument("--json", help="write all runs here")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sender(*args.child)
        return 0
    runs: list[dict[str, Any]] = []
    configs = [(m, lp) for lp in args.loops for m in args.modes]
    if args.reference:
        configs.append((REFERENCE, "none"))
    for rep in range(args.reps):
        order = configs if rep % 2 == 0 else configs[::-1]
        for mode, loop in order:
            r = one_run(mode, loop, args.warmup, args.bytes, args.size)
            runs.append(r)
            print(f"rep {rep}: {loop:8} {mode:18} {r['cpu_s_per_gb']:.3f} CPU s/GB "
                  f"{r['gb_per_s']:.2f} GB/s" + (f" mapped {r['mapped_fraction']:.1%}"
                                                  if "mapped_fraction" in r else ""),
                  file=sys.stderr)
    print(f"\n{args.bytes >> 20} MiB timed per run, {args.size >> 10} KiB reads, "
          f"{args.reps} reps; median [min-max]; receiver CPU excludes byte verification")
    print(f"{'loop':8} {'mode':18} {'CPU s/GB':>22} {'sys s/GB':>9} {'GB/s':>20} {'mapped':>7}")
    for mode, loop in configs:
        rs = [r for r in runs if r["mode"] == mode and r["loop"] == loop]
        c = [r["cpu_s_per_gb"] for r in rs]
        g = [r["gb_per_s"] for r in rs]
        mf = [r["mapped_fraction"] for r in rs if "mapped_fraction" in r]
        mapped = statistics.median(mf) if mf else None
        sy = statistics.median(r["sys_s_per_gb"] for r in rs)
        print(f"{loop:8} {mode:18} {statistics.median(c):8.3f} [{min(c):.3f}-{max(c):.3f}]"
              f" {sy:9.3f}"
              f" {statistics.median(g):7.2f} [{min(g):.2f}-{max(g):.2f}]"
              f" {'' if mapped is None else f'{mapped:6.1%}'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
