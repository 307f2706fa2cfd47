"""The benchmark's C reference loops: the same transfers as the Python modes, written in C.

Theory of operation: what a send or a receive costs at the level of C is the floor a Python
library can approach, so the benchmark measures it beside zcnet's rows, in the same
repetitions and namespaces. Two small programs ship as package data next to this module:

- ``cref_send.c`` (send modes ``c-copy``, ``c-zc``, ``c-uring``, ``c-uring-fixed``,
  ``c-uring-fixed-linked``, ``c-uring-single`` and ``c-uring-fixed-single``): plain
  ``send`` or ``send(MSG_ZEROCOPY)`` on TCP or UDP (GSO), reading the error queue every 32 sends
  and on ``ENOBUFS`` (tools/testing/selftests/net/msg_zerocopy.c, udpgso_bench_tx.c); or
  io_uring ``IORING_OP_SEND_ZC`` (Linux 6.0), 32 per ``io_uring_enter`` (TCP: one linked chain
  with ``MSG_WAITALL``), every notification awaited, from the source buffer or, for
  ``uring-fixed``, from that buffer registered once (``IORING_REGISTER_BUFFERS``), and for
  ``uring-fixed-linked`` with each batch's UDP sends linked too, in order, and for the
  ``-single`` modes one send per ``io_uring_enter`` (a program sending one message per call);
  raw system calls, no liburing. Messages of the run's size walk through the same source
  buffer as the Python senders (``zcnet.bench.pattern.Source``);
- ``cref_recv.c`` (receive modes ``c-recv`` and ``c-zerocopy``): ``recv`` into one reused buffer,
  or ``TCP_ZEROCOPY_RECEIVE`` with one reused mmap'd window, a copy buffer below one page and
  ``recv`` for ``recv_skip_hint`` (tools/testing/selftests/net/tcp_mmap.c).

The Python side sets up the connection and speaks the benchmark's wire protocol
(:mod:`zcnet.bench.protocol`): the sender connects and writes the header, the server reads it;
then the connected socket is handed to the C program (``pass_fds``), which moves the
``warmup + nbytes`` pattern bytes, measures its own CPU with ``getrusage(RUSAGE_SELF)`` over the
timed bytes only (the zero-copy sender's final completion drain included; warm-up excluded),
verifies what it receives as the Python receivers do, and prints one JSON line. The pattern is
the one of :class:`zcnet._core.pattern.StreamPattern` (stream byte ``i`` is a function of
``i mod period``): one period is written to the program's stdin.

:func:`build` compiles both programs once per process with ``$CC`` (default ``cc``) ``-O2`` into
a per-user cache directory keyed by a hash of the compiler, flags and sources; without a
compiler, or if compilation fails, it returns the reason instead, and the benchmark's C rows say
``unavailable: <reason>``. A program that cannot run its mode on this machine (io_uring
disabled or missing, SEND_ZC unsupported, buffers not registrable) prints
``{"ok": false, "unavailable": REASON}`` and exits with :data:`EXIT_UNAVAILABLE`; that row then
says ``unavailable: REASON`` too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

from zcnet._core.pattern import StreamPattern

__all__ = ["CFLAGS", "EXIT_UNAVAILABLE", "PROGRAMS", "SEND_MODES", "CBuild", "build",
           "cache_dir", "pattern_period", "run_receiver", "run_sender"]

#: The programs: name -> source file (package data of this package).
PROGRAMS: Final = {"send": "cref_send.c", "recv": "cref_recv.c"}
CFLAGS: Final = ("-O2", "-Wall")
_HOT_SPAN: Final = 4 * 1024 * 1024  # zcnet.bench.pattern.DEFAULT_SPAN: the hot buffer's limit
#: The benchmark's C send modes -> the mode argument of ``cref_send``.
SEND_MODES: Final = {"c-copy": "copy", "c-zc": "zc", "c-uring": "uring",
                     "c-uring-fixed": "uring-fixed", "c-uring-fixed-linked": "uring-fixed-linked",
                     "c-uring-single": "uring-single", "c-uring-fixed-single": "uring-fixed-single"}
#: Exit status of a program whose mode cannot run here (its JSON line has ``unavailable``).
EXIT_UNAVAILABLE: Final = 3


@dataclass(frozen=True)
class CBuild:
    """The compiled reference programs, or why there are none."""

    programs: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    compiler: str | None = None
    cache: str | None = None

    @property
    def available(self) -> bool:
        """Whether both programs were built."""
        return self.reason is None and set(self.programs) == set(PROGRAMS)

    def describe(self) -> dict[str, Any]:
        """The JSON form (``c_reference`` of the stream and rx experiments)."""
        return {"available": self.available, "reason": self.reason, "compiler": self.compiler,
                "cflags": list(CFLAGS), "cache_dir": self.cache, "programs": dict(self.programs)}


_BUILD: CBuild | None = None


def cache_dir() -> str:
    """The per-user cache directory of compiled programs (``$XDG_CACHE_HOME/zcnet/cref``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "zcnet", "cref")


def build(*, refresh: bool = False) -> CBuild:
    """Compile the programs (once per process; ``refresh`` compiles or looks up again)."""
    global _BUILD
    if _BUILD is None or refresh:
        _BUILD = _build()
    return _BUILD


def _build() -> CBuild:
    cc = os.environ.get("CC", "cc").strip() or "cc"
    argv0 = shlex.split(cc)
    exe = shutil.which(argv0[0]) if argv0 else None
    if exe is None:
        return CBuild(reason=f"no C compiler: {cc!r} not found on PATH (set CC)", compiler=cc)
    sources = {name: (resources.files(__name__) / src).read_bytes()
               for name, src in PROGRAMS.items()}
    digest = hashlib.sha256()
    digest.update(f"{exe} {cc} {' '.join(CFLAGS)}\n".encode())
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name])
    key = digest.hexdigest()[:16]
    target = os.path.join(cache_dir(), key)
    try:
        os.makedirs(target, mode=0o700, exist_ok=True)
    except OSError:
        target = tempfile.mkdtemp(prefix="zcnet-cref-")
    programs: dict[str, str] = {}
    for name, text in sources.items():
        path = os.path.join(target, f"cref_{name}")
        if not os.access(path, os.X_OK):
            reason = _compile(argv0, PROGRAMS[name], text, path)
            if reason is not None:
                return CBuild(reason=reason, compiler=cc, cache=target)
        programs[name] = path
    return CBuild(programs=programs, compiler=cc, cache=target)


def _compile(cc: list[str], src_name: str, text: bytes, path: str) -> str | None:
    """Compile ``text`` to ``path`` (atomically); the reason on failure."""
    with tempfile.TemporaryDirectory(prefix="zcnet-cref-") as tmp:
        src = os.path.join(tmp, src_name)
        with open(src, "wb") as f:
            f.write(text)
        out = os.path.join(tmp, "a.out")
        try:
            proc = subprocess.run([*cc, *CFLAGS, "-o", out, src], capture_output=True,
                                  text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"compiling {src_name} with {' '.join(cc)} failed: {e}"
        if proc.returncode != 0 or not os.path.exists(out):
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "error" in ln]
            first = (lines or (proc.stderr or proc.stdout).splitlines() or ["no output"])[0]
            return (f"compiling {src_name} with {' '.join(cc)} failed "
                    f"(exit {proc.returncode}): {first.strip()}")
        try:
            os.replace(out, path)
        except OSError as e:
            return f"cannot write the compiled {src_name} to {path}: {e}"
    return None


_PERIOD_BYTES: bytes | None = None


def pattern_period() -> bytes:
    """One period of the stream pattern (the benchmark's seed), as the C programs read it."""
    global _PERIOD_BYTES
    if _PERIOD_BYTES is None:
        pattern = StreamPattern(max_block=1 << 17)
        _PERIOD_BYTES = pattern.block(0, pattern.period).tobytes()
    return _PERIOD_BYTES


def _run(argv: list[str], fd: int, timeout: float) -> dict[str, Any]:
    """Run one program on socket ``fd``; its JSON line (``ok: false`` with the error if none)."""
    try:
        proc = subprocess.run(argv, input=pattern_period(), capture_output=True,
                              pass_fds=(fd,), timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"ok": False, "error": f"{os.path.basename(argv[0])}: {e}"}
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        err = proc.stderr.decode(errors="replace").strip()
        return {"ok": False, "error": f"{os.path.basename(argv[0])} exited "
                f"{proc.returncode} without a result: {err[-300:]}"}
    if not result.get("ok") and result.get("unavailable"):
        result.setdefault("error", f"not available: {result['unavailable']}")
    if not result.get("ok") and "error" in result:
        result["error"] = f"{os.path.basename(argv[0])}: {result['error']}"
    return result


def run_sender(program: str, sock: socket.socket, *, transport: str, msg_size: int,
               warmup: int, nbytes: int, source_bytes: int, mode: str | None = None,
               zerocopy: bool = False, timeout: float = 600.0) -> dict[str, Any]:
    """Send ``warmup + nbytes`` pattern bytes on the connected ``sock`` from C.

    ``mode`` is one of :data:`SEND_MODES` (``"c-copy"``, ``"c-zc"``, ``"c-uring"``,
    ``"c-uring-fixed"``, ...); without it, ``zerocopy`` picks ``c-zc`` or ``c-copy``. The result has
    ``cpu``, ``user``, ``sys``, ``wall`` and ``bytes`` of the timed bytes, and for the zero-copy
    modes the completion counters (``sends_zerocopy``, ``completions``, ``completions_copied``:
    those saying the kernel copied, ``bytes_zerocopy``, ``bytes_copied``, ``enobufs``: sends
    retried for back-pressure); ``source_bytes`` is what the messages walked through (0 for the
    hot buffer, as the Python senders report it). A mode that cannot run here gives
    ``ok: false`` with ``unavailable`` (the reason) and ``error``.
    """
    if mode is None:
        mode = "c-zc" if zerocopy else "c-copy"
    if mode not in SEND_MODES:
        raise ValueError(f"unknown C send mode {mode!r}: one of {', '.join(SEND_MODES)}")
    fd = sock.fileno()
    argv = [program, str(fd), SEND_MODES[mode], transport, str(msg_size),
            str(warmup), str(nbytes), str(source_bytes)]
    result = _run(argv, fd, timeout)
    if mode == "c-copy":  # a plain send has no completions (as sendall's record)
        for key in ("sends_zerocopy", "completions", "completions_copied", "bytes_zerocopy",
                    "bytes_copied"):
            result.pop(key, None)
    result["source_bytes"] = source_bytes if source_bytes > _HOT_SPAN else 0
    return result


def run_receiver(program: str, sock: socket.socket, *, zerocopy: bool, warmup: int,
                 nbytes: int, recv_size: int, rcvlowat: int, full: bool,
                 timeout: float = 600.0) -> dict[str, Any]:
    """Receive ``warmup + nbytes`` pattern bytes from ``sock`` in C (header already read).

    The result has the fields of the Python receive modes (``cpu``, ``user``, ``sys``,
    ``wall``, ``bytes``, ``verify_cpu``, ``verified``, ``chunks``) plus ``bytes_mapped``,
    ``bytes_copied``, ``zerocopy_calls`` and ``rx_mode``.
    """
    fd = sock.fileno()
    argv = [program, str(fd), "zc" if zerocopy else "recv", str(warmup), str(nbytes),
            str(recv_size), str(rcvlowat), "full" if full else "spot"]
    return _run(argv, fd, timeout)
