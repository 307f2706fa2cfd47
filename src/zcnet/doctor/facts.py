"""What ``zcnet doctor`` reads from the machine: the I/O half of the doctor.

Theory of operation: :func:`gather` asks the kernel, each question once, and returns a
:class:`Facts` of plain values (no judgement: that is :mod:`zcnet.doctor.verdict`, which is pure,
so it can be tested with facts made by hand). A question that cannot be asked is recorded as
``None`` with the reason where it helps. Everything here runs without root; network sysctls are
read through ``/proc/sys/net``, which the kernel resolves against the reading thread's network
namespace, so a doctor run inside :meth:`zcnet.netns.Netns.entered` reports that namespace.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from typing import Final

from zcnet._accel import implementation
from zcnet.lowlevel.probes import (
    ProbeResult,
    UringProbe,
    probe_io_uring,
    probe_so_zerocopy,
    probe_tcp_zerocopy_receive,
    probe_udp_segment,
)
from zcnet.lowlevel.uring import unavailable_reason
from zcnet.netns import netns_unavailable_reason

__all__ = ["SOCKET_KINDS", "Facts", "InterfaceFacts", "cgroup_facts", "gather", "interface_names",
           "is_linux"]

#: The sockets whose ``SO_ZEROCOPY`` the doctor tries: (name, family, type, protocol).
SOCKET_KINDS: Final = (
    ("TCP", socket.AF_INET, socket.SOCK_STREAM, 0),
    ("UDP", socket.AF_INET, socket.SOCK_DGRAM, 0),
    ("RAW", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
    ("PACKET", getattr(socket, "AF_PACKET", 17), socket.SOCK_RAW, 0),
    ("VSOCK", getattr(socket, "AF_VSOCK", 40), socket.SOCK_STREAM, 0),
)

_CAP_NET_ADMIN: Final = 12
_CAP_IPC_LOCK: Final = 14
_ARPHRD_LOOPBACK: Final = 772


def is_linux() -> bool:
    """Whether this is Linux (the one place the doctor asks; tests replace it)."""
    return sys.platform.startswith("linux")


@dataclass(frozen=True, slots=True)
class InterfaceFacts:
    """One network interface as the kernel describes it.

    ``kind`` is ``"loopback"``, ``"device"`` (backed by hardware or a hypervisor's device) or
    ``"virtual"``; offload fields are ``None`` when the driver did not say (``offload_reason``);
    ``header_split`` is ``"on"``, ``"off"``, ``"unknown"``, ``"n/a"`` or ``None`` (not asked),
    ``header_split_source`` how it was learned.
    """

    name: str
    mtu: int | None
    operstate: str | None
    kind: str
    driver: str | None
    scatter_gather: bool | None
    tso: bool | None
    gso: bool | None
    offload_reason: str | None
    header_split: str | None
    header_split_source: str


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the doctor read; ``None`` means it could not be read (or not on this OS)."""

    linux: bool
    system: str
    kernel: str
    machine: str
    python: str
    euid: int | None
    implementation: str
    page_size: int
    so_zerocopy: dict[str, ProbeResult] = field(default_factory=dict)
    udp_segment: ProbeResult | None = None
    tcp_zerocopy_receive: ProbeResult | None = None
    io_uring: UringProbe | None = None
    io_uring_disabled: int | None = None
    engine_reason: str | None = None
    optmem_max: int | None = None
    memlock: tuple[int, int] | None = None  # soft, hard; -1 = unlimited
    cap_ipc_lock: bool | None = None
    cap_net_admin: bool | None = None
    seccomp_mode: int | None = None
    seccomp_filters: int | None = None
    max_map_count: int | None = None
    map_count: int | None = None
    thp: str | None = None
    cgroup_version: int | None = None
    cgroup_path: str | None = None
    socket_memory_charged: bool | None = None
    cgroup_note: str = ""
    tcp_timestamps: int | None = None
    netns_reason: str | None = None
    interfaces: tuple[InterfaceFacts, ...] = ()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _status() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (_read("/proc/self/status") or "").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _thp() -> str | None:
    text = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if text is None:
        return None
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return text


def cgroup_facts(root: str = "/") -> tuple[int | None, str | None, bool | None, str]:
    """cgroup version, this process's cgroup, whether socket memory is charged, and how known.

    ``root`` is where ``proc/`` and ``sys/`` are found (``/``; a test gives a tree of its own).

    v2: socket memory is charged to the memory controller of the process's cgroup
    (mm/memcontrol.c ``mem_cgroup_charge_skmem``; ``memory.stat`` has a ``sock`` line) unless the
    kernel was booted with ``cgroup.memory=nosocket``. v1: only once
    ``memory.kmem.tcp.limit_in_bytes`` is set for the cgroup (Documentation/admin-guide/
    cgroup-v1/memory.rst).
    """
    cmdline = _read(root + "proc/cmdline") or ""
    lines = (_read(root + "proc/self/cgroup") or "").splitlines()
    unified = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
    v1_memory = next((ln.split(":", 2)[2] for ln in lines
                      if ":memory:" in ln or ln.split(":")[1:2] == ["memory"]), None)
    if "cgroup.memory=nosocket" in cmdline.split():
        version = 2 if v1_memory is None else 1
        return version, unified or v1_memory, False, "booted with cgroup.memory=nosocket"
    if v1_memory is None and unified is not None:
        base = root + "sys/fs/cgroup" + unified.rstrip("/")
        stat = _read(base + "/memory.stat")
        if stat is None:
            return 2, unified, False, (f"no memory controller at {base} (memory.stat missing): "
                                       "socket memory is not charged to a cgroup")
        sock = next((ln.split()[1] for ln in stat.splitlines() if ln.startswith("sock ")), "?")
        return 2, unified, True, f"{base}/memory.stat: sock {sock} bytes charged now"
    if v1_memory is not None:
        # v1 starts charging TCP memory the first time a limit is written, whatever its value
        # (mm/memcontrol-v1.c memcg_update_tcp_max): a usage above 0 proves it; a limit below
        # the maximum too; otherwise it was most likely never written.
        base = root + "sys/fs/cgroup/memory" + v1_memory.rstrip("/")
        limit = _read(base + "/memory.kmem.tcp.limit_in_bytes")
        usage = _read(base + "/memory.kmem.tcp.usage_in_bytes")
        if limit is None:
            return 1, v1_memory, False, "cgroup v1 without kmem.tcp accounting"
        limited = limit.isdigit() and int(limit) < 2**62
        used = usage is not None and usage.isdigit() and int(usage) > 0
        return 1, v1_memory, limited or used, (f"memory.kmem.tcp.limit_in_bytes={limit}, "
                                               f"usage_in_bytes={usage}")
    return None, None, None, "no cgroup information in /proc/self/cgroup"


def interface_names() -> list[str]:
    """The interfaces of this process's network namespace (sysfs), sorted; loopback first."""
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return []
    return sorted(names, key=lambda n: (n != "lo", n))


def _interface(name: str) -> InterfaceFacts:
    from zcnet.doctor.ethtool import driver_name, header_split, offloads

    base = f"/sys/class/net/{name}"
    if _read_int(base + "/type") == _ARPHRD_LOOPBACK:
        kind = "loopback"
    elif os.path.exists(base + "/device"):
        kind = "device"
    else:
        kind = "virtual"
    off = offloads(name)
    split, source = header_split(name)
    return InterfaceFacts(name, _read_int(base + "/mtu"), _read(base + "/operstate"), kind,
                          driver_name(name), off.scatter_gather, off.tso, off.gso, off.reason,
                          split, source)


def _interfaces(only: str | None) -> tuple[InterfaceFacts, ...]:
    return tuple(_interface(n) for n in interface_names() if only is None or n == only)


def gather(interface: str | None = None) -> Facts:
    """Ask this machine everything the doctor reports (no live traffic; see selftest).

    ``interface`` limits the interface part to that one name.
    """
    uname = platform.uname()
    facts = Facts(linux=is_linux(), system=uname.system or sys.platform, kernel=uname.release,
                  machine=uname.machine, python=platform.python_version(),
                  euid=os.geteuid() if hasattr(os, "geteuid") else None,
                  implementation=implementation().name, page_size=mmap.PAGESIZE)
    if not facts.linux:
        return facts
    import resource  # not on every system: only read on Linux

    status = _status()
    cap_eff = int(status.get("CapEff", "0"), 16) if "CapEff" in status else None
    version, path, charged, note = cgroup_facts()
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    maps = _read("/proc/self/maps")
    return dataclasses.replace(
        facts,
        so_zerocopy={name: probe_so_zerocopy(fam, typ, proto)
                     for name, fam, typ, proto in SOCKET_KINDS},
        udp_segment=probe_udp_segment(),
        tcp_zerocopy_receive=probe_tcp_zerocopy_receive(),
        io_uring=probe_io_uring(),
        io_uring_disabled=_read_int("/proc/sys/kernel/io_uring_disabled"),
        engine_reason=unavailable_reason(),
        optmem_max=_read_int("/proc/sys/net/core/optmem_max"),
        memlock=(-1 if soft == resource.RLIM_INFINITY else soft,
                 -1 if hard == resource.RLIM_INFINITY else hard),
        cap_ipc_lock=None if cap_eff is None else bool(cap_eff >> _CAP_IPC_LOCK & 1),
        cap_net_admin=None if cap_eff is None else bool(cap_eff >> _CAP_NET_ADMIN & 1),
        seccomp_mode=int(status["Seccomp"]) if "Seccomp" in status else None,
        seccomp_filters=int(status["Seccomp_filters"]) if "Seccomp_filters" in status else None,
        max_map_count=_read_int("/proc/sys/vm/max_map_count"),
        map_count=None if maps is None else len(maps.splitlines()),
        thp=_thp(),
        cgroup_version=version, cgroup_path=path, socket_memory_charged=charged,
        cgroup_note=note,
        tcp_timestamps=_read_int("/proc/sys/net/ipv4/tcp_timestamps"),
        netns_reason=netns_unavailable_reason(),
        interfaces=_interfaces(interface),
    )
