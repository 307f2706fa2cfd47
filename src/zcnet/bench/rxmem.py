"""The ``rxmem`` experiment: received memory held mapped vs copied, and who is charged for it.

Theory of operation (docs/ARCHITECTURE.md, 'Memory: what the kernel charges'; docs/bench.md,
"rxmem"): a receiver that holds what it received (it batches, parses later, or is slow) holds
either copies, which are anonymous pages of its own, charged to its memory cgroup like any
allocation, or, with ``TCP_ZEROCOPY_RECEIVE``, the network pages themselves mapped into its
address space. Once mapped, a page is off the socket's receive queue, so the socket no longer
charges it (``SO_MEMINFO`` rmem_alloc, sockstat, the cgroup's socket charge), and the kernel
charges it to no memory cgroup either (``vm_insert_pages`` in mm/memory.c maps a page without
charging it; the memcg accounting patch for zero-copy receive was never merged): it shows only as
the process's file-mapped RSS (``RssFile``, the ``MM_FILEPAGES`` counter). zcnet's ``"mapped"``
account (:func:`zcnet.accounting.recv_accounted`) is the ledger that still sees those bytes.

Per run a fresh memory cgroup (:class:`zcnet.bench.memcg.MemCgroup`, socket charge enabled)
holds only the receiver worker, which joins it before it allocates anything it measures. A
sender worker outside the group streams ``size`` bytes of the stream pattern with zcnet's Sender
forced to ``MSG_ZEROCOPY`` (over loopback pages are mappable only then), inside the
experiment's namespace (lo MTU 61512: MSS 61440). The receiver holds every byte until EOF, then
reads its figures (deltas from a baseline taken before the sender connects), then checks every
byte, releases everything and reads them again. Modes:

- ``mapped``: a zcnet Receiver with enough long-lived windows to hold ``size`` bytes mapped,
  each chunk charged to an unlimited zcnet account;
- ``copied``: ``recv_into`` fresh 1 MiB ``bytearray`` chunks (what a program without zero-copy
  does);
- ``limit-copy`` / ``limit-wait``: ``mapped`` with the account limited below ``size``
  (``limit_pct``). A receive asks for no more than the account's headroom; when it has none,
  ``limit-copy`` receives the rest as copies (``Receiver.recv_into`` fresh buffers, charged to the
  cgroup) and ``limit-wait`` processes (checks and releases) its oldest held chunks until there is
  room, as an application that waits for its own consumer would. Nothing is lost either way.

Figures: bytes held (mapped / copied), the cgroup's charge and its anonymous, file-mapped and
socket parts, sockstat's TCP charge (kernel-wide: other traffic adds noise), the socket's
``SO_MEMINFO`` rmem_alloc, the process's RSS and its file-mapped part (``/proc/self/status``),
and zcnet's account; ``unaccounted_mib`` is what neither the cgroup nor zcnet's account holds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from zcnet.bench.common import Progress, experiment_result, group_summary, rotated
from zcnet.bench.env import environment
from zcnet.bench.memcg import MemCgroup, memcg_unavailable_reason, read_memcg
from zcnet.bench.modes import RXMEM_MODES
from zcnet.bench.pattern import Verifier
from zcnet.bench.results import Experiment, RxmemRun
from zcnet.bench.server import make_listener
from zcnet.bench.workers import Worker, WorkerError, spawn

__all__ = ["LIMIT_MODES", "METRICS", "MODES", "RxmemParams", "derive_metrics", "plan_count",
           "rxmem_receiver", "rxmem_sender", "run_rxmem"]

MIB: Final = 1 << 20
PAGE: Final = 4096
MODES: Final = RXMEM_MODES
LIMIT_MODES: Final = ("limit-copy", "limit-wait")
#: TCP_MAXSEG on the listener when there is no namespace (page-sized MSS at the default MTU;
#: docs/ARCHITECTURE.md, 'Receive: loopback').
_MSS_NO_NETNS: Final = 4096 + 12
_MSG: Final = 256 * 1024
METRICS: Final = (
    "held_mib", "held_mapped_mib", "held_copied_mib", "cgroup_charge_mib", "cgroup_anon_mib",
    "cgroup_file_mapped_mib", "cgroup_sock_mib", "sockstat_tcp_mib", "rmem_alloc_mib", "rss_mib",
    "rss_file_mib", "rss_anon_mib", "zcnet_mapped_mib", "zcnet_mapped_peak_mib",
    "unaccounted_mib", "limit_mib", "received_mib",
)


@dataclass
class RxmemParams:
    """Parameters of the rxmem experiment."""

    sizes_mib: tuple[int, ...] = (16, 64, 256)
    modes: tuple[str, ...] = MODES
    limit_pct: int = 25          # the account's limit in the limit-* modes, % of the size
    window_bytes: int = MIB      # one zero-copy window (and one copied chunk)
    reps: int = 1
    use_netns: bool = True


# -- readings (in the receiver worker) -----------------------------------------------------------


def _status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of this process, bytes (/proc/self/status, kB)."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _reading(conn: socket.socket | None, cgroup: tuple[str, int] | None) -> dict[str, Any]:
    from zcnet.lowlevel.meminfo import read_sockstat, so_meminfo

    r: dict[str, Any] = {"t": time.monotonic()}
    if cgroup is not None:
        cg = read_memcg(*cgroup)
        r.update(cgroup_usage=cg.usage, cgroup_anon=cg.anon, cgroup_file_mapped=cg.file_mapped,
                 cgroup_sock=cg.sock)
    st = read_sockstat()
    r["sockstat_tcp"] = st.value.tcp_mem_bytes if st.value is not None else None
    try:
        r["rmem_alloc"] = None if conn is None else so_meminfo(conn).rmem_alloc
    except OSError:
        r["rmem_alloc"] = None
    status = _status()
    r.update(rss=status.get("VmRSS"), rss_anon=status.get("RssAnon"),
             rss_file=status.get("RssFile"))
    return r


# -- holding (in the receiver worker) ------------------------------------------------------------


class _Held:
    """The chunks held, in stream order: (stream offset, chunk, mapped); a chunk is a copied
    ``memoryview`` or an :class:`zcnet.accounting.AccountedChunk` (its charge released with it)."""

    def __init__(self, verifier: Verifier) -> None:
        self.items: deque[tuple[int, Any, bool]] = deque()
        self.mapped = self.copied = 0
        self.verifier = verifier
        self.processed = 0  # bytes checked and released before the end (limit-wait)

    def add(self, offset: int, item: Any, nbytes: int, mapped: bool) -> None:
        self.items.append((offset, item, mapped))
        if mapped:
            self.mapped += nbytes
        else:
            self.copied += nbytes

    def process_oldest(self) -> None:
        """Check every byte of the oldest chunk, then release it."""
        off, item, mapped = self.items.popleft()
        n = self._check(off, item)
        if mapped:
            self.mapped -= n
        else:
            self.copied -= n
        self.processed += n

    def _check(self, off: int, item: Any) -> int:
        if isinstance(item, memoryview):
            self.verifier.verify(off, item)
            n = len(item)
            item.release()
            return n
        n = len(item)
        self.verifier.verify(off, item.view)
        item.release()
        return n

    def check_all(self) -> int:
        """Check and release everything held; the bytes checked."""
        total = 0
        while self.items:
            off, item, _ = self.items.popleft()
            total += self._check(off, item)
        self.mapped = self.copied = 0
        return total


def _fill(recv_into: Callable[[memoryview], int], view: memoryview) -> int:
    """Receive into all of ``view`` (fewer bytes only at EOF)."""
    got = 0
    while got < len(view):
        n = recv_into(view[got:])
        if n == 0:
            break
        got += n
    return got


def _receive_copied(conn: socket.socket, held: _Held, chunk: int) -> int:
    off = 0
    while True:
        # bytearray(n) zero-fills: every page of a chunk is touched (and charged) at once, so
        # each chunk is filled whole (only the last one may be short)
        view = memoryview(bytearray(chunk))
        got = _fill(conn.recv_into, view)
        if got:
            held.add(off, view[:got], got, False)
            off += got
        if got < chunk:
            return off


def _receive_mapped(rx: Any, held: _Held, cfg: dict[str, Any], account: Any,
                    peak: list[int]) -> tuple[int, dict[str, Any]]:
    from zcnet.accounting import MAPPED, recv_accounted

    window = int(cfg["window_bytes"])
    mode = cfg["mode"]
    off = waits = copies = 0

    def recv_into(view: memoryview) -> int:
        n: int = rx.recv_into(view, timeout=60)
        return n

    while True:
        room = account.headroom()
        ask = window if room is None else min(window, room // PAGE * PAGE)
        if ask < PAGE:
            if mode == "limit-wait" and held.items:
                held.process_oldest()  # frees its charge: room for the next mapping
                waits += 1
                continue
            # limit-copy: the rest as copies, into memory of our own (charged to the cgroup)
            view = memoryview(bytearray(window))
            n = _fill(recv_into, view)
            if n:
                held.add(off, view[:n], n, False)
                copies += 1
                off += n
            if n < window:
                break
            continue
        got = recv_accounted(rx, account, ask, timeout=60, block=False)
        n = len(got)
        if n == 0:
            got.release()
            break
        held.add(off, got, n, got.mapped)
        off += n
        peak[0] = max(peak[0], account.usage(MAPPED))
    st = rx.stats
    return off, {"rx_mode": str(st.mode), "bytes_mapped": st.bytes_mapped,
                 "bytes_copied": st.bytes_copied, "copy_reasons": dict(st.copy_reasons),
                 "windows_mapped": st.windows_mapped, "zerocopy_calls": st.calls,
                 "limit_waits": waits,
                 "limit_copies": copies}


def rxmem_receiver(pipe: Connection, host: str, cfg: dict[str, Any]) -> None:
    """Worker body: join the cgroup, accept, hold ``size`` bytes, read the figures, check."""
    # imported before the baseline: module memory is not what is measured
    from zcnet.accounting import MAPPED, Account, recv_accounted  # noqa: F401
    from zcnet.lowlevel.meminfo import read_sockstat, so_meminfo  # noqa: F401
    from zcnet.receiver import Receiver, RecvPolicy

    cgroup = (cfg["cgroup_path"], int(cfg["cgroup_version"])) if cfg.get("cgroup_path") else None
    if cgroup is not None:
        with open(os.path.join(cgroup[0], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    size, mode = int(cfg["size"]), cfg["mode"]
    verifier = Verifier()
    held = _Held(verifier)
    limit = cfg.get("limit")
    account = Account("rxmem", limit=None if limit is None else int(limit))
    peak = [0]
    # A receive buffer of several windows, set on the listener (the accepted socket inherits
    # it): SO_RCVLOWAT then holds each receive until a whole window is queued. Left to
    # autotuning (128 KiB at first) the socket can report readable below the low-water mark
    # (tcp_poll and tcp_rmem_pressure, net/ipv4/tcp.c) and receives map a few pages each: seen
    # here now and then, 16 windows held 0.5 MiB in all and the rest was copied.
    listener = make_listener(host, 0, mss=cfg.get("mss"), rcvbuf=4 * int(cfg["window_bytes"]))
    before = _reading(None, cgroup)  # before the sender can connect: nothing queued yet
    pipe.send(listener.getsockname()[:2])
    conn, _ = listener.accept()
    listener.close()
    rx: Any = None
    if mode != "copied":
        window = int(cfg["window_bytes"])
        # windows enough to hold everything mapped (each held chunk keeps its window busy;
        # twice the need: a receive cut short at a segment's unmappable tail)
        rx = Receiver(conn, RecvPolicy(window_bytes=window, max_windows=2 * size // window + 8,
                                       force_zerocopy=True, rcvlowat=window))
    try:
        t0 = time.perf_counter()
        info: dict[str, Any] = {}
        if rx is None:
            received = _receive_copied(conn, held, int(cfg["window_bytes"]))
        else:
            received, info = _receive_mapped(rx, held, cfg, account, peak)
        wall = time.perf_counter() - t0
        at_hold = _reading(conn, cgroup)
        at_hold["zcnet_mapped"] = account.usage(MAPPED)
        held_mapped, held_copied = held.mapped, held.copied
        checked = held.processed + held.check_all()
        if account.usage():
            raise AssertionError(f"account not back to zero: {account.snapshot()}")
        after = _reading(conn, cgroup)
    finally:
        with contextlib.suppress(OSError):
            (rx or conn).close()
    if received != size or checked != size:
        raise AssertionError(f"received {received}, checked {checked} of {size} bytes")
    pipe.send({"ok": True, "received": received, "checked": checked, "verified": "full",
               "held_mapped": held_mapped, "held_copied": held_copied,
               "zcnet_mapped_peak": peak[0], "wall": wall, "before": before,
               "at_hold": at_hold, "after_release": after, **info})
    pipe.recv()


def rxmem_sender(pipe: Connection, cfg: dict[str, Any]) -> None:
    """Worker body: connect to the address it is sent, stream ``size`` pattern bytes, report."""
    from zcnet.sender import Sender, SendPolicy

    host, port = pipe.recv()
    size = int(cfg["size"])
    verifier = Verifier()
    sock = socket.create_connection((host, port))
    sender = Sender(sock, SendPolicy(force_zerocopy=True, zerocopy_threshold=0))
    try:
        off = 0
        while off < size:
            n = min(_MSG, size - off)
            sender.send(verifier.window(off, n))
            off += n
        sender.flush(timeout=120)
        st = sender.stats
        result = {"ok": True, "bytes": off, "bytes_zerocopy": st.bytes_zerocopy,
                  "bytes_copied": st.bytes_copied, "bytes_plain": st.bytes_plain}
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    finally:
        sender.close()
    pipe.send(result)
    pipe.recv()


# -- pure: plan and metrics ----------------------------------------------------------------------


def _plan(p: RxmemParams) -> list[dict[str, Any]]:
    plan: list[dict[str, Any]] = []
    for rep in range(p.reps):
        for size in p.sizes_mib:
            plan += [{"mode": m, "size_mib": size, "rep": rep, "role": "timed"}
                     for m in rotated(list(p.modes), rep)]
    return plan


def plan_count(p: RxmemParams) -> int:
    """How many runs :func:`run_rxmem` makes."""
    return len(_plan(p))


def _delta(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    if a.get(key) is None or b.get(key) is None:
        return None
    return (int(b[key]) - int(a[key])) / MIB


def derive_metrics(rcv: dict[str, Any], limit: int | None) -> dict[str, float | None]:
    """The run's metrics (MiB) from the receiver's report (pure)."""
    before, hold = rcv["before"], rcv["at_hold"]
    held_mapped, held_copied = int(rcv["held_mapped"]), int(rcv["held_copied"])
    m: dict[str, float | None] = {
        "held_mib": (held_mapped + held_copied) / MIB,
        "held_mapped_mib": held_mapped / MIB,
        "held_copied_mib": held_copied / MIB,
        "cgroup_charge_mib": _delta(before, hold, "cgroup_usage"),
        "cgroup_anon_mib": _delta(before, hold, "cgroup_anon"),
        "cgroup_file_mapped_mib": _delta(before, hold, "cgroup_file_mapped"),
        "cgroup_sock_mib": _delta(before, hold, "cgroup_sock"),
        "sockstat_tcp_mib": _delta(before, hold, "sockstat_tcp"),
        "rmem_alloc_mib": None if hold.get("rmem_alloc") is None else hold["rmem_alloc"] / MIB,
        "rss_mib": _delta(before, hold, "rss"),
        "rss_file_mib": _delta(before, hold, "rss_file"),
        "rss_anon_mib": _delta(before, hold, "rss_anon"),
        "zcnet_mapped_mib": int(hold.get("zcnet_mapped") or 0) / MIB,
        "zcnet_mapped_peak_mib": int(rcv.get("zcnet_mapped_peak") or 0) / MIB,
        "limit_mib": None if limit is None else limit / MIB,
        "received_mib": int(rcv["received"]) / MIB,
    }
    charged = m["cgroup_charge_mib"]
    m["unaccounted_mib"] = None if charged is None else (
        m["held_mib"] - charged - (m["zcnet_mapped_mib"] or 0.0))  # type: ignore[operator]
    return m


def _limit(p: RxmemParams, mode: str, size: int) -> int | None:
    if mode not in LIMIT_MODES:
        return None
    return max(PAGE, size * p.limit_pct // 100 // PAGE * PAGE)


def _record(item: dict[str, Any], limit: int | None, rcv: dict[str, Any],
            snd: dict[str, Any], cgroup: dict[str, Any] | None) -> RxmemRun:
    ok = bool(rcv.get("ok") and snd.get("ok"))
    return {"mode": item["mode"], "size_mib": item["size_mib"], "rep": item["rep"],
            "role": "timed", "verified": "full" if ok else None, "ok": ok,
            "error": None if ok else str(rcv.get("error") or snd.get("error") or "failed"),
            "limit_bytes": limit, "cgroup": cgroup, "receiver": rcv, "sender": snd,
            "metrics": derive_metrics(rcv, limit) if ok else {k: None for k in METRICS}}


def run_rxmem(p: RxmemParams, progress: Progress) -> Experiment:
    """Run the rxmem experiment; the JSON-ready result (see docs/bench.md)."""
    reason = memcg_unavailable_reason()
    if reason is not None:
        return experiment_result("rxmem", status="skipped", reason=reason, parameters=asdict(p),
                                 notes=[f"rxmem skipped: {reason}"])
    runs: list[RxmemRun] = []
    with environment(use_netns=p.use_netns) as env:
        notes = list(env.notes)
        notes.append("sender: zcnet Sender forced to MSG_ZEROCOPY, outside the cgroup; "
                     "sockstat TCP mem is kernel-wide: other traffic on this host adds noise")
        mss = None if env.ns_name is not None else _MSS_NO_NETNS
        for item in _plan(p):
            size = item["size_mib"] * MIB
            limit = _limit(p, item["mode"], size)
            with MemCgroup("rxmem") as cg:
                sock_note = cg.charge_sockets()
                if sock_note and sock_note not in notes:
                    notes.append(sock_note)
                cfg = {"size": size, "mode": item["mode"], "limit": limit,
                       "window_bytes": p.window_bytes, "mss": mss,
                       "cgroup_path": cg.path, "cgroup_version": cg.version}
                cg_info = {"version": cg.version, "path": cg.path}
                receiver: Worker = spawn(rxmem_receiver, env.ns_name, env.host, cfg)
                sender: Worker | None = None
                done = False  # graceful stops only after a complete run
                try:
                    addr = tuple(receiver.recv(60))
                    sender = spawn(rxmem_sender, env.ns_name, cfg)
                    sender.pipe.send(addr)
                    rcv = receiver.recv(300)
                    snd = sender.recv(60)
                    done = True
                except WorkerError as e:  # that run failed; the others still run
                    rcv = {"ok": False, "error": str(e).splitlines()[0]}
                    snd = {"ok": False}
                finally:
                    if sender is not None:
                        sender.stop(5.0, graceful=done)
                    receiver.stop(5.0, graceful=done)
            runs.append(_record(item, limit, rcv, snd, cg_info))
            progress(f"rxmem {item['size_mib']} MiB {item['mode']}")
        summary = group_summary(runs, ("size_mib", "mode"), METRICS)
        failed = [r for r in runs if not r["ok"]]
        return experiment_result("rxmem", status="ok" if not failed else "partial",
                                 environment=env.describe(), parameters=asdict(p), runs=runs,
                                 summary=summary, notes=notes)

