"""A memory cgroup of the benchmark's own (v1 or v2, whichever holds the memory controller).

Theory of operation (Documentation/admin-guide/cgroup-v2.rst, "Memory"; Documentation/admin-guide/
cgroup-v1/memory.rst): the experiment creates a child group at the root of the memory hierarchy
(a root group is exempt from v2's "no internal processes" rule; on v2 ``+memory`` is written to
the root's ``cgroup.subtree_control`` if it is not there yet), moves one worker process into it
(``cgroup.procs``) and reads the group's figures: its memory charge (v1
``memory.usage_in_bytes``, v2 ``memory.current``), ``memory.stat``'s anonymous (v1 ``rss``, v2
``anon``) and file-mapped (v1 ``mapped_file``, v2 ``file_mapped``) bytes, and its socket charge
(v2 ``memory.stat`` ``sock``; v1 ``memory.kmem.tcp.usage_in_bytes``, counted only once
``memory.kmem.tcp.limit_in_bytes`` was written, which :meth:`MemCgroup.charge_sockets` does,
"unlimited"). Pages are charged to the group of the task that faults them in, and a moved task's
older pages stay where they were charged (v1 without ``move_charge_at_immigrate``; v2 always),
so a worker joins first and allocates after.

The group is removed when the ``with`` block ends, also on error: any process still in it is
moved to the parent first (``rmdir`` refuses a group with tasks, ``EBUSY``), then ``rmdir`` is
retried for a moment (a task that just exited may still be counted). Pure parsing
(:func:`find_memory_hierarchy`, :func:`parse_memory_stat`) is kept apart from the I/O.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final

__all__ = ["PREFIX", "MemCgroup", "MemcgReading", "MemoryHierarchy", "find_memory_hierarchy",
           "memcg_unavailable_reason", "parse_memory_stat", "read_memcg"]

#: Name prefix of every group the benchmark creates (tests look for leftovers by it).
PREFIX: Final = "zcnet-bench-"


@dataclass(frozen=True, slots=True)
class MemoryHierarchy:
    """Where the memory controller is mounted: ``version`` 1 or 2, at ``mount``."""

    version: int
    mount: str


def find_memory_hierarchy(mountinfo: str, v2_controllers: str | None = None
                          ) -> MemoryHierarchy | None:
    """The memory hierarchy from ``/proc/self/mountinfo`` text (pure).

    A v1 mount with the ``memory`` option wins (the controller is bound there and nowhere
    else); else a cgroup2 mount, if ``v2_controllers`` (its root's ``cgroup.controllers``)
    lists ``memory``. Only mounts of the hierarchy's root (``/``) count: a group is created at
    the root.
    """
    v2: str | None = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or lf[3] != "/":
            continue
        if rf[0] == "cgroup" and "memory" in rf[2].split(","):
            return MemoryHierarchy(1, lf[4])
        if rf[0] == "cgroup2" and v2 is None:
            v2 = lf[4]
    if v2 is not None and v2_controllers is not None and "memory" in v2_controllers.split():
        return MemoryHierarchy(2, v2)
    return None


def parse_memory_stat(text: str) -> dict[str, int]:
    """``memory.stat`` as ``{key: value}`` (pure)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, val = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(val)
    return out


def _hierarchy() -> MemoryHierarchy | str:
    try:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    except OSError as e:
        return f"cannot read /proc/self/mountinfo: {e}"
    v2_controllers: str | None = None
    for line in mountinfo.splitlines():
        parts = line.split(" - ")
        if len(parts) == 2 and parts[1].startswith("cgroup2 "):
            ctl = os.path.join(parts[0].split()[4], "cgroup.controllers")
            with contextlib.suppress(OSError), open(ctl) as f:
                v2_controllers = f.read()
            break
    found = find_memory_hierarchy(mountinfo, v2_controllers)
    if found is None:
        return "no memory cgroup hierarchy is mounted (neither a v1 memory mount nor cgroup2 " \
               "with the memory controller)"
    return found


def memcg_unavailable_reason() -> str | None:
    """``None`` if this process can create a memory cgroup, else why not."""
    found = _hierarchy()
    if isinstance(found, str):
        return found
    if os.geteuid() != 0:
        return "creating a memory cgroup needs root"
    if not os.access(found.mount, os.W_OK):
        return f"{found.mount} is not writable (a read-only cgroup mount, e.g. a container)"
    return None


@dataclass(frozen=True, slots=True)
class MemcgReading:
    """A group's figures at one moment, in bytes (``None``: not exposed by this version)."""

    usage: int
    anon: int | None
    file_mapped: int | None
    sock: int | None


def read_memcg(path: str, version: int) -> MemcgReading:
    """The figures of the group at ``path`` (a worker inside reads its own group with this)."""
    with open(os.path.join(path, "memory.stat")) as f:
        stat = parse_memory_stat(f.read())
    if version == 2:
        with open(os.path.join(path, "memory.current")) as f:
            usage = int(f.read())
        return MemcgReading(usage, stat.get("anon"), stat.get("file_mapped"), stat.get("sock"))
    with open(os.path.join(path, "memory.usage_in_bytes")) as f:
        usage = int(f.read())
    sock: int | None = None
    tcp = os.path.join(path, "memory.kmem.tcp.usage_in_bytes")
    with contextlib.suppress(OSError, ValueError), open(tcp) as f:
        sock = int(f.read())
    return MemcgReading(usage, stat.get("rss"), stat.get("mapped_file"), sock)


class MemCgroup:
    """A fresh memory cgroup, removed when the ``with`` block ends (also on error).

    Raises:
        OSError: the group cannot be created (see :func:`memcg_unavailable_reason`).
    """

    def __init__(self, tag: str = "") -> None:
        found = _hierarchy()
        if isinstance(found, str):
            raise OSError(errno.ENOENT, found)
        self.version = found.version
        self.mount = found.mount
        name = f"{PREFIX}{tag + '-' if tag else ''}{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.path = os.path.join(found.mount, name)
        if self.version == 2:
            self._enable_v2_memory()
        os.mkdir(self.path)

    def _enable_v2_memory(self) -> None:
        ctl = os.path.join(self.mount, "cgroup.subtree_control")
        with open(ctl) as f:
            if "memory" in f.read().split():
                return
        with open(ctl, "w") as f:
            f.write("+memory")

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _write(self, name: str, value: str) -> None:
        with open(self._file(name), "w") as f:
            f.write(value)

    @property
    def procs_file(self) -> str:
        """The group's ``cgroup.procs`` (a process joins by writing its pid there)."""
        return self._file("cgroup.procs")

    def join(self, pid: int | None = None) -> None:
        """Move process ``pid`` (default: this one) into the group."""
        self._write("cgroup.procs", str(os.getpid() if pid is None else pid))

    def charge_sockets(self) -> str | None:
        """Make the group's socket charge visible: ``None``, or why it cannot be.

        v2 always charges sockets (``memory.stat`` ``sock``); v1 only once a TCP limit was set,
        so an unlimited one is written (mm/memcontrol-v1.c, ``tcpmem_active``).
        """
        if self.version == 2:
            return None
        try:
            self._write("memory.kmem.tcp.limit_in_bytes", "-1")
        except OSError as e:
            return f"cgroup v1 TCP accounting cannot be enabled: {e}"
        return None

    def read(self) -> MemcgReading:
        """The group's charge, anonymous and file-mapped bytes and socket charge."""
        return read_memcg(self.path, self.version)

    def pids(self) -> list[int]:
        """Processes in the group now."""
        try:
            with open(self.procs_file) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def remove(self, timeout: float = 5.0) -> None:
        """Move any process left to the parent and delete the group (idempotent)."""
        if not os.path.isdir(self.path):
            return
        parent = os.path.join(os.path.dirname(self.path), "cgroup.procs")
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.pids():
                # it may have exited meanwhile
                with contextlib.suppress(OSError), open(parent, "w") as f:
                    f.write(str(pid))
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def __enter__(self) -> MemCgroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()
