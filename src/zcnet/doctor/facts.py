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
from zcnet.lowlevel.meminfo import read_cgroup_sock_memory
from zcnet.lowlevel.probes import (
    ProbeResult,
    UringProbe,
    measure_notification_charge,
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
    notification_charge: ProbeResult | None = None
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


def cgroup_facts(proc_cgroup: str = "/proc/thread-self/cgroup",
                 mountinfo: str = "/proc/self/mountinfo",
                 cmdline: str = "/proc/cmdline") -> tuple[int | None, str | None, bool | None, str]:
    """cgroup version, the memory cgroup's file read, whether socket memory is charged, and how
    that is known (:func:`zcnet.lowlevel.meminfo.read_cgroup_sock_memory` reads the cgroup).

    v2: socket memory is charged to the memory controller of the process's cgroup
    (mm/memcontrol.c ``mem_cgroup_charge_skmem``; ``memory.stat`` has a ``sock`` line) unless the
    kernel was booted with ``cgroup.memory=nosocket``. v1: only once a TCP limit was written for
    the cgroup (mm/memcontrol-v1.c ``memcg_update_tcp_max``), which a usage above 0 or a limit
    below the maximum shows.
    """
    nosocket = "cgroup.memory=nosocket" in (_read(cmdline) or "").split()
    probe = read_cgroup_sock_memory(proc_cgroup, mountinfo)
    if probe.value is None:
        lines = (_read(proc_cgroup) or "").splitlines()
        version = (2 if any(ln.startswith("0::") for ln in lines) else 1) if lines else None
        return version, None, False if version else None, probe.reason or ""
    v = probe.value
    if nosocket:
        return v.version, v.path, False, "booted with cgroup.memory=nosocket"
    note = v.note or f"{v.sock_bytes} bytes charged now"
    return v.version, v.path, v.active, note


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
    try:
        split, source = header_split(name)
    except Exception as e:  # a reply this parser does not expect: not knowing is the finding
        split, source = None, f"ethtool netlink reply not understood ({type(e).__name__}: {e})"
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
        notification_charge=measure_notification_charge(),
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
