"""``--profile``: where each measured side spends its CPU, as the top symbols of a perf profile.

Theory of operation: the papers and talks on zero-copy networking show where a send or a
receive spends its cycles as a flat list of kernel and user symbols: copies put
``_copy_from_iter`` (send) or ``_copy_to_iter`` (receive) on top, MSG_ZEROCOPY replaces it with
page pinning (``gup_fast_fallback``, ``__zerocopy_sg_from_iter``) and its completions. For one
extra, untimed repetition per profiled configuration, ``perf record -e cpu-clock -F 999 -p PID``
is attached to each measured worker process (the sender and the receiver), started a moment
before the repetition and stopped with SIGINT after it; perf follows the children a worker
starts (the C reference programs), since attaching to a task inherits to its later children.
The profile covers the whole repetition (connection set-up and warm-up too, a small share), and
the timed figures never come from profiled runs. ``perf report --stdio --sort sym`` gives the
share of samples per symbol (``[k]`` kernel, ``[.]`` user); the top :data:`TOP` are kept.
The ``cpu-clock`` software event works where hardware counters do not (virtual machines).

Without ``perf`` (Debian's ``linux-perf`` package) or when it cannot record (the Debian
wrapper without a perf for the running kernel, ``kernel.perf_event_paranoid`` for non-root),
:func:`perf_unavailable_reason` says why, once, and no profile is made.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any, Final

__all__ = ["TOP", "PerfSession", "format_top", "parse_report", "perf_unavailable_reason",
           "stop_recording"]

TOP: Final = 8
FREQ: Final = 999
#: How long perf gets to attach before the repetition starts (it prints nothing when ready).
ATTACH_DELAY: Final = 0.3

_REASON: list[str | None] = []
_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\[[^\]]+\])\s+(.+?)\s*$")
_SAMPLES = re.compile(r"^#\s*Samples:\s*(\S+)")


def _perf() -> str | None:
    return shutil.which("perf")


def perf_unavailable_reason() -> str | None:
    """``None`` if ``perf record -e cpu-clock`` works here, else why not (checked once)."""
    if _REASON:
        return _REASON[0]
    perf = _perf()
    reason: str | None = None
    if perf is None:
        reason = "perf not found on PATH (Debian: apt install linux-perf)"
    else:
        with tempfile.TemporaryDirectory(prefix="zcnet-perf-") as tmp:
            try:
                proc = subprocess.run(
                    [perf, "record", "-q", "-e", "cpu-clock", "-F", str(FREQ),
                     "-o", os.path.join(tmp, "probe.data"), "--", "true"],
                    capture_output=True, text=True, timeout=30, check=False)
                if proc.returncode != 0:
                    lines = (proc.stderr or proc.stdout).strip().splitlines()
                    reason = (f"perf record failed (exit {proc.returncode}): "
                              f"{lines[-1] if lines else 'no output'}")
            except (OSError, subprocess.TimeoutExpired) as e:
                reason = f"perf record failed: {e}"
    _REASON.append(reason)
    return reason


def stop_recording(proc: subprocess.Popen[bytes], data: str) -> str | None:
    """Stop ``perf record`` (SIGINT, as Ctrl-C: it writes its data file then) and wait for it;
    why there is no profile in ``data``, or None."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if os.path.exists(data):
        return None
    return (f"perf record exited {proc.returncode}: "
            f"{err.decode(errors='replace').strip()[-200:]}")


def parse_report(text: str, top: int = TOP) -> dict[str, Any]:
    """The ``perf report --stdio --sort sym`` text as ``{"samples", "top": [...]}``.

    Each entry of ``top`` is ``{"symbol", "pct", "kernel"}`` (``kernel``: a ``[k]`` symbol).
    """
    samples: str | None = None
    entries: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _SAMPLES.match(line)
        if m and samples is None:
            samples = m.group(1)
            continue
        if line.startswith("#") or not line.strip():
            continue
        m = _LINE.match(line)
        if m and len(entries) < top:
            entries.append({"symbol": m.group(3), "pct": float(m.group(1)),
                            "kernel": m.group(2) == "[k]"})
    return {"samples": samples, "top": entries}


class PerfSession:
    """``perf record`` attached to some processes, one data file per side."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.tmp = tempfile.TemporaryDirectory(prefix="zcnet-perf-")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.errors: dict[str, str] = {}

    def _data(self, side: str) -> str:
        return os.path.join(self.tmp.name, f"{side}.data")

    def start(self) -> None:
        """Attach to every process, then give perf a moment to be ready."""
        perf = _perf() or "perf"
        for side, pid in self.pids.items():
            try:
                self.procs[side] = subprocess.Popen(
                    [perf, "record", "-q", "-e", "cpu-clock", "-F", str(FREQ),
                     "-o", self._data(side), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as e:
                self.errors[side] = f"perf record: {e}"
        time.sleep(ATTACH_DELAY)

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stop recording and summarise each side's profile."""
        out: dict[str, dict[str, Any]] = {}
        for side, proc in self.procs.items():
            error = stop_recording(proc, self._data(side))
            if error is not None:
                self.errors[side] = error
        perf = _perf() or "perf"
        for side in self.pids:
            if side in self.errors:
                out[side] = {"samples": None, "top": [], "error": self.errors[side]}
                continue
            try:
                proc2 = subprocess.run(
                    [perf, "report", "-i", self._data(side), "--stdio", "--sort", "sym",
                     "--percent-limit", "0.5"],
                    capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                out[side] = {"samples": None, "top": [], "error": f"perf report: {e}"}
                continue
            summary = parse_report(proc2.stdout)
            summary["error"] = None if summary["top"] else (
                f"perf report (exit {proc2.returncode}) found no samples: "
                f"{proc2.stderr.strip()[-200:]}")
            out[side] = summary
        self.tmp.cleanup()
        return out


def format_top(profile: dict[str, Any], limit: int = TOP) -> str:
    """``"31% _copy_from_iter, 9% ..."`` (or the error)."""
    if profile.get("error"):
        return f"no profile: {profile['error']}"
    return ", ".join(f"{e['pct']:.0f}% {e['symbol']}" for e in profile.get("top", [])[:limit])
