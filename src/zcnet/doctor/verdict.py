"""From facts to the doctor's report: every judgement, and no I/O.

Theory of operation: :func:`build_report` turns a :class:`~zcnet.doctor.facts.Facts` (and the
self-test's checks, already judged by :mod:`zcnet.doctor.selftest`) into the versioned document
described in docs/doctor.md: a list of checks, each with a status, the evidence and the change
that would enable it; the interfaces' figures; one verdict per direction; the most useful next
step. Being pure, it is tested with facts made by hand as well as with the machine's own.

Kernel facts behind the judgements (cited where they are used):

* Each outstanding ``MSG_ZEROCOPY`` notification holds an empty skb charged to the socket's
  option memory (net/core/skbuff.c ``msg_zerocopy_alloc`` -> net/core/sock.c ``sock_omalloc``,
  which refuses once ``sk_omem_alloc + SKB_TRUESIZE(0)`` would pass ``net.core.optmem_max``).
  So a socket may hold :func:`notification_budget` of them: the first needs
  :data:`~zcnet.lowlevel.probes.NOTIFICATION_ADMISSION` bytes of room, each holds its skb's
  truesize (measured live by :func:`~zcnet.lowlevel.probes.measure_notification_charge`; 832
  bytes on Linux 6.18 x86-64). A namespace test counts the sends the kernel admits and finds
  this number. Consecutive TCP sends share one notification while it is still open, so this is
  a floor on the sends in flight, not a ceiling.
* Pages pinned by ``MSG_ZEROCOPY`` are charged to the user's ``RLIMIT_MEMLOCK`` unless the
  process has ``CAP_IPC_LOCK`` (net/core/skbuff.c ``mm_account_pinned_pages``; over the limit
  the send fails with ``ENOBUFS`` and zcnet copies); io_uring buffer registration is charged the
  same way (io_uring/rsrc.c ``io_account_mem``).
* TCP sends zero-copy only on a route whose device does scatter-gather (net/ipv4/tcp.c
  ``tcp_sendmsg_locked`` copies without ``NETIF_F_SG``); a packet delivered locally (loopback,
  veth into a local socket) has its zero-copy frags copied (net/core/skbuff.c
  ``skb_orphan_frags_rx``), so over loopback completions always say "copied".
* A received page is mappable only when it holds payload alone: a segment's payload must be a
  whole number of pages (MSS minus 12 bytes of timestamp option, when timestamps are on), and a
  NIC must put headers and payload in separate buffers (header/data split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from zcnet.doctor.facts import Facts, InterfaceFacts
from zcnet.lowlevel.probes import (
    IORING_OP_RECV_ZC,
    IORING_OP_SEND_ZC,
    NOTIFICATION_ADMISSION,
    NOTIFICATION_CHARGE_HERE,
    SO_ZEROCOPY_RULE,
    TCP_ZC_COPYBUF_END,
)
from zcnet.netns import LO_MTU_IPV6_MSS_61440
from zcnet.receiver import MAPPABLE_MAXSEG, RecvPolicy

__all__ = ["SCHEMA", "SCHEMA_VERSION", "STATUSES", "Check", "Status",
           "Verdict", "build_report", "interface_figures", "mappable_mtu", "not_linux_report",
           "notification_budget"]

SCHEMA: Final = "zcnet-doctor"
#: Bumped when a key changes meaning or goes away (new keys keep the version).
SCHEMA_VERSION: Final = 1

Status = Literal["ok", "warn", "no", "unknown", "skipped", "info"]
STATUSES: Final = ("ok", "warn", "no", "unknown", "skipped", "info")

#: Fewer outstanding notifications than this: zero-copy gives way to copies under load.
_FEW_NOTIFICATIONS: Final = 32
#: Less locked memory than this without CAP_IPC_LOCK: a warning.
_LOW_MEMLOCK: Final = 64 * 1024 * 1024
_IPV4_HEADERS: Final = 40
_IPV6_HEADERS: Final = 60
_TIMESTAMP_OPTION: Final = 12


@dataclass(frozen=True, slots=True)
class Check:
    """One item of the report: what was checked, what was found, and what would change it."""

    id: str
    section: str
    subject: str
    status: Status
    evidence: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict on one direction: ``transmit``, ``receive`` or ``io_uring``."""

    direction: str
    status: Status
    summary: str
    next_step: str | None


def _mib(n: int) -> str:
    return f"{n / 1048576:g} MiB" if n >= 1048576 else f"{n} bytes"


def _limit(n: int) -> str:
    return "unlimited" if n < 0 else _mib(n)


# -- kernel ---------------------------------------------------------------------------------------

def _kernel_checks(f: Facts) -> list[Check]:
    out = [Check("kernel.version", "kernel", "Linux", "info",
                 f"{f.kernel} on {f.machine}; features below are tried, not inferred from it",
                 data={"release": f.kernel, "machine": f.machine})]
    for name, probe in f.so_zerocopy.items():
        cid, subject = f"kernel.so_zerocopy.{name.lower()}", f"SO_ZEROCOPY on {name}"
        data = {"supported": probe.supported, "errno": probe.errno}
        if probe.supported:
            out.append(Check(cid, "kernel", subject, "ok", probe.detail, data=data))
        elif probe.supported is None:
            out.append(Check(cid, "kernel", subject, "unknown",
                             f"not tried: {probe.detail}",
                             "load the vsock transport (e.g. vsock_loopback) to try it"
                             if name == "VSOCK" else None, data))
        elif name in ("RAW", "PACKET") and probe.errno == "EOPNOTSUPP":
            out.append(Check(cid, "kernel", subject, "no",
                             f"refused with EOPNOTSUPP, as in mainline: {SO_ZEROCOPY_RULE}",
                             "none for this socket type: send over UDP or TCP (zcnet refuses "
                             "RAW and PACKET sockets with this rule)", data))
        else:
            since = {"TCP": " (Linux 4.14+)", "UDP": " (Linux 5.0+)"}.get(name, "")
            out.append(Check(cid, "kernel", subject, "no",
                             f"refused with {probe.errno}: {probe.detail}",
                             f"a kernel with SO_ZEROCOPY on {name}{since}", data))
    if f.udp_segment is not None:
        p = f.udp_segment
        out.append(Check("kernel.udp_segment", "kernel", "UDP_SEGMENT (UDP GSO)",
                         "ok" if p.supported else "no", p.detail,
                         None if p.supported else "Linux 4.18+ for UDP GSO",
                         {"supported": p.supported}))
    if f.tcp_zerocopy_receive is not None:
        p = f.tcp_zerocopy_receive
        copybuf = p.value is not None and p.value >= TCP_ZC_COPYBUF_END
        status: Status = "ok" if p.supported and copybuf else "warn" if p.supported else "no"
        fix = (None if status == "ok" else "Linux 5.11+ for the copy-buffer fields"
               if p.supported else "Linux 4.18+ for TCP_ZEROCOPY_RECEIVE")
        out.append(Check("kernel.tcp_zerocopy_receive", "kernel", "TCP_ZEROCOPY_RECEIVE", status,
                         p.detail, fix, {"supported": p.supported, "struct_size": p.value,
                                         "copybuf_fields": copybuf}))
    out += _uring_checks(f)
    return out


def _uring_refusal(f: Facts) -> tuple[str, str]:
    """Why io_uring_setup was refused here, and the change that would allow it."""
    u = f.io_uring
    code = u.setup_errno if u is not None else None
    if code == "ENOSYS":
        return ("the kernel has no io_uring (ENOSYS: CONFIG_IO_URING off)",
                "a kernel built with CONFIG_IO_URING")
    if code == "EPERM" and f.io_uring_disabled == 2:
        return ("kernel.io_uring_disabled=2: io_uring is off for every process",
                "sysctl -w kernel.io_uring_disabled=0 (a machine-wide setting)")
    if code == "EPERM" and f.io_uring_disabled == 1:
        return ("kernel.io_uring_disabled=1: only the group kernel.io_uring_group may use it",
                "run in the group kernel.io_uring_group, or sysctl kernel.io_uring_disabled=0")
    if code == "EPERM" and f.seccomp_mode == 2:
        return ("refused with EPERM by this process's seccomp filter "
                f"({f.seccomp_filters} filter(s)), e.g. a container runtime's default profile",
                "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp "
                "profile (Docker's default refuses them)")
    return (f"io_uring_setup refused with {code}",
            "check kernel.io_uring_disabled, seccomp and LSM policy")


def _uring_checks(f: Facts) -> list[Check]:
    u = f.io_uring
    if u is None:
        return []
    data: dict[str, Any] = {"setup_errno": u.setup_errno, "last_op": u.last_op,
                            "io_uring_disabled": f.io_uring_disabled}
    if u.setup_errno is not None:
        why, fix = _uring_refusal(f)
        return [Check("kernel.io_uring", "kernel", "io_uring", "no", why, fix, data),
                Check("kernel.io_uring.send_zc", "kernel", "io_uring SEND_ZC", "skipped",
                      "no ring to probe", fix),
                Check("kernel.io_uring.recv_zc", "kernel", "io_uring zero-copy receive",
                      "skipped", "no ring to probe", fix)]
    out = [Check("kernel.io_uring", "kernel", "io_uring", "ok", u.detail, data=data)]
    send_zc = u.supports(IORING_OP_SEND_ZC)
    engine = ("; zcnet's engine: " + (f.engine_reason or "usable")) if send_zc else ""
    out.append(Check("kernel.io_uring.send_zc", "kernel", "io_uring SEND_ZC",
                     "ok" if send_zc and f.engine_reason is None else "warn" if send_zc else "no",
                     f"IORING_OP_SEND_ZC {'supported' if send_zc else 'not supported'} "
                     f"(IORING_REGISTER_PROBE){engine}",
                     None if send_zc and f.engine_reason is None else
                     "Linux 6.0+" if not send_zc else "build zcnet with its extension",
                     {"supported": send_zc, "engine_reason": f.engine_reason}))
    recv_zc = u.supports(IORING_OP_RECV_ZC)
    out.append(Check("kernel.io_uring.recv_zc", "kernel", "io_uring zero-copy receive",
                     "info" if recv_zc else "no",
                     "IORING_OP_RECV_ZC supported; it also needs a NIC queue with header/data "
                     "split and flow steering, registered with IORING_REGISTER_ZCRX_IFQ "
                     "(CAP_NET_ADMIN); zcnet does not use it yet" if recv_zc else
                     "IORING_OP_RECV_ZC not supported by this kernel",
                     None if recv_zc else "Linux 6.15+ for io_uring zero-copy receive",
                     {"supported": recv_zc}))
    return out


# -- limits ---------------------------------------------------------------------------------------

def notification_budget(optmem_max: int, charge: int,
                        admission: int = NOTIFICATION_ADMISSION) -> int:
    """Outstanding ``MSG_ZEROCOPY`` notifications one socket may hold under ``optmem_max``."""
    if optmem_max < admission:
        return 0
    return (optmem_max - admission) // charge + 1


def _limit_checks(f: Facts) -> list[Check]:
    out: list[Check] = []
    if f.optmem_max is not None:
        value = f.notification_charge.value if f.notification_charge is not None else None
        measured = value is not None
        charge = value if value is not None else NOTIFICATION_CHARGE_HERE
        n = notification_budget(f.optmem_max, charge)
        status: Status = "no" if n == 0 else "warn" if n < _FEW_NOTIFICATIONS else "ok"
        how = "measured" if measured else "as on Linux 6.18 x86-64: not measurable here"
        out.append(Check(
            "limits.optmem_max", "limits", "net.core.optmem_max", status,
            f"{f.optmem_max} bytes: {n} outstanding MSG_ZEROCOPY notifications per socket (the "
            f"first needs {NOTIFICATION_ADMISSION} bytes, each holds {charge}, {how}); beyond "
            "that sends fail with ENOBUFS and zcnet copies"
            + (": every zero-copy send would" if n == 0 else ""),
            None if status == "ok" else
            "sysctl -w net.core.optmem_max=1048576 (per network namespace), or the io_uring "
            "engine, whose notifications are not charged there",
            {"optmem_max": f.optmem_max, "notifications": n, "notification_charge": charge,
             "charge_measured": measured, "notification_admission": NOTIFICATION_ADMISSION}))
    if f.memlock is not None:
        soft, hard = f.memlock
        bypass = bool(f.cap_ipc_lock)
        low = not bypass and 0 <= soft < _LOW_MEMLOCK
        out.append(Check(
            "limits.memlock", "limits", "RLIMIT_MEMLOCK / CAP_IPC_LOCK",
            "warn" if low else "ok",
            f"soft {_limit(soft)}, hard {_limit(hard)}; CAP_IPC_LOCK "
            f"{'yes: the limit does not apply' if bypass else 'no'}. Pages pinned by "
            "MSG_ZEROCOPY sends in flight and io_uring registered buffers are charged to it "
            "(per user, all their processes together); over it sends fail with ENOBUFS",
            "raise it: ulimit -l unlimited, LimitMEMLOCK=infinity (systemd), "
            "--ulimit memlock=-1 (docker), or grant CAP_IPC_LOCK" if low else None,
            {"soft": soft, "hard": hard, "cap_ipc_lock": f.cap_ipc_lock}))
    if f.io_uring_disabled is not None:
        v = f.io_uring_disabled
        out.append(Check(
            "limits.io_uring_disabled", "limits", "kernel.io_uring_disabled",
            "ok" if v == 0 else "warn" if v == 1 else "no",
            {0: "0: io_uring allowed", 1: "1: only the group kernel.io_uring_group may use it",
             2: "2: io_uring off for every process"}.get(v, str(v)),
            None if v == 0 else "sysctl -w kernel.io_uring_disabled=0 (machine-wide)",
            {"value": v}))
    if f.seccomp_mode is not None:
        mode = {0: "none", 1: "strict", 2: "filter"}.get(f.seccomp_mode, str(f.seccomp_mode))
        refused = f.io_uring is not None and f.io_uring.setup_errno == "EPERM" and (
            f.io_uring_disabled == 0)
        out.append(Check(
            "limits.seccomp", "limits", "seccomp", "no" if refused else "ok",
            f"mode {mode} ({f.seccomp_filters or 0} filter(s))"
            + ("; io_uring_setup refused with EPERM while io_uring_disabled=0: a filter "
               "refuses io_uring" if refused else ""),
            "allow the io_uring system calls in the seccomp profile" if refused else None,
            {"mode": f.seccomp_mode, "filters": f.seccomp_filters,
             "refuses_io_uring": refused}))
    if f.max_map_count is not None:
        policy = RecvPolicy()
        per_conn = policy.max_windows + policy.copy_buffers
        room = f.max_map_count - (f.map_count or 0)
        conns = max(room, 0) // per_conn
        out.append(Check(
            "limits.max_map_count", "limits", "vm.max_map_count",
            "ok" if conns >= 1000 else "warn",
            f"{f.max_map_count} mappings, {f.map_count} used by this process: room for about "
            f"{conns} Receiver connections at {per_conn} mappings each (default RecvPolicy: "
            f"{policy.max_windows} windows + {policy.copy_buffers} copy buffers)",
            None if conns >= 1000 else "sysctl -w vm.max_map_count=262144",
            {"max_map_count": f.max_map_count, "map_count": f.map_count,
             "mappings_per_connection": per_conn, "connections": conns}))
    if f.thp is not None:
        out.append(Check(
            "limits.thp", "limits", "transparent huge pages", "ok" if f.thp != "never" else "info",
            f"enabled={f.thp}: " + ("the pool's 2 MiB-aligned slabs (MADV_HUGEPAGE) can be "
                                    "huge pages" if f.thp != "never" else
                                    "pool slabs use 4 KiB pages"),
            None if f.thp != "never" else
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled", {"enabled": f.thp}))
    out.append(Check(
        "limits.cgroup", "limits", "cgroup", "info" if f.cgroup_version else "unknown",
        (f"v{f.cgroup_version} {f.cgroup_path or ''}: " if f.cgroup_version else "")
        + ("socket memory charged to the cgroup" if f.socket_memory_charged else
           "socket memory not charged to a cgroup" if f.socket_memory_charged is False else
           "unknown whether socket memory is charged") + f" ({f.cgroup_note})",
        None, {"version": f.cgroup_version, "path": f.cgroup_path,
               "socket_memory_charged": f.socket_memory_charged}))
    root = f.euid == 0
    out.append(Check(
        "limits.privileges", "limits", "root / CAP_NET_ADMIN", "ok" if root else "info",
        ("root" if root else f"not root (euid {f.euid})")
        + (f", CAP_NET_ADMIN {'yes' if f.cap_net_admin else 'no'}")
        + ("; network namespaces usable" if f.netns_reason is None else
           f"; no namespaces: {f.netns_reason}")
        + ("" if root and f.netns_reason is None else
           ". Needs root: the namespace loopback recipe (MTU 61512), SO_RCVBUFFORCE and the "
           "ifb transmit self-test"),
        None, {"euid": f.euid, "cap_net_admin": f.cap_net_admin,
               "netns": f.netns_reason is None, "netns_reason": f.netns_reason}))
    return out


# -- interfaces -----------------------------------------------------------------------------------

def mappable_mtu(ipv6: bool, timestamps: bool = True, page_size: int = 4096,
                 at_least: int = 0) -> int:
    """The smallest MTU of at least ``at_least`` whose TCP payload is a whole number of pages."""
    over = (_IPV6_HEADERS if ipv6 else _IPV4_HEADERS) + (_TIMESTAMP_OPTION if timestamps else 0)
    pages = max(1, -(-(at_least - over) // page_size))
    return pages * page_size + over


def interface_figures(mtu: int, timestamps: bool, page_size: int) -> dict[str, Any]:
    """MSS, payload per segment, and whether that payload is a whole number of pages."""
    opt = _TIMESTAMP_OPTION if timestamps else 0
    out: dict[str, Any] = {}
    for ip, headers in (("ipv4", _IPV4_HEADERS), ("ipv6", _IPV6_HEADERS)):
        mss = mtu - headers
        payload = mss - opt
        out[f"mss_{ip}"] = mss
        out[f"payload_{ip}"] = payload
        out[f"page_multiple_{ip}"] = payload > 0 and payload % page_size == 0
    return out


def _interface_entry(i: InterfaceFacts, f: Facts) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": i.name, "kind": i.kind, "mtu": i.mtu, "operstate": i.operstate,
        "driver": i.driver, "scatter_gather": i.scatter_gather, "tso": i.tso, "gso": i.gso,
        "offload_reason": i.offload_reason, "header_split": i.header_split,
        "header_split_source": i.header_split_source}
    if i.mtu is not None:
        entry.update(interface_figures(i.mtu, f.tcp_timestamps != 0, f.page_size))
    return entry


def _onoff(v: bool | None) -> str:
    return "?" if v is None else "on" if v else "off"


def _interface_checks(i: InterfaceFacts, f: Facts) -> list[Check]:
    e = _interface_entry(i, f)
    cid = f"interface.{i.name}"
    subject = f"{i.name} ({i.driver or i.kind})"
    if i.mtu is None:
        return [Check(cid, "interfaces", subject, "unknown", "no MTU in sysfs", None, e)]
    ts = " with timestamps" if f.tcp_timestamps != 0 else ""
    figures = (f"MTU {i.mtu}: IPv4 MSS {e['mss_ipv4']} ({e['payload_ipv4']}-byte payload{ts}, "
               f"{'a' if e['page_multiple_ipv4'] else 'not a'} page multiple), IPv6 MSS "
               f"{e['mss_ipv6']} ({e['payload_ipv6']}, "
               f"{'a' if e['page_multiple_ipv6'] else 'not a'} page multiple)")
    offl = (f"sg {_onoff(i.scatter_gather)}, tso {_onoff(i.tso)}, gso {_onoff(i.gso)}"
            + (f" ({i.offload_reason})" if i.offload_reason else ""))
    page = e["page_multiple_ipv4"] or e["page_multiple_ipv6"]
    v4, v6 = (mappable_mtu(False, f.tcp_timestamps != 0, f.page_size, i.mtu),
              mappable_mtu(True, f.tcp_timestamps != 0, f.page_size, i.mtu))
    rx_status: Status
    if i.kind == "loopback":
        rx_status = "ok" if page else "warn"
        rx_fix = None if page else (
            f"in a namespace: ip link set {i.name} mtu {LO_MTU_IPV6_MSS_61440} (IPv6 MSS "
            f"61440 = 15 pages; root), or TCP_MAXSEG {MAPPABLE_MAXSEG} on the listener "
            "(zcnet.make_mappable_listener; no root)")
        rx_evidence = f"{figures}; loopback needs no header split"
    else:
        split = i.header_split == "on"
        rx_status = "ok" if page and split else "no" if i.header_split in ("off", "n/a") else (
            "warn")
        rx_evidence = (f"{figures}; TCP header/data split {i.header_split or 'not asked'} "
                       f"({i.header_split_source})")
        steps = []
        if not page:
            steps.append(f"MTU {v4} (IPv4) or {v6} (IPv6) on both ends")
        if i.header_split == "n/a":
            steps.append(f"a NIC whose driver does TCP header/data split ({i.driver or i.name} "
                         "has no ring parameters)")
        elif not split:
            steps.append(f"ethtool -G {i.name} tcp-data-split on (if the NIC supports it)")
        rx_fix = "; ".join(steps) or None
    tx_status: Status
    if i.kind == "loopback":
        tx_status, tx_evidence = "info", (f"{offl}; traffic delivered locally is always copied "
                                          "(skb_orphan_frags_rx): completions say 'copied'")
        tx_fix = None
    else:
        tx_status = "ok" if i.scatter_gather else "no" if i.scatter_gather is False else "unknown"
        tx_evidence = offl + ("; MSG_ZEROCOPY needs scatter-gather (else tcp_sendmsg copies)"
                              if not i.scatter_gather else "")
        tx_fix = None if i.scatter_gather else f"ethtool -K {i.name} sg on"
    return [Check(f"{cid}.receive", "interfaces", f"{subject} receive", rx_status, rx_evidence,
                  rx_fix, e),
            Check(f"{cid}.transmit", "interfaces", f"{subject} transmit", tx_status,
                  tx_evidence, tx_fix, {"name": i.name})]


# -- verdicts -------------------------------------------------------------------------------------

def _find(checks: Sequence[Check], cid: str) -> Check | None:
    return next((c for c in checks if c.id == cid), None)


def _verdicts(f: Facts, checks: Sequence[Check]) -> list[Verdict]:
    out: list[Verdict] = []
    tcp = _find(checks, "kernel.so_zerocopy.tcp")
    optmem = _find(checks, "limits.optmem_max")
    memlock = _find(checks, "limits.memlock")
    ifb = _find(checks, "selftest.udp_ifb")
    loop = _find(checks, "selftest.msg_zerocopy_loopback")
    devices = [c for c in checks if c.id.endswith(".transmit") and c.id.startswith("interface.")
               and c.status == "ok"]
    if tcp is None or tcp.status != "ok":
        out.append(Verdict("transmit", "no", "MSG_ZEROCOPY unavailable: "
                           + (tcp.evidence if tcp else "not probed"), tcp.fix if tcp else None))
    elif optmem is not None and optmem.status == "no":
        out.append(Verdict("transmit", "no", optmem.evidence, optmem.fix))
    elif loop is not None and loop.status == "no":
        limit = next((c for c in (optmem, memlock) if c is not None and c.status != "ok"), None)
        out.append(Verdict("transmit", "no", "the kernel accepts SO_ZEROCOPY, but in the "
                           f"self-test: {loop.evidence}",
                           limit.fix if limit is not None else loop.fix))
    else:
        proven = ifb is not None and ifb.status == "ok"
        proof = "; real zero-copy confirmed toward an ifb sink (self-test)" if proven else ""
        where = ("; it can send uncopied through " + ", ".join(c.data["name"] for c in devices)
                 + " (scatter-gather)") if devices else (
            "" if proven else
            "; no scatter-gather device checked, only loopback, which always copies")
        limits = [c for c in (optmem, memlock) if c is not None and c.status == "warn"]
        out.append(Verdict(
            "transmit", "warn" if limits or not (devices or proven) else "ok",
            f"MSG_ZEROCOPY accepted{where}{proof}" + "".join(f"; {c.evidence}" for c in limits),
            limits[0].fix if limits else None))
    rx = _find(checks, "kernel.tcp_zerocopy_receive")
    mapped = _find(checks, "selftest.mapped_receive")
    ready = [c for c in checks if c.id.endswith(".receive") and c.status == "ok"]
    if rx is None or rx.status == "no":
        out.append(Verdict("receive", "no", "TCP_ZEROCOPY_RECEIVE unavailable",
                           rx.fix if rx else None))
    else:
        names = ", ".join(c.data["name"] for c in ready) or "none"
        shown = f"; self-test mapped {mapped.data.get('mapped_percent')} %" if (
            mapped and mapped.status == "ok") else ""
        nic = [c for c in checks if c.id.endswith(".receive") and c.id.startswith("interface.")
               and c.data.get("kind") != "loopback"]
        todo = next((c.fix for c in nic if c.fix), None)
        lo = next((c for c in checks if c.id.endswith(".receive")
                   and c.data.get("kind") == "loopback"), None)
        out.append(Verdict(
            "receive", "ok" if any(c.data.get("kind") != "loopback" for c in ready) else "warn",
            f"TCP_ZEROCOPY_RECEIVE works; interfaces that map as they are: {names}{shown}",
            todo or (lo.fix if lo else None)))
    ring = _find(checks, "kernel.io_uring")
    szc = _find(checks, "kernel.io_uring.send_zc")
    if ring is None or ring.status != "ok":
        out.append(Verdict("io_uring", "no", ring.evidence if ring else "not probed",
                           ring.fix if ring else None))
    else:
        assert szc is not None
        live = _find(checks, "selftest.send_zc_loopback")
        if live is not None and live.status == "no" and szc.status == "ok":
            out.append(Verdict("io_uring", "no", f"SEND_ZC is there, but in the self-test: "
                               f"{live.evidence}", live.fix))
        else:
            ifb_zc = _find(checks, "selftest.send_zc_ifb")
            shown = ("; real zero-copy confirmed toward an ifb sink (self-test)"
                     if ifb_zc and ifb_zc.status == "ok" else
                     "; self-test sends verified" if live and live.status == "ok" else "")
            out.append(Verdict("io_uring", szc.status, szc.evidence + shown, szc.fix))
    return out


# -- the document ---------------------------------------------------------------------------------

def _platform(f: Facts) -> dict[str, Any]:
    return {"system": f.system, "linux": f.linux, "kernel": f.kernel, "machine": f.machine,
            "python": f.python, "euid": f.euid, "root": f.euid == 0,
            "implementation": f.implementation, "page_size": f.page_size}


def _document(f: Facts, checks: Sequence[Check], verdicts: Sequence[Verdict],
              interfaces: list[dict[str, Any]], zcnet_version: str) -> dict[str, Any]:
    order = {"no": 0, "warn": 1}
    fixes = [v.next_step for v in sorted(verdicts, key=lambda v: order.get(v.status, 2))
             if v.next_step and v.status in order]
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "zcnet": zcnet_version,
            "platform": _platform(f), "checks": [asdict(c) for c in checks],
            "interfaces": interfaces, "verdicts": [asdict(v) for v in verdicts],
            "next_step": fixes[0] if fixes else None}


def not_linux_report(f: Facts, zcnet_version: str) -> dict[str, Any]:
    """The document on a system that is not Linux: every part says so."""
    why = f"not Linux (platform is {f.system})"
    checks = [Check(f"{s}.linux", s, s, "no", why, "run on Linux") for s in
              ("kernel", "limits", "interfaces", "selftest")]
    verdicts = [Verdict(d, "no", why, "run on Linux") for d in ("transmit", "receive", "io_uring")]
    return _document(f, checks, verdicts, [], zcnet_version)


def build_report(f: Facts, selftests: Sequence[Check] = (), *,
                 zcnet_version: str = "") -> dict[str, Any]:
    """The doctor's document (docs/doctor.md) from ``f`` and the judged self-test checks."""
    if not f.linux:
        return not_linux_report(f, zcnet_version)
    checks = _kernel_checks(f) + _limit_checks(f)
    for i in f.interfaces:
        checks += _interface_checks(i, f)
    checks += list(selftests)
    interfaces = [_interface_entry(i, f) for i in f.interfaces]
    return _document(f, checks, _verdicts(f, checks), interfaces, zcnet_version)
