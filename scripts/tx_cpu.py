#!/usr/bin/env python3
"""Sender CPU cost per GB: zcnet's zero-copy and copy paths, and plain sendall.

Measures the CPU time (user + sys, ``getrusage`` of a child process that does nothing but send)
per GB, alternating the variants, several repetitions; prints medians and min-max, and ratios.

* ``udp-*``: UDP with UDP_SEGMENT (gso 1472) 64768-byte sends toward the ifb sink of a network
  namespace created here (zcnet.netns), where transmit zero-copy really completes uncopied.
  ``udp-plain``: ``sock.send``; ``udp-copy``: zcnet Sender forced into copy mode (threshold above
  the send size); ``udp-zc``: zcnet Sender default policy; ``udp-rawzc``: bare
  ``send(MSG_ZEROCOPY)`` calls reaping every 16 calls, the floor for a one-call-per-datagram
  Python sender. ``udp-copy-bN`` / ``udp-zc-bN``: ``Sender.send_batch`` of N datagrams
  (sendmmsg), copy mode / default policy. ``c-copy`` / ``c-zc``: scripts/tx_ref.c, the same
  sends from C (compiled with ``cc`` into a temporary directory; skipped without a compiler).
* Engines and memory, for the UDP zcnet variants, as dash-separated options after
  ``udp-zc`` / ``udp-copy``: ``uring`` (``SendPolicy(engine="io_uring")``, else
  ``"msg_zerocopy"``), ``bN`` (``send_batch`` of N), ``pool`` (the buffers are the views of
  ``BufferPool`` leases held for the run, registered with the ring before the timed window, as
  the C io_uring loop registers its buffer), ``leases`` (each send takes fresh leases from a
  pool and hands them to the Sender, which returns them on completion: the lease flight is
  timed too; they are not refilled, as the C loop sends whatever its buffer holds). E.g.
  ``udp-zc-uring-b32-leases``. The engine is chosen explicitly, whatever ``ZCNET_SEND_ENGINE`` says.
* ``tcp-*``: TCP over loopback, a receiver in the parent process reading with ``recv_into``.
  ``tcp-sendall``: plain ``sock.sendall``; ``tcp-sender``: zcnet Sender default policy (falls back
  to copy after the kernel reports copied completions).

``--baseline DIR`` adds, after each zcnet variant, the same variant run with another zcnet's
sources first on ``PYTHONPATH`` (``base:udp-zc`` ...), alternating in the same run: e.g.
``git archive <rev> src | tar -x -C /tmp/base`` then ``--baseline /tmp/base/src``.

Needs root (namespaces). Usage: ``sudo .venv/bin/python scripts/tx_cpu.py [--reps 5] [--gb 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

GSO = 1472
DGRAM = 44 * GSO


def _worker(variant: str, nbytes: int, port: int, send_size: int, pool: int) -> None:
    from zcnet.lowlevel.constants import SOL_UDP, UDP_SEGMENT
    from zcnet.netns import IFB_SINK_ADDR
    from zcnet.pool import BufferPool
    from zcnet.sender import Sender, SendPolicy

    parts = variant.split("-")  # udp-zc[-uring][-bN][-pool|-leases]
    opts = parts[2:] if variant.startswith("udp-") else []
    # a pool of distinct buffers larger than the caches, as real data would be
    nbuf = max(8, pool // send_size)
    buffer_pool = BufferPool() if "pool" in opts or "leases" in opts else None
    if buffer_pool is not None and "pool" in opts:
        held = [buffer_pool.acquire(send_size) for _ in range(nbuf)]
        for lease in held:
            lease.view[:] = os.urandom(send_size)
        bufs = [lease.view for lease in held]
    else:
        backing = memoryview(bytearray(os.urandom(1 << 20)) * (nbuf * send_size // (1 << 20) + 1))
        bufs = [backing[i * send_size : (i + 1) * send_size] for i in range(nbuf)]
    if variant.startswith("udp"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((IFB_SINK_ADDR, 9000))
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, GSO)
    else:
        sock = socket.create_connection(("127.0.0.1", port))
    count = nbytes // send_size
    t0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    stats = None
    if variant == "udp-rawzc":  # the floor: bare MSG_ZEROCOPY sends, reaping every 16 calls
        from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_ZEROCOPY
        from zcnet.lowlevel.errqueue import drain_errqueue

        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        send = sock.send
        for i in range(count):
            send(bufs[i % nbuf], MSG_ZEROCOPY)
            if i % 16 == 15:
                drain_errqueue(sock)
        while True:  # the ifb completes at once; a last read for the tail
            if not drain_errqueue(sock):
                break
    elif variant in ("udp-plain", "tcp-sendall"):
        send = sock.send if variant == "udp-plain" else sock.sendall
        for i in range(count):
            send(bufs[i % nbuf])
    else:
        base = "-".join(parts[:2])
        batch = next((int(o[1:]) for o in opts if o[:1] == "b" and o[1:].isdigit()), 0)
        engine = "io_uring" if "uring" in opts else "msg_zerocopy"
        copy_only = {"zerocopy_threshold": 1 << 30} if base == "udp-copy" else {}
        policy = SendPolicy(engine=engine, **copy_only)  # type: ignore[arg-type]
        with Sender(sock, policy) as sender:
            if buffer_pool is not None:
                acquire = buffer_pool.acquire
                if "pool" in opts:
                    sender.register_pool(buffer_pool)  # outside the timed window
                else:  # the pool's slabs, mapped and registered before the window
                    for _ in range(4):
                        sender.send_batch([acquire(send_size) for _ in range(max(batch, 1))])
                    sender.flush(30)
            t0 = resource.getrusage(resource.RUSAGE_SELF)
            w0 = time.perf_counter()
            if "leases" in opts and batch:
                sb = sender.send_batch
                for _ in range(count // batch):
                    sb([acquire(send_size) for _ in range(batch)])
                count = count // batch * batch
            elif "leases" in opts:
                s = sender.send
                for _ in range(count):
                    s(acquire(send_size))
            elif batch:  # send_batch of `batch` datagrams per call
                sb = sender.send_batch
                groups = [bufs[k : k + batch] for k in range(0, nbuf - batch + 1, batch)]
                ngroups = len(groups)
                for i in range(count // batch):
                    sb(groups[i % ngroups])
                count = count // batch * batch
            else:
                s = sender.send
                for i in range(count):
                    s(bufs[i % nbuf])
            sender.flush(30)
            stats = sender.stats
            sock = None  # type: ignore[assignment]
    t1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - w0
    if sock is not None:
        sock.close()
    user = t1.ru_utime - t0.ru_utime
    sys_ = t1.ru_stime - t0.ru_stime
    print(json.dumps({
        "variant": variant, "bytes": count * send_size, "cpu": user + sys_, "user": user,
        "sys": sys_,
        "wall": wall,
        "mode": stats.mode if stats else None,
        "bytes_zerocopy": stats.bytes_zerocopy if stats else 0,
    }))


def _overhead() -> None:
    """Python cost per Sender.send() in copy mode beyond the send system call itself: the
    socket's sendall is replaced by a no-op (so kernel cost and noise drop out)."""
    import timeit

    from zcnet import implementation
    if implementation().name != "python":
        raise SystemExit("--overhead stubs the pure-Python implementation's send calls (the "
                         "compiled one calls send(2) itself): run it with ZCNET_NO_EXTENSIONS=1")
    from zcnet.lowlevel.sendmmsg import MmsgBatch
    from zcnet.sender import Sender, SendPolicy

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as r:
        r.bind(("127.0.0.1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        sender = Sender(u, SendPolicy(zerocopy_threshold=1 << 30))
        noop = lambda b, flags=0: len(b)  # noqa: E731  (a whole send)
        sender._send = noop
        for label, buf in (("bytes", bytes(65536)), ("memoryview", memoryview(bytes(65536)))):
            base = min(timeit.repeat(lambda b=buf: noop(b), number=100_000, repeat=7))
            cost = min(timeit.repeat(lambda b=buf: sender.send(b), number=100_000, repeat=7))
            print(f"Sender.send copy-mode overhead ({label}): {(cost - base) * 1e4:.0f} ns/call")
        sender.close()
        # send_batch in zero-copy mode with sendmmsg(2) replaced by "all sent" (the tracker,
        # tickets, buffer addresses and completion reaping of an empty error queue remain)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(r.getsockname())
        sender = Sender(u, SendPolicy(force_zerocopy=True))
        sender._mmsg = MmsgBatch(64)
        sender._mmsg._fn = lambda fd, addr, count, flags: count
        backing = memoryview(bytearray(32 * 65536))
        bufs = [backing[k * 65536 : (k + 1) * 65536] for k in range(32)]
        n = 2000
        cost = min(timeit.repeat(lambda: sender.send_batch(bufs), number=n, repeat=5))
        print(f"Sender.send_batch(32) zero-copy overhead: {cost / n / 32 * 1e9:.0f} ns/datagram "
              "(no completions arrive: the tracker grows, a pessimistic figure)")
        sender._tracker = type(sender._tracker)()  # forget the never-sent datagrams
        sender.close()


def _drain(ls: socket.socket, done: list[int]) -> None:
    conn, _ = ls.accept()
    buf = bytearray(1 << 20)
    n = 0
    with conn:
        while True:
            k = conn.recv_into(buf)
            if not k:
                break
            n += k
    done.append(n)


_C_BINARY: list[str] = []
#: the variants that run zcnet code (the others are references)
def _is_zcnet(variant: str) -> bool:
    """Whether ``variant`` runs zcnet's Sender (so ``--baseline`` runs it a second time)."""
    return (variant.startswith(("udp-zc", "udp-copy")) and variant != "udp-rawzc") or (
        variant == "tcp-sender")


def _c_reference() -> str:
    """Compile scripts/tx_ref.c (once per run) into a temporary directory; its path."""
    if not _C_BINARY:
        import atexit
        import shutil
        import tempfile

        tmp = tempfile.mkdtemp(prefix="zcnet-txref-")
        atexit.register(shutil.rmtree, tmp, True)
        binary = os.path.join(tmp, "tx_ref")
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tx_ref.c")
        subprocess.run(["cc", "-O2", "-o", binary, src], check=True)
        _C_BINARY.append(binary)
    return _C_BINARY[0]


def _run(
    argv: list[str], variant: str, nbytes: int, send_size: int, pool: int,
    baseline: str | None = None,
) -> dict[str, object]:
    env = None
    if variant.startswith("base:"):
        variant = variant[5:]
        env = dict(os.environ, PYTHONPATH=os.path.abspath(baseline or "."))
    port = 0
    ls = None
    done: list[int] = []
    th = None
    if variant.startswith("tcp"):
        ls = socket.create_server(("127.0.0.1", 0))
        port = ls.getsockname()[1]
        th = threading.Thread(target=_drain, args=(ls, done))
        th.start()
    if variant.startswith("c-"):
        from zcnet.netns import IFB_SINK_ADDR

        w0 = time.perf_counter()
        out = subprocess.run(
            [*argv, _c_reference(), variant[2:], str(nbytes), str(pool), str(send_size),
             str(GSO), IFB_SINK_ADDR, "9000"],
            capture_output=True, text=True, check=True,
        ).stdout
        c_result: dict[str, object] = json.loads(out)
        c_result.update(variant=variant, cpu=float(c_result["user"]) + float(c_result["sys"]),
                        wall=time.perf_counter() - w0, mode=None, bytes_zerocopy=0)
        return c_result
    out = subprocess.run(
        [*argv, sys.executable, __file__, "--worker", variant, "--bytes", str(nbytes),
         "--port", str(port), "--send-size", str(send_size), "--pool", str(pool)],
        capture_output=True, text=True, check=True, env=env,
    ).stdout
    if th is not None and ls is not None:
        th.join()
        ls.close()
        assert done and done[0] == nbytes // send_size * send_size, "receiver lost bytes"
    result: dict[str, object] = json.loads(out)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gb", type=float, default=2.0, help="GB per run")
    ap.add_argument("--tcp-send-size", type=int, default=1 << 20)
    ap.add_argument("--pool", type=int, default=64 << 20, help="bytes of distinct send buffers")
    ap.add_argument("--only", default="", help="comma-separated variants to run")
    ap.add_argument("--worker")
    ap.add_argument("--bytes", type=int)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--send-size", type=int, default=DGRAM)
    ap.add_argument("--overhead", action="store_true", help="only the per-call Python overhead")
    ap.add_argument("--baseline", help="src directory of another zcnet to run side by side")
    a = ap.parse_args()
    if a.overhead:
        _overhead()
        return 0
    if a.worker:
        _worker(a.worker, a.bytes, a.port, a.send_size, a.pool)
        return 0

    from zcnet.netns import Netns

    nbytes = int(a.gb * 1e9)
    results: dict[str, list[float]] = {}
    user_gb: dict[str, list[float]] = {}
    sys_gb: dict[str, list[float]] = {}
    with Netns(ifb_sink=True) as ns:
        runs = [("udp-plain", DGRAM), ("udp-copy", DGRAM), ("udp-zc", DGRAM), ("udp-rawzc", DGRAM),
                ("udp-copy-b8", DGRAM), ("udp-zc-b8", DGRAM),
                ("udp-copy-b32", DGRAM), ("udp-zc-b32", DGRAM),
                ("c-copy", DGRAM), ("c-zc", DGRAM),
                ("tcp-sendall", a.tcp_send_size), ("tcp-sender", a.tcp_send_size)]
        if a.only:  # in the order given; any UDP variant the options above spell
            runs = [(v, a.tcp_send_size if v.startswith("tcp") else DGRAM)
                    for v in a.only.split(",")]
        if a.baseline:
            runs = [x for r in runs for x in
                    ([r, ("base:" + r[0], r[1])] if _is_zcnet(r[0]) else [r])]
        if shutil.which("cc") is None:
            runs = [r for r in runs if not r[0].startswith("c-")]
        for rep in range(a.reps):
            for variant, size in runs if rep % 2 == 0 else runs[::-1]:
                argv = ns.exec_argv([]) if variant.startswith(("udp", "c-", "base:udp")) else []
                r = _run(argv, variant, nbytes, size, a.pool, a.baseline)
                gb = int(r["bytes"]) / 1e9  # type: ignore[call-overload]
                per_gb = float(r["cpu"]) / gb  # type: ignore[arg-type]
                results.setdefault(variant, []).append(per_gb)
                user_gb.setdefault(variant, []).append(float(r["user"]) / gb)  # type: ignore[arg-type]
                sys_gb.setdefault(variant, []).append(float(r["sys"]) / gb)  # type: ignore[arg-type]
                print(f"  rep {rep} {variant}: {per_gb:.4f} CPU s/GB "
                      f"(user {user_gb[variant][-1]:.4f}, sys {sys_gb[variant][-1]:.4f}), "
                      f"{int(r['bytes']) / float(r['wall']) / 1e9:.2f} GB/s, mode={r['mode']} "
                      f"bytes_zerocopy={r['bytes_zerocopy']}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'variant':<26} {'CPU s/GB median':>16} {'min':>8} {'max':>8} "
          f"{'user med':>9} {'sys med':>8}")
    for k, v in results.items():
        print(f"{k:<26} {med[k]:>16.4f} {min(v):>8.4f} {max(v):>8.4f} "
              f"{statistics.median(user_gb[k]):>9.4f} {statistics.median(sys_gb[k]):>8.4f}")
    for label, num, den in (
        ("udp zero-copy / zcnet copy path", "udp-zc", "udp-copy"),
        ("udp zc batch 8 / copy batch 8", "udp-zc-b8", "udp-copy-b8"),
        ("udp zc batch 32 / copy batch 32", "udp-zc-b32", "udp-copy-b32"),
        ("udp zc batch 32 / copy unbatched", "udp-zc-b32", "udp-copy"),
        ("udp zc batch 32 / plain send", "udp-zc-b32", "udp-plain"),
        ("udp zero-copy / plain send", "udp-zc", "udp-plain"),
        ("udp bare MSG_ZEROCOPY / plain send", "udp-rawzc", "udp-plain"),
        ("C reference: zero-copy / copy", "c-zc", "c-copy"),
        ("udp zc batch 32 / C copy", "udp-zc-b32", "c-copy"),
        ("tcp Sender / plain sendall", "tcp-sender", "tcp-sendall"),
        *((f"{v} / baseline {v}", v, "base:" + v) for v in results if _is_zcnet(v)),
    ):
        if num in med and den in med:
            pairs = sorted(x / y for x, y in zip(results[num], results[den], strict=True))
            print(f"{label:<36}: {med[num] / med[den]:.3f} (ratio of medians); per-repetition "
                  f"ratios median {statistics.median(pairs):.3f}, {pairs[0]:.3f}-{pairs[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
