"""Run a piece of Python code in a child process under restrictions the kernel enforces.

For tests of how zcnet behaves when the system says no, for real rather than mocked:

* ``refuse_io_uring=True``: a seccomp filter makes ``io_uring_setup``, ``io_uring_enter`` and
  ``io_uring_register`` fail with ``EPERM``, as a container under Docker's default seccomp profile
  sees them (every other syscall is allowed);
* ``memlock_bytes=n``: ``RLIMIT_MEMLOCK`` (soft and hard) is ``n`` bytes;
* ``as_nobody=True``: the child runs as user ``nobody`` (group ``nogroup``) with no capabilities,
  so the memlock limit applies (root's ``CAP_IPC_LOCK`` would bypass it).

Only the child is restricted: it is a fresh ``sys.executable -c ...`` process, the restrictions are
applied by a prelude that runs in it before the test's code, and the test process, the machine's
sysctls (``kernel.io_uring_disabled`` included) and other processes are left as they were.

Dropping to nobody, and why it works from a private (mode 0700) clone: the child starts as root,
imports everything it will need (the prelude's own modules and whatever the test lists in
``preimport``, e.g. ``zcnet.sender``), sets the memlock limit, and only then drops to nobody with
``setgroups([])``, ``setresgid`` and ``setresuid``. The kernel clears the permitted and effective
capability sets when all of a process's uids become non-zero (no ``SECBIT_KEEP_CAPS`` is set),
which the prelude verifies in ``/proc/self/status`` before running the code. Nobody therefore never
has to read the repository or the interpreter's files (a CI clone in a ``mktemp -d`` directory, or
a pyenv interpreter under ``/root``, is not readable by nobody). So that a test does not pass on a
world-readable tree and then fail in such a clone, importing a module that is not loaded yet is
refused after the drop (built-in and frozen modules excepted), with an error naming the module to
add to ``preimport``.

The child's result is easiest to check as one JSON line printed last, read by `run_child_json`::

    result = run_child_json('''
        import json, os
        print(json.dumps({"uid": os.getuid()}))
    ''', as_nobody=True)
    assert result["uid"] != 0

x86_64 and aarch64 only (`RestrictionUnavailable` elsewhere, and when not root for ``as_nobody``):
test with ``pytest.skip(str(exc))``, or check `io_uring_refusal_unavailable_reason` /
`nobody_unavailable_reason` first.
"""

from __future__ import annotations

import ctypes
import grp
import importlib
import importlib.abc
import importlib.machinery
import json
import linecache
import os
import pwd
import resource
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import CodeType
from typing import Any

# -- seccomp / BPF constants (linux/filter.h, linux/bpf_common.h, linux/seccomp.h, linux/audit.h)

BPF_LD = 0x00
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_W = 0x00
BPF_ABS = 0x20
BPF_JEQ = 0x10
BPF_JGE = 0x30
BPF_K = 0x00

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_DATA_NR_OFFSET = 0  # struct seccomp_data { int nr; __u32 arch; ... }
SECCOMP_DATA_ARCH_OFFSET = 4

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# The io_uring syscalls have the same numbers in every syscall table (x86_64, aarch64, ...).
NR_IO_URING_SETUP = 425
NR_IO_URING_ENTER = 426
NR_IO_URING_REGISTER = 427
IO_URING_SYSCALLS = (NR_IO_URING_SETUP, NR_IO_URING_ENTER, NR_IO_URING_REGISTER)

CAP_SETGID = 6
CAP_SETUID = 7
CAP_IPC_LOCK = 14

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1

# By `os.uname().machine`: the audit arch of the native 64-bit ABI and its seccomp(2) number.
_ARCHES = {"x86_64": (AUDIT_ARCH_X86_64, 317), "aarch64": (AUDIT_ARCH_AARCH64, 277)}

# Always imported by the child before any restriction: what the prelude and a JSON report need,
# and `traceback` so an uncaught exception after the drop is still printed in full.
_ALWAYS_PREIMPORT = ("ctypes", "errno", "json", "os", "resource", "traceback")


class RestrictionUnavailable(Exception):
    """A requested restriction cannot be applied on this machine; the message says why."""


class SockFilter(ctypes.Structure):
    """``struct sock_filter``: one classic BPF instruction."""

    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    """``struct sock_fprog``: a BPF program (length and pointer to its instructions)."""

    _fields_ = [
        ("len", ctypes.c_ushort),
        ("filter", ctypes.POINTER(SockFilter)),
    ]


def _libc() -> ctypes.CDLL:
    # The process's own symbols (libc is loaded already): no file to find or open.
    return ctypes.CDLL(None, use_errno=True)


def _native_arch() -> tuple[int, int]:
    """The seccomp ``arch`` of this process's syscalls and the number of seccomp(2).

    `RestrictionUnavailable` on an architecture this module does not know.
    """
    machine = os.uname().machine
    arch = _ARCHES.get(machine)
    if arch is None:
        raise RestrictionUnavailable(
            f"seccomp io_uring filter: unsupported architecture {machine!r} "
            f"(supported: {', '.join(sorted(_ARCHES))})")
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        raise RestrictionUnavailable(
            f"seccomp io_uring filter: a 32-bit Python on {machine} is not supported")
    return arch


def io_uring_refusal_program() -> list[SockFilter]:
    """The BPF program: ``EPERM`` for the io_uring syscalls, every other syscall allowed.

    Syscalls of a foreign ABI (an ``arch`` other than the native one, or x32 on x86_64, whose
    numbers would otherwise dodge the check) are refused with ``EPERM`` too; a Python process never
    makes them. Raises `RestrictionUnavailable` on an unsupported architecture.
    """
    arch, _ = _native_arch()
    deny = "deny"
    # (code, k, jump-if-true target, jump-if-false target); targets are labels or None (next).
    prog: list[tuple[int, int, str | None, str | None]] = [
        (BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH_OFFSET, None, None),
        (BPF_JMP | BPF_JEQ | BPF_K, arch, None, deny),
        (BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR_OFFSET, None, None),
    ]
    if arch == AUDIT_ARCH_X86_64:
        prog.append((BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, deny, None))
    prog += [(BPF_JMP | BPF_JEQ | BPF_K, nr, deny, None) for nr in IO_URING_SYSCALLS]
    prog.append((BPF_RET | BPF_K, SECCOMP_RET_ALLOW, None, None))
    labels = {deny: len(prog)}
    prog.append((BPF_RET | BPF_K, SECCOMP_RET_ERRNO | 1, None, None))  # errno 1 == EPERM

    def offset(at: int, target: str | None) -> int:
        return 0 if target is None else labels[target] - at - 1

    return [SockFilter(code, offset(i, jt), offset(i, jf), k)
            for i, (code, k, jt, jf) in enumerate(prog)]


def io_uring_refusal_unavailable_reason() -> str | None:
    """Why ``refuse_io_uring=True`` cannot be used here, or None if it can."""
    try:
        _native_arch()
    except RestrictionUnavailable as e:
        return str(e)
    return None


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """The ``Cap*`` lines of ``/proc/<pid>/status`` (``CapEff``, ``CapPrm``, ...) as integers."""
    caps = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                caps[key] = int(value, 16)
    return caps


@dataclass(frozen=True)
class Account:
    """The uid and gid a child drops to."""

    uid: int
    gid: int


def nobody_account() -> Account:
    """User ``nobody`` and group ``nogroup`` (or ``nobody``, else the user's primary group)."""
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        raise RestrictionUnavailable("as_nobody: there is no user 'nobody'") from None
    for group in ("nogroup", "nobody"):
        try:
            gid = grp.getgrnam(group).gr_gid
            break
        except KeyError:
            continue
    else:
        gid = user.pw_gid
    if user.pw_uid == 0 or gid == 0:
        raise RestrictionUnavailable("as_nobody: user 'nobody' has uid or gid 0")
    return Account(user.pw_uid, gid)


def nobody_unavailable_reason() -> str | None:
    """Why ``as_nobody=True`` cannot be used here, or None if it can.

    The child drops from root, so the test process must be root with ``CAP_SETUID`` and
    ``CAP_SETGID``. Nobody needs no access to the repository or the interpreter: every import is
    made before the drop (see the module docstring).
    """
    if os.geteuid() != 0:
        return f"as_nobody: the test process must run as root (euid is {os.geteuid()})"
    eff = capabilities()["CapEff"]
    missing = [name for name, bit in (("CAP_SETUID", CAP_SETUID), ("CAP_SETGID", CAP_SETGID))
               if not eff >> bit & 1]
    if missing:
        return f"as_nobody: the test process lacks {' and '.join(missing)}"
    try:
        nobody_account()
    except RestrictionUnavailable as e:
        return str(e)
    return None


# -- what the child runs --------------------------------------------------------------------------


class _NoImportsAfterDrop(importlib.abc.MetaPathFinder):
    """Refuses to import from files once the child is nobody (see the module docstring)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if (fullname in sys.builtin_module_names
                or importlib.machinery.FrozenImporter.find_spec(fullname) is not None):
            return None  # no file to read: the next finders handle it
        raise ImportError(
            f"restricted child: module {fullname!r} imported after dropping to nobody, who may "
            f"not be able to read it (e.g. a clone in a 0700 directory); list it in preimport=",
            name=fullname)


def _prctl(option: int, arg2: int, arg3: int = 0) -> None:
    """``prctl(option, arg2, arg3, 0, 0)``; `OSError` if it fails."""
    if _libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                     ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg2}, {arg3}, 0, 0): {os.strerror(err)}")


def _drop_to(account: Account) -> None:
    """Become ``account`` for good, with no capabilities left; verified."""
    os.setgroups([])
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    # Stay nobody across execve (no setuid binaries) and keep /proc/self ours, as for a process
    # started as nobody (a uid change makes the process non-dumpable, its /proc files root's).
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 1)
    uids, gids, groups = os.getresuid(), os.getresgid(), os.getgroups()
    if uids != (account.uid,) * 3 or gids != (account.gid,) * 3 or groups:
        raise RuntimeError(f"restricted child: after the drop to {account}: uids {uids}, "
                           f"gids {gids}, groups {groups}")
    caps = capabilities()
    if caps["CapEff"] or caps["CapPrm"] or caps.get("CapAmb", 0):
        raise RuntimeError(f"restricted child: capabilities left after the drop: {caps}")


def _refuse_io_uring() -> None:
    """Install the filter of `io_uring_refusal_program` on every thread of this process."""
    _, nr_seccomp = _native_arch()
    insns = io_uring_refusal_program()
    array = (SockFilter * len(insns))(*insns)
    fprog = SockFprog(len(insns), ctypes.cast(array, ctypes.POINTER(SockFilter)))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # required to install a filter without CAP_SYS_ADMIN
    # seccomp(2) rather than prctl(PR_SET_SECCOMP): TSYNC applies it to threads a preimported
    # module may have started too (0 on success, else the id of a thread it could not apply to).
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                       ctypes.c_uint(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(fprog))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}")
    if ret > 0:
        raise RuntimeError(f"seccomp(SECCOMP_SET_MODE_FILTER, TSYNC): thread {ret} not filtered")


@dataclass(frozen=True)
class _Plan:
    """The restrictions the prelude applies, in this order after the imports."""

    preimport: list[str]
    memlock_bytes: int | None
    drop_to: Account | None
    refuse_io_uring: bool


def _prepare(plan_json: str, code: str) -> CodeType:
    """The prelude's work, in the child: import, limit, drop, filter; returns ``code`` compiled."""
    compiled = compile(code, _CODE_NAME, "exec")
    linecache.cache[_CODE_NAME] = (len(code), None, code.splitlines(True), _CODE_NAME)
    raw = json.loads(plan_json)
    drop = raw.pop("drop_to")
    plan = _Plan(**raw, drop_to=Account(**drop) if drop else None)
    for name in (*_ALWAYS_PREIMPORT, *plan.preimport):
        importlib.import_module(name)
    if plan.memlock_bytes is not None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (plan.memlock_bytes, plan.memlock_bytes))
    if plan.drop_to is not None:
        _drop_to(plan.drop_to)
        sys.meta_path.insert(0, _NoImportsAfterDrop())
    if plan.refuse_io_uring:
        _refuse_io_uring()  # last: the steps above need no io_uring, but keep them unfiltered
    return compiled


_CODE_NAME = "<restricted child code>"

# The child's -c script: this file loaded as a module (as root, before any restriction), then
# the test's code run in __main__.
_CHILD_SCRIPT = """\
import importlib.util as _u, sys as _sys
_s = _u.spec_from_file_location("_restricted_child_prelude", {path!r})
_m = _sys.modules[_s.name] = _u.module_from_spec(_s)
_s.loader.exec_module(_m)
_c = _m._prepare({plan!r}, {code!r})
del _u, _sys, _s, _m
exec(_c)
"""


def run_child(code: str, *, refuse_io_uring: bool = False, memlock_bytes: int | None = None,
              as_nobody: bool = False, preimport: Sequence[str] = (),
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) with ``sys.executable -c`` in a child under the given restrictions.

    Args:
        code: Python source, run as the child's ``__main__`` after the restrictions are in place
            (tracebacks name it ``<restricted child code>``, with its own line numbers).
        refuse_io_uring: io_uring_setup/enter/register fail with EPERM (seccomp filter).
        memlock_bytes: RLIMIT_MEMLOCK, soft and hard, in bytes. Root ignores it (CAP_IPC_LOCK):
            combine with ``as_nobody`` to have it enforced.
        as_nobody: run ``code`` as nobody/nogroup, without capabilities.
        preimport: modules to import before any restriction (``json``, ``ctypes``, ``errno``,
            ``os``, ``resource`` and ``traceback`` always are), e.g. ``["zcnet.sender"]``. With
            ``as_nobody`` every module ``code`` needs must be here (or imported by these):
            importing another one from a file is refused after the drop. What a module does at
            import time (a cached feature probe, say) runs unrestricted: import such a module in
            ``code`` instead, without ``as_nobody``.
        timeout: seconds; `subprocess.TimeoutExpired` after that (the child is killed).

    Returns:
        The finished child, with its exit status and text stdout/stderr (not checked).

    Raises:
        RestrictionUnavailable: a requested restriction cannot be applied here (skip the test).
    """
    account = None
    if refuse_io_uring:
        _native_arch()
    if as_nobody:
        reason = nobody_unavailable_reason()
        if reason:
            raise RestrictionUnavailable(reason)
        account = nobody_account()
    plan = _Plan(list(preimport), memlock_bytes, account, refuse_io_uring)
    script = _CHILD_SCRIPT.format(path=os.path.abspath(__file__),
                                  plan=json.dumps(asdict(plan)),
                                  code=textwrap.dedent(code))
    return subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_child_json(code: str, *, refuse_io_uring: bool = False, memlock_bytes: int | None = None,
                   as_nobody: bool = False, preimport: Sequence[str] = (),
                   timeout: float = 60) -> dict[str, Any]:
    """`run_child`, then the JSON object the child printed as its last stdout line.

    Raises:
        AssertionError: the child exited with a non-zero status, or its last line is not a JSON
            object; the message has the child's stdout and stderr.
        RestrictionUnavailable: as for `run_child`.
    """
    proc = run_child(code, refuse_io_uring=refuse_io_uring, memlock_bytes=memlock_bytes,
                     as_nobody=as_nobody, preimport=preimport, timeout=timeout)

    def failure(what: str) -> AssertionError:
        return AssertionError(f"restricted child {what}\n--- stdout ---\n{proc.stdout}"
                              f"--- stderr ---\n{proc.stderr}")

    if proc.returncode != 0:
        raise failure(f"exited with status {proc.returncode}")
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        raise failure("did not print a JSON object as its last stdout line")
    return result
