"""The kernel's view of socket memory: SO_MEMINFO, /proc/net/sockstat, memory-cgroup socket charge.

Theory of operation:

- ``getsockopt(SOL_SOCKET, SO_MEMINFO=55)`` copies ``u32 mem[SK_MEMINFO_VARS]``
  (include/uapi/linux/sock_diag.h, net/core/sock.c ``sk_get_meminfo``): rmem_alloc, rcvbuf,
  wmem_alloc, sndbuf, fwd_alloc, wmem_queued, optmem, backlog, drops. ``wmem_queued`` meters the
  send-buffer *limit* (it counts zero-copy skbs too); it is not the memory charge.
- ``/proc/net/sockstat`` (net/ipv4/proc.c ``sockstat_seq_show``): "TCP: ... mem N" is the TCP
  protocol's memory charge in pages (``tcp_memory_allocated``, checked against ``tcp_mem``).
  That counter is global to the kernel (and cached per CPU), while ``inuse`` counts are per
  network namespace. ``/proc/net`` resolves against the thread-group leader's namespace, so
  this module reads ``/proc/thread-self/net/sockstat``: a thread inside ``Netns.entered()`` sees
  its own namespace's counts.
- the memory cgroup's socket charge: cgroup v2 ``memory.stat`` line ``sock``
  (Documentation/admin-guide/cgroup-v2.rst); cgroup v1 ``memory.kmem.tcp.usage_in_bytes``,
  which stays 0 until ``memory.kmem.tcp.limit_in_bytes`` is written (mm/memcontrol-v1.c
  ``tcpmem_active``). Since Linux 5.17 pure ``MSG_ZEROCOPY`` skbs are not charged again for the
  user pages they reference (net/core/skbuff.c ``skb_zerocopy_iter_stream``,
  net/ipv4/tcp.c ``tcp_sendmsg_locked``).

Every reader returns a :class:`Probe`: a value, or ``None`` with the reason it is unavailable.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from zcnet.lowlevel.constants import SK_MEMINFO_VARS, SO_MEMINFO

__all__ = [
    "SOCKSTAT_PATH",
    "CgroupSockMemory",
    "KernelMemorySnapshot",
    "MemInfo",
    "Probe",
    "SockStat",
    "kernel_memory_snapshot",
    "parse_sockstat",
    "read_cgroup_sock_memory",
    "read_sockstat",
    "so_meminfo",
]

T = TypeVar("T")

SOCKSTAT_PATH: Final = "/proc/thread-self/net/sockstat"
_SOCKSTAT_FALLBACK: Final = "/proc/net/sockstat"
_MEMINFO_FMT: Final = f"={SK_MEMINFO_VARS}I"
# PAGE_COUNTER_MAX * PAGE_SIZE rounded as the kernel prints it: "no limit" in cgroup v1 files.
_V1_UNLIMITED: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class Probe(Generic[T]):
    """A kernel reading: ``value``, or ``None`` and the ``reason`` it is unavailable."""

    value: T | None
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.value is not None


@dataclass(frozen=True, slots=True)
class MemInfo:
    """``SO_MEMINFO`` of one socket (bytes, except ``drops``)."""

    rmem_alloc: int
    rcvbuf: int
    wmem_alloc: int
    sndbuf: int
    fwd_alloc: int
    wmem_queued: int
    optmem: int
    backlog: int
    drops: int


def so_meminfo(sock: socket.socket) -> MemInfo:
    """Read ``SO_MEMINFO`` of ``sock``; raises ``OSError`` if the kernel refuses."""
    size = struct.calcsize(_MEMINFO_FMT)
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, size)
    raw = raw.ljust(size, b"\0")  # an older kernel may fill fewer variables
    return MemInfo(*struct.unpack(_MEMINFO_FMT, raw))


@dataclass(frozen=True, slots=True)
class SockStat:
    """``/proc/net/sockstat``: ``*_inuse`` per namespace, ``*_mem_pages`` kernel-wide pages."""

    sockets_used: int
    tcp_inuse: int
    tcp_orphan: int
    tcp_tw: int
    tcp_alloc: int
    tcp_mem_pages: int
    udp_inuse: int
    udp_mem_pages: int
    page_size: int

    @property
    def tcp_mem_bytes(self) -> int:
        """TCP's memory charge in bytes."""
        return self.tcp_mem_pages * self.page_size

    @property
    def udp_mem_bytes(self) -> int:
        """UDP's memory charge in bytes."""
        return self.udp_mem_pages * self.page_size


def _fields(line: str) -> dict[str, int]:
    words = line.split(":", 1)[1].split()
    return {k: int(v) for k, v in zip(words[0::2], words[1::2], strict=False)}


def parse_sockstat(text: str, page_size: int | None = None) -> SockStat:
    """Parse the text of ``/proc/net/sockstat``; raises ``ValueError`` if it is malformed."""
    lines: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        if ":" in line:
            lines[line.split(":", 1)[0].strip()] = _fields(line)
    try:
        tcp, udp = lines["TCP"], lines.get("UDP", {})
        return SockStat(
            sockets_used=lines.get("sockets", {}).get("used", 0),
            tcp_inuse=tcp["inuse"],
            tcp_orphan=tcp.get("orphan", 0),
            tcp_tw=tcp.get("tw", 0),
            tcp_alloc=tcp.get("alloc", 0),
            tcp_mem_pages=tcp["mem"],
            udp_inuse=udp.get("inuse", 0),
            udp_mem_pages=udp.get("mem", 0),
            page_size=page_size if page_size is not None else os.sysconf("SC_PAGE_SIZE"),
        )
    except KeyError as e:
        raise ValueError(f"sockstat text lacks the TCP {e} field") from e


def read_sockstat(path: str | None = None) -> Probe[SockStat]:
    """Read sockstat as seen by the calling thread's network namespace."""
    candidates = [path] if path is not None else [SOCKSTAT_PATH, _SOCKSTAT_FALLBACK]
    reason = "no sockstat file"
    for p in candidates:
        try:
            with open(p) as f:
                return Probe(parse_sockstat(f.read()))
        except (OSError, ValueError) as e:
            reason = f"{p}: {e}"
    return Probe(None, reason)


@dataclass(frozen=True, slots=True)
class CgroupSockMemory:
    """The memory cgroup's socket-memory charge of this process.

    ``active`` is False when the kernel keeps the counter but does not charge it (cgroup v1
    without a TCP limit); ``note`` says why.
    """

    version: int
    path: str
    sock_bytes: int
    active: bool
    note: str | None = None


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fstype, super options) of each cgroup mount."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((lf[3], lf[4], rf[0], set(rf[2].split(","))))
    return out


def _join(mount: str, root: str, cgpath: str) -> str:
    if root != "/" and (cgpath == root or cgpath.startswith(root + "/")):
        cgpath = cgpath[len(root):] or "/"
    return os.path.join(mount, cgpath.lstrip("/"))


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def read_cgroup_sock_memory(
    proc_cgroup: str = "/proc/thread-self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> Probe[CgroupSockMemory]:
    """Read the calling thread's memory-cgroup socket charge (v2 ``sock``, else v1 ``kmem.tcp``).

    (cgroup v1 lets threads of one process sit in different groups; sockets are charged to the
    group of the thread that creates or accepts them.)
    """
    try:
        with open(proc_cgroup) as f:
            groups = [ln.split(":", 2) for ln in f.read().splitlines() if ln.count(":") >= 2]
        with open(mountinfo) as f:
            mounts = _mounts(f.read())
    except OSError as e:
        return Probe(None, f"cannot read cgroup membership: {e}")
    reasons: list[str] = []
    for hid, controllers, cgpath in groups:
        if hid == "0" and controllers == "":
            for root, mnt, fstype, _ in mounts:
                if fstype != "cgroup2":
                    continue
                stat = os.path.join(_join(mnt, root, cgpath), "memory.stat")
                try:
                    with open(stat) as f:
                        for line in f:
                            key, _, val = line.partition(" ")
                            if key == "sock":
                                return Probe(CgroupSockMemory(2, stat, int(val), True))
                    reasons.append(f"{stat} has no 'sock' line")
                except OSError:
                    reasons.append(f"cgroup v2 memory controller not enabled at {mnt}")
    for _hid, controllers, cgpath in groups:
        if "memory" not in controllers.split(","):
            continue
        for root, mnt, fstype, opts in mounts:
            if fstype != "cgroup" or "memory" not in opts:
                continue
            base = _join(mnt, root, cgpath)
            usage_file = os.path.join(base, "memory.kmem.tcp.usage_in_bytes")
            try:
                usage = _read_int(usage_file)
            except (OSError, ValueError) as e:
                reasons.append(f"cgroup v1 TCP memory not readable: {e}")
                continue
            try:
                limit = _read_int(os.path.join(base, "memory.kmem.tcp.limit_in_bytes"))
            except (OSError, ValueError):
                limit = _V1_UNLIMITED
            active = usage > 0 or limit < _V1_UNLIMITED
            note = None if active else (
                "cgroup v1 charges TCP memory only once memory.kmem.tcp.limit_in_bytes is set"
            )
            return Probe(CgroupSockMemory(1, usage_file, usage, active, note))
    return Probe(None, "; ".join(reasons) or "this process is in no memory cgroup")


@dataclass(frozen=True, slots=True)
class KernelMemorySnapshot:
    """Everything the kernel reports about socket memory, at one moment.

    A field is ``None`` when unavailable; ``reasons`` maps its name to why.
    """

    meminfo: MemInfo | None
    sockstat: SockStat | None
    cgroup: CgroupSockMemory | None
    reasons: Mapping[str, str]


def kernel_memory_snapshot(sock: socket.socket | None = None) -> KernelMemorySnapshot:
    """Gather ``SO_MEMINFO`` of ``sock`` (if given), sockstat and the cgroup's socket charge.

    Call it from the thread whose network namespace you want sockstat counts for.
    """
    reasons: dict[str, str] = {}
    meminfo: MemInfo | None = None
    if sock is None:
        reasons["meminfo"] = "no socket given"
    else:
        try:
            meminfo = so_meminfo(sock)
        except OSError as e:
            reasons["meminfo"] = f"SO_MEMINFO failed: {e}"
    stat = read_sockstat()
    if stat.reason is not None:
        reasons["sockstat"] = stat.reason
    cg = read_cgroup_sock_memory()
    if cg.reason is not None:
        reasons["cgroup"] = cg.reason
    elif cg.value is not None and cg.value.note is not None:
        reasons["cgroup"] = cg.value.note
    return KernelMemorySnapshot(meminfo, stat.value, cg.value, reasons)
