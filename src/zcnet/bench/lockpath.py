"""The share of a thread's CPU samples spent finding a zero-copy window under a lock.

Theory of operation: ``TCP_ZEROCOPY_RECEIVE`` finds the window a receive maps into with
``find_tcp_vma`` (net/ipv4/tcp.c): first under the window's own VMA lock
(``lock_vma_under_rcu``, mm/memory.c, Linux 6.5+), else under the process's ``mmap_lock`` taken
for read (``mmap_read_lock``: ``down_read`` on an rw-semaphore, kernel/locking/rwsem.c, whose
slow paths ``rwsem_down_read_slowpath``/``rwsem_down_write_slowpath`` and the optimistic
spinning ``rwsem_optimistic_spin``/``osq_lock`` show up when a writer holds or waits for it).
Mapping and unmapping a window takes the same semaphore for write (``down_write``). So the
symbols below, summed over a flat ``perf`` profile of the server's receiving thread, are the
cost of that lookup and of waiting for it: the field's own measurement of this lookup gave about
1 % of cycles under the process-wide lock and 0.45 % with per-VMA locks.

:class:`ThreadPerf` records one thread (``perf record -e cpu-clock -t TID``; the churn thread
of the same process is not sampled) from inside the measured process, so the profile covers
exactly the stretch it is started and stopped around. :func:`lock_path_share` is pure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Final

from zcnet.bench.profile import ATTACH_DELAY, FREQ, parse_report, stop_recording

__all__ = ["LOCK_PREFIXES", "LOCK_SYMBOLS", "ThreadPerf", "is_lock_path", "lock_path_share"]

#: Kernel symbols of the window lookup and of the mmap lock (exact names).
LOCK_SYMBOLS: Final = frozenset({
    "lock_vma_under_rcu", "find_tcp_vma", "vma_start_read", "vma_end_read",
    "mmap_read_lock", "mmap_read_unlock", "lock_mm_and_find_vma",
    "down_read", "down_read_trylock", "down_read_killable", "up_read",
    "down_write", "down_write_killable", "up_write",
})
#: Prefixes of the rw-semaphore slow paths and spinning (``rwsem_down_read_slowpath``, ...).
LOCK_PREFIXES: Final = ("rwsem_", "osq_")


def is_lock_path(symbol: str) -> bool:
    """Whether ``symbol`` (a perf symbol name, maybe with a ``.isra.0``-like suffix) is one."""
    name = symbol.split(".", 1)[0].strip()
    return name in LOCK_SYMBOLS or name.startswith(LOCK_PREFIXES)


def lock_path_share(symbols: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """The summed share (%) of the lock-path symbols and each one's share (pure)."""
    hits = {s: pct for s, pct in symbols.items() if is_lock_path(s)}
    return round(sum(hits.values()), 3), dict(sorted(hits.items(), key=lambda kv: -kv[1]))


def _count(text: str | None) -> int | None:
    """perf's sample count (``"850"``, ``"12K"``) as an integer."""
    if not text:
        return None
    scale = {"K": 1000, "M": 1000_000}.get(text[-1].upper(), 1)
    try:
        return int(float(text.rstrip("KkMm")) * scale)
    except ValueError:
        return None


class ThreadPerf:
    """``perf record`` of one thread, started and stopped by the caller; see the module doc."""

    def __init__(self, tid: int | None = None) -> None:
        self.tid = os.getpid() if tid is None else tid
        self._tmp = tempfile.TemporaryDirectory(prefix="zcnet-lockpath-")
        self._data = os.path.join(self._tmp.name, "thread.data")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Attach perf to the thread and give it a moment to be ready."""
        perf = shutil.which("perf") or "perf"
        self._proc = subprocess.Popen(
            [perf, "record", "-q", "-e", "cpu-clock", "-F", str(FREQ), "-o", self._data,
             "-t", str(self.tid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(ATTACH_DELAY)

    def stop(self) -> dict[str, Any]:
        """Stop recording: ``{"samples", "top", "lock_pct", "error"}``: ``top`` lists the
        lock-path symbols (``{"symbol", "pct", "kernel"}``), ``lock_pct`` their summed share
        of the thread's samples."""
        out: dict[str, Any] = {"samples": None, "top": [], "lock_pct": None, "error": None}
        try:
            proc = self._proc
            if proc is None:
                out["error"] = "perf was not started"
                return out
            out["error"] = stop_recording(proc, self._data)
            if out["error"] is not None:
                return out
            rep = subprocess.run(
                [shutil.which("perf") or "perf", "report", "-i", self._data, "--stdio",
                 "--sort", "sym"], capture_output=True, text=True, timeout=120, check=False)
            parsed = parse_report(rep.stdout, top=1 << 30)
            symbols = {e["symbol"]: float(e["pct"]) for e in parsed["top"]}
            if not symbols:
                out["error"] = f"perf report found no samples: {rep.stderr.strip()[-200:]}"
                return out
            out["samples"] = _count(parsed["samples"])
            out["lock_pct"], hits = lock_path_share(symbols)
            out["top"] = [{"symbol": sym, "pct": pct, "kernel": True} for sym, pct in hits.items()]
            return out
        finally:
            self._tmp.cleanup()
