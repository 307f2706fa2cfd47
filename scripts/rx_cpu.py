#!/usr/bin/env python3
"""Receiver CPU per GB: zcnet zero-copy receive versus recv_into a preallocated buffer.

tcp_mmap-style experiment (tools/testing/selftests/net/tcp_mmap.c): inside a fresh network
namespace whose loopback MTU is 61512 (IPv6 MSS 61440 = 15 pages), a child process sends a
pattern stream with MSG_ZEROCOPY (forced; that is what makes loopback pages mappable) and this
process receives it, alternating the receive modes run after run. The receiver's CPU is
``os.times()`` user + system of this process only (the sender is a child, not counted). Reports
medians and min-max of CPU s/GB, throughput and % mapped per mode, and the ratio to recv_into.

    sudo .venv/bin/python scripts/rx_cpu.py --gib 4 --reps 5 [--verify]

``--verify`` checks every byte against the pattern (that CPU is then included in the figure);
without it the receiver does not touch the bytes, like tcp_mmap. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import time

from zcnet._core.pattern import StreamPattern
from zcnet.netns import Netns
from zcnet.receiver import Receiver, RecvPolicy

SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
MSG_ERRQUEUE = 0x2000
CHUNK = 2 * 1024 * 1024
MODES = ("zcnet", "recv_into")


def _drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recvmsg(0, 256, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return


def run_sender(port: int, total: int, zerocopy: bool) -> None:
    """The child: connect to [::1]:port and send ``total`` pattern bytes."""
    pattern = StreamPattern(max_block=512 * 1024)
    sock = socket.create_connection(("::1", port))
    flags = 0
    if zerocopy:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        flags = MSG_ZEROCOPY
    off = 0
    while off < total:
        n = min(512 * 1024, total - off)
        try:
            off += sock.send(pattern.block(off, n), flags)
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            select.select([], [], [sock], 0.01)
        if zerocopy:
            _drain(sock)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the receiver to close, then drain and leave
    _drain(sock)
    sock.close()


def receive(mode: str, sock: socket.socket, total: int, verify: bool,
            rcvlowat: int = 512 * 1024) -> dict[str, float]:
    """Receive until EOF in ``mode``; returns CPU seconds, wall seconds and bytes mapped."""
    pattern = StreamPattern(max_block=CHUNK) if verify else None
    off = 0
    mapped = 0
    t0, w0 = os.times(), time.perf_counter()
    if mode == "zcnet":
        with Receiver(sock, RecvPolicy(rcvlowat=rcvlowat)) as rx:
            while True:
                with rx.recv(CHUNK) as chunk:
                    if not chunk:
                        break
                    if pattern is not None and not pattern.matches(off, chunk.view):
                        raise SystemExit(f"corrupt bytes at offset {off}")
                    off += len(chunk)
            mapped = rx.stats.bytes_mapped
            fallback = rx.stats.fallback_reason
    else:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            if pattern is not None and not pattern.matches(off, view[:n]):
                raise SystemExit(f"corrupt bytes at offset {off}")
            off += n
        sock.close()
        fallback = None
    t1, w1 = os.times(), time.perf_counter()
    if off != total:
        raise SystemExit(f"{mode}: received {off} bytes, expected {total}")
    if fallback:
        print(f"  zcnet fell back to copying: {fallback}", file=sys.stderr)
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    return {"cpu_s": cpu, "user_s": t1.user - t0.user, "sys_s": t1.system - t0.system,
            "wall_s": w1 - w0, "mapped": mapped / total}


def one_run(ns: Netns, mode: str, total: int, verify: bool, rcvlowat: int) -> dict[str, float]:
    with ns.entered():
        ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with ls:
        ls.bind(("::1", 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        argv = ns.exec_argv([sys.executable, os.path.abspath(__file__), "--send", str(port),
                             str(total)])
        child = subprocess.Popen(argv)
        try:
            conn, _ = ls.accept()
            result = receive(mode, conn, total, verify, rcvlowat)
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(60)
    if child.returncode != 0:
        raise SystemExit(f"sender failed with {child.returncode}")
    return result


def call_overhead(n: int = 200_000) -> None:
    """Time one TCP_ZEROCOPY_RECEIVE call through ctypes on an idle connection (no data)."""
    from zcnet.lowlevel.zerocopy_rx import Window, ZerocopyCall

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        client = socket.create_connection(ls.getsockname())
        server, _ = ls.accept()
    with client, server:
        window = Window(server.fileno(), CHUNK)
        call = ZerocopyCall(server.fileno())
        t0, w0 = os.times(), time.perf_counter()
        for _ in range(n):
            call(window.address, CHUNK)
        t1, w1 = os.times(), time.perf_counter()
        window.close()
    usr, sys_ = (t1.user - t0.user) / n * 1e6, (t1.system - t0.system) / n * 1e6
    print(f"TCP_ZEROCOPY_RECEIVE via ctypes, idle socket: {(w1 - w0) / n * 1e6:.2f} us/call "
          f"(user {usr:.2f}, sys {sys_:.2f})")


def _summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="GiB per run (default 4)")
    ap.add_argument("--reps", type=int, default=5, help="runs per mode, alternating (default 5)")
    ap.add_argument("--verify", action="store_true", help="check every byte (CPU included)")
    ap.add_argument("--rcvlowat", type=int, default=512 * 1024,
                    help="RecvPolicy.rcvlowat for zcnet (default 524288; 0 = off)")
    ap.add_argument("--overhead", action="store_true", help="only time one zero-copy call")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    ap.add_argument("--send", nargs=2, type=int, metavar=("PORT", "BYTES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.overhead:
        call_overhead()
        return 0
    if args.send:
        run_sender(args.send[0], args.send[1], zerocopy=True)
        return 0
    total = int(args.gib * (1 << 30))
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with Netns() as ns:
        for rep in range(args.reps):
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for mode in order:
                r = one_run(ns, mode, total, args.verify, args.rcvlowat)
                results[mode].append(r)
                print(f"rep {rep} {mode:9s} cpu {r['cpu_s'] / (total / 1e9):.3f} s/GB  "
                      f"{total / r['wall_s'] / 1e9:.2f} GB/s  mapped {100 * r['mapped']:.1f} %",
                      file=sys.stderr)
    gb = total / 1e9
    print(f"\nreceiver CPU per GB (user+sys of the receiving process), {args.reps} runs of "
          f"{args.gib:g} GiB, IPv6 lo MTU 61512, MSG_ZEROCOPY sender, "
          f"{'bytes verified' if args.verify else 'bytes not touched'}, zcnet rcvlowat "
          f"{args.rcvlowat}; median (min-max)")
    base = statistics.median(r["cpu_s"] / gb for r in results["recv_into"])
    for mode in MODES:
        rs = results[mode]
        cpu = [r["cpu_s"] / gb for r in rs]
        usr = [r["user_s"] / gb for r in rs]
        sys_ = [r["sys_s"] / gb for r in rs]
        thr = [gb / r["wall_s"] for r in rs]
        mapped = [100 * r["mapped"] for r in rs]
        print(f"  {mode:9s} cpu s/GB {_summary(cpu)}  user {_summary(usr)}  sys {_summary(sys_)}"
              f"  GB/s {_summary(thr)}  mapped % {_summary(mapped)}"
              f"  ratio {statistics.median(cpu) / base:.2f}x")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
