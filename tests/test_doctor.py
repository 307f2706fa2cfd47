"""``zcnet doctor``: its judgements from made-up facts, and its probes against truths this machine
can check (a namespace's optmem_max and interface MTU, a child's RLIMIT_MEMLOCK, a seccomp filter
refusing io_uring, a child running as nobody), the JSON schema, the CLI and non-Linux systems."""

from __future__ import annotations

import dataclasses
import errno
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NETNS_SKIP
from tests.restricted_child import (
    io_uring_refusal_unavailable_reason,
    nobody_unavailable_reason,
    run_child_json,
)
from zcnet.doctor import SCHEMA, SCHEMA_VERSION, report
from zcnet.doctor import facts as facts_mod
from zcnet.doctor.facts import Facts, InterfaceFacts
from zcnet.doctor.verdict import (
    STATUSES,
    build_report,
    interface_figures,
    mappable_mtu,
    notification_budget,
)
from zcnet.lowlevel.constants import MSG_ZEROCOPY, SO_ZEROCOPY
from zcnet.lowlevel.probes import NOTIFICATION_ADMISSION, ProbeResult, UringProbe
from zcnet.lowlevel.uring import unavailable_reason
from zcnet.netns import Netns

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# -- pure judgements ------------------------------------------------------------------------------

_OK = ProbeResult(True, "accepted")


def _facts(**changes: Any) -> Facts:
    """Healthy facts of a made-up Linux machine, with ``changes``."""
    base = Facts(
        linux=True, system="Linux", kernel="6.18.0", machine="x86_64", python="3.11",
        euid=1000, implementation="c", page_size=4096,
        so_zerocopy={"TCP": _OK, "UDP": _OK,
                     "RAW": ProbeResult(False, "refused", "EOPNOTSUPP"),
                     "PACKET": ProbeResult(False, "refused", "EOPNOTSUPP")},
        udp_segment=ProbeResult(True, "accepted", value=1400),
        tcp_zerocopy_receive=ProbeResult(True, "64 bytes", value=64),
        io_uring=UringProbe(None, frozenset({0, 47, 58}), 62, 0, "ring made"),
        io_uring_disabled=0, engine_reason=None, optmem_max=131072,
        memlock=(8 << 20, 8 << 20), cap_ipc_lock=False, cap_net_admin=False,
        seccomp_mode=0, seccomp_filters=0, max_map_count=65530, map_count=100, thp="madvise",
        cgroup_version=2, cgroup_path="/", socket_memory_charged=True, cgroup_note="",
        tcp_timestamps=1, netns_reason="network namespaces need root",
        interfaces=(InterfaceFacts("lo", 65536, "unknown", "loopback", None, True, True, True,
                                   None, "n/a", "test"),))
    return dataclasses.replace(base, **changes)


def _check(doc: dict[str, Any], cid: str) -> dict[str, Any]:
    found = [c for c in doc["checks"] if c["id"] == cid]
    assert len(found) == 1, (cid, [c["id"] for c in doc["checks"]])
    return found[0]


def _verdict(doc: dict[str, Any], direction: str) -> dict[str, Any]:
    return next(v for v in doc["verdicts"] if v["direction"] == direction)


_CHARGE = 800  # a made-up measured charge


@pytest.mark.parametrize(("optmem", "status", "budget"), [
    (131072, "ok", 164), (NOTIFICATION_ADMISSION + _CHARGE * 4, "warn", 5),
    (NOTIFICATION_ADMISSION, "warn", 1), (NOTIFICATION_ADMISSION - 1, "no", 0)])
def test_optmem_budget_judged(optmem: int, status: str, budget: int) -> None:
    charge = ProbeResult(True, "measured", value=_CHARGE)
    doc = build_report(_facts(optmem_max=optmem, notification_charge=charge))
    check = _check(doc, "limits.optmem_max")
    assert check["status"] == status
    assert check["data"]["notifications"] == budget == notification_budget(optmem, _CHARGE)
    assert check["data"]["charge_measured"] is True
    assert (_verdict(doc, "transmit")["status"] == "no") is (status == "no")
    if status != "ok":
        assert "optmem_max" in (check["fix"] or "")


def test_low_memlock_warns_unless_cap_ipc_lock() -> None:
    low = build_report(_facts(memlock=(65536, 65536)))
    assert _check(low, "limits.memlock")["status"] == "warn"
    assert "ulimit -l" in _check(low, "limits.memlock")["fix"]
    capped = build_report(_facts(memlock=(65536, 65536), cap_ipc_lock=True))
    assert _check(capped, "limits.memlock")["status"] == "ok"
    unlimited = build_report(_facts(memlock=(-1, -1)))
    assert "unlimited" in _check(unlimited, "limits.memlock")["evidence"]


@pytest.mark.parametrize(("disabled", "seccomp", "words"), [
    (0, 2, "seccomp"), (2, 0, "io_uring_disabled=2"), (1, 0, "io_uring_group")])
def test_io_uring_refusal_explained(disabled: int, seccomp: int, words: str) -> None:
    doc = build_report(_facts(io_uring=UringProbe("EPERM", frozenset(), None, 0, "refused"),
                              io_uring_disabled=disabled, seccomp_mode=seccomp,
                              seccomp_filters=1 if seccomp else 0))
    assert _check(doc, "kernel.io_uring")["status"] == "no"
    assert words in _check(doc, "kernel.io_uring")["evidence"]
    assert _check(doc, "kernel.io_uring.send_zc")["status"] == "skipped"
    assert _verdict(doc, "io_uring")["status"] == "no"
    assert (_check(doc, "limits.seccomp")["status"] == "no") is (seccomp == 2)


def test_no_send_zc_op_is_reported() -> None:
    doc = build_report(_facts(io_uring=UringProbe(None, frozenset({0}), 40, 0, "old ring")))
    assert _check(doc, "kernel.io_uring.send_zc")["status"] == "no"
    assert _check(doc, "kernel.io_uring.recv_zc")["status"] == "no"
    assert _verdict(doc, "io_uring")["status"] == "no"


def test_raw_and_packet_named_by_the_rule() -> None:
    doc = build_report(_facts())
    for name in ("raw", "packet"):
        check = _check(doc, f"kernel.so_zerocopy.{name}")
        assert check["status"] == "no"
        assert "RAW and PACKET sockets refuse it with EOPNOTSUPP" in check["evidence"]


def test_interface_figures_and_mappable_mtus() -> None:
    assert interface_figures(61512, True, 4096) == {
        "mss_ipv4": 61472, "payload_ipv4": 61460, "page_multiple_ipv4": False,
        "mss_ipv6": 61452, "payload_ipv6": 61440, "page_multiple_ipv6": True}
    assert interface_figures(4148, True, 4096)["page_multiple_ipv4"] is True
    assert interface_figures(4148, False, 4096)["page_multiple_ipv4"] is False
    assert mappable_mtu(False, True, 4096, 1500) == 4148
    assert mappable_mtu(True, True, 4096, 1500) == 4168
    assert mappable_mtu(True, True, 4096, 9000) == 12360
    for ipv6 in (False, True):
        mtu = mappable_mtu(ipv6, True, 4096, 1500)
        assert interface_figures(mtu, True, 4096)[f"page_multiple_ipv{6 if ipv6 else 4}"]


def test_loopback_recipe_and_nic_fix() -> None:
    nic = InterfaceFacts("eth9", 1500, "up", "device", "mlx5_core", True, True, True, None,
                         "off", "test")
    doc = build_report(_facts(interfaces=(*_facts().interfaces, nic)))
    lo = _check(doc, "interface.lo.receive")
    assert lo["status"] == "warn" and "61512" in lo["fix"] and "4108" in lo["fix"]
    eth = _check(doc, "interface.eth9.receive")
    assert eth["status"] == "no"
    assert "4148" in eth["fix"] and "tcp-data-split on" in eth["fix"]
    assert _check(doc, "interface.eth9.transmit")["status"] == "ok"
    ifb = InterfaceFacts("ifb3", 1500, "up", "virtual", "ifb", True, True, True, None, "n/a",
                         "test")
    fix = _check(build_report(_facts(interfaces=(ifb,))), "interface.ifb3.receive")["fix"]
    assert "ifb has no ring parameters" in fix and "ethtool -G" not in fix
    assert "eth9" in _verdict(doc, "transmit")["summary"]


def test_cgroup_facts_v2_v1_and_nosocket(tmp_path: Path) -> None:
    """The cgroup rules on made-up /proc files and cgroup trees (the machine's own cgroups are
    not ours to change)."""
    def write(rel: str, text: str) -> str:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    v2_mounts = write("v2/mountinfo", f"30 1 0:26 / {tmp_path}/cg2 rw - cgroup2 cgroup2 rw\n")
    v2_self = write("v2/cgroup", "0::/app\n")
    write("cg2/app/memory.stat", "anon 1\nsock 8192\n")
    plain = write("cmdline", "ro quiet\n")
    version, path, charged, note = facts_mod.cgroup_facts(v2_self, v2_mounts, plain)
    assert (version, charged) == (2, True) and path and path.endswith("app/memory.stat")
    assert "8192" in note
    nosocket = write("nosocket", "ro cgroup.memory=nosocket\n")
    assert facts_mod.cgroup_facts(v2_self, v2_mounts, nosocket)[2] is False
    no_memory = write("v2/other", "0::/elsewhere\n")
    assert facts_mod.cgroup_facts(no_memory, v2_mounts, plain)[::2] == (2, False)

    v1_mounts = write("v1/mountinfo", f"35 31 0:32 / {tmp_path}/mem rw - cgroup cgroup rw,memory\n")
    v1_self = write("v1/cgroup", "4:memory:/job\n1:cpu:/job\n")
    tcp = "mem/job/memory.kmem.tcp."
    for limit, usage, charged_now in ((2**63 - 4096, 0, False), (1048576, 0, True),
                                      (2**63 - 4096, 4096, True)):
        write(tcp + "limit_in_bytes", f"{limit}\n")
        write(tcp + "usage_in_bytes", f"{usage}\n")
        assert facts_mod.cgroup_facts(v1_self, v1_mounts, plain)[::2] == (1, charged_now)
    assert facts_mod.cgroup_facts(f"{tmp_path}/none", v1_mounts, plain)[0] is None


def test_map_count_thp_and_a_ready_nic() -> None:
    doc = build_report(_facts(max_map_count=1000, map_count=100, thp="never"))
    maps = _check(doc, "limits.max_map_count")
    assert maps["data"]["connections"] == 90 and maps["status"] == "warn"
    assert "vm.max_map_count" in maps["fix"]
    thp = _check(doc, "limits.thp")
    assert thp["status"] == "info" and "madvise" in thp["fix"]
    ready = InterfaceFacts("eth7", 4148, "up", "device", "bnxt_en", True, True, True, None,
                           "on", "test")
    doc = build_report(_facts(interfaces=(ready,)))
    rx = _check(doc, "interface.eth7.receive")
    assert rx["status"] == "ok" and rx["fix"] is None
    assert rx["data"]["page_multiple_ipv4"] is True
    assert _verdict(doc, "receive")["status"] == "ok"
    assert "eth7" in _verdict(doc, "receive")["summary"]


def test_plain_rendering_without_rich() -> None:
    from zcnet.doctor.render import render_plain

    doc = build_report(_facts(optmem_max=100))
    text = render_plain(doc)
    assert "[  NO] net.core.optmem_max" in text
    assert "change: sysctl -w net.core.optmem_max" in text
    assert "Next step:" in text and "transmit:" in text


# -- the document and its documentation -----------------------------------------------------------

_TOP_KEYS = {"schema", "version", "zcnet", "platform", "checks", "interfaces", "verdicts",
             "next_step"}
_CHECK_KEYS = {"id", "section", "subject", "status", "evidence", "fix", "data"}
_VERDICT_KEYS = {"direction", "status", "summary", "next_step"}
_PLATFORM_KEYS = {"system", "linux", "kernel", "machine", "python", "euid", "root",
                  "implementation", "page_size"}
_INTERFACE_KEYS = {"name", "kind", "mtu", "operstate", "driver", "scatter_gather", "tso", "gso",
                   "offload_reason", "header_split", "header_split_source", "mss_ipv4",
                   "payload_ipv4", "page_multiple_ipv4", "mss_ipv6", "payload_ipv6",
                   "page_multiple_ipv6"}


def _check_schema(doc: dict[str, Any]) -> None:
    assert set(doc) == _TOP_KEYS
    assert (doc["schema"], doc["version"]) == (SCHEMA, SCHEMA_VERSION) == ("zcnet-doctor", 1)
    assert set(doc["platform"]) == _PLATFORM_KEYS
    for c in doc["checks"]:
        assert set(c) == _CHECK_KEYS
        assert c["status"] in STATUSES
        assert c["section"] in ("kernel", "limits", "interfaces", "selftest")
    for v in doc["verdicts"]:
        assert set(v) == _VERDICT_KEYS and v["status"] in STATUSES
    assert [v["direction"] for v in doc["verdicts"]] == ["transmit", "receive", "io_uring"]
    for i in doc["interfaces"]:
        assert set(i) == _INTERFACE_KEYS
    assert json.loads(json.dumps(doc)) == doc


def test_report_here_follows_the_schema() -> None:
    doc = report(selftest=False)
    _check_schema(doc)
    ids = {c["id"] for c in doc["checks"]}
    assert {"kernel.so_zerocopy.tcp", "kernel.io_uring", "limits.optmem_max",
            "interface.lo.receive"} <= ids


def test_docs_describe_every_key() -> None:
    text = (ROOT / "docs" / "doctor.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", text))
    missing = (_TOP_KEYS | _CHECK_KEYS | _VERDICT_KEYS | _PLATFORM_KEYS | _INTERFACE_KEYS
               | set(STATUSES)) - documented
    assert not missing, f"docs/doctor.md does not describe {sorted(missing)}"


def test_not_linux_reports_not_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facts_mod, "is_linux", lambda: False)
    doc = report()
    _check_schema(doc)
    assert doc["platform"]["linux"] is False
    assert doc["checks"] and all(c["status"] == "no" and "not Linux" in c["evidence"]
                                 for c in doc["checks"])
    assert all("not Linux" in v["summary"] for v in doc["verdicts"])


# -- the command line -----------------------------------------------------------------------------

def _zcnet(*args: str, netns: Netns | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "zcnet", *args]
    if netns is not None:
        argv = netns.exec_argv(argv)
    env = {"PYTHONPATH": f"{SRC}:{ROOT}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env,
                          check=False)


def test_cli_bad_arguments_exit_2() -> None:
    bogus = _zcnet("doctor", "--bogus")
    assert bogus.returncode == 2 and "--bogus" in bogus.stderr
    nosuch = _zcnet("doctor", "--interface", "zcnet-nosuch0", "--no-selftest")
    assert nosuch.returncode == 2 and "no such interface" in nosuch.stderr


def test_cli_json_and_table() -> None:
    out = _zcnet("doctor", "--json", "--no-selftest", "--interface", "lo")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    _check_schema(doc)
    assert [i["name"] for i in doc["interfaces"]] == ["lo"]
    table = _zcnet("doctor", "--no-selftest", "--interface", "lo")
    assert table.returncode == 0, table.stderr
    assert "SO_ZEROCOPY" in table.stdout and "transmit" in table.stdout


# -- probes against truths ------------------------------------------------------------------------

needs_netns = pytest.mark.skipif(NETNS_SKIP is not None, reason=NETNS_SKIP or "")


def _notifications_admitted(ns: Netns) -> int:
    """MSG_ZEROCOPY datagrams one UDP socket gets queued before ENOBUFS, with every notification
    outstanding: they wait for an ARP answer that never comes (the neighbour queue holds far
    more bytes than this). Needs the veth zveth0 up in ``ns``."""
    for args in (("link", "set", "zveth0", "up"), ("link", "set", "zveth1", "up"),
                 ("addr", "add", "198.19.7.1/24", "dev", "zveth0")):
        subprocess.run(["ip", "-n", ns.name, *args], check=True)
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        sock.connect(("198.19.7.77", 9000))
        sock.setblocking(False)
        for sent in range(1000):
            try:
                sock.send(bytes(1000), MSG_ZEROCOPY)
            except OSError as e:
                assert e.errno == errno.ENOBUFS, e
                return sent
    raise AssertionError("1000 notifications admitted: nothing held them")


@needs_netns
def test_namespace_optmem_and_interface_mtu_reported() -> None:
    """In a namespace: optmem_max set to a small budget, loopback at MTU 61512, a veth end at
    MTU 4148 (IPv4 payload one page with timestamps), its peer at 1500; doctor run there sees
    exactly that. The budget
    it reports is the number of notifications the kernel then really admits: UDP datagrams to
    an address on the veth's subnet that nobody answers wait for ARP, each holding its
    notification, until a send fails with ENOBUFS."""
    optmem = NOTIFICATION_ADMISSION + 6 * 832 + 100
    with Netns() as ns:  # lo MTU 61512: IPv6 payload 15 pages
        ns.sysctl("net.core.optmem_max", optmem)
        made = subprocess.run(["ip", "-n", ns.name, "link", "add", "zveth0", "mtu", "4148",
                               "type", "veth", "peer", "name", "zveth1", "mtu", "1500"],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"no veth interfaces: {made.stderr.strip()}")
        out = _zcnet("doctor", "--json", "--no-selftest", netns=ns)
        admitted = _notifications_admitted(ns)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    check = _check(doc, "limits.optmem_max")
    assert check["data"]["optmem_max"] == optmem and check["data"]["charge_measured"] is True
    assert check["data"]["notifications"] == admitted and check["status"] == "warn"
    assert 1 < admitted < 32
    ifaces = {i["name"]: i for i in doc["interfaces"]}
    assert set(ifaces) == {"lo", "zveth0", "zveth1"}
    d0, d1 = ifaces["zveth0"], ifaces["zveth1"]
    assert (d0["mtu"], d0["mss_ipv4"], d0["payload_ipv4"], d0["page_multiple_ipv4"]) == (
        4148, 4108, 4096, True)
    assert d0["page_multiple_ipv6"] is False
    assert (d1["mtu"], d1["mss_ipv4"], d1["page_multiple_ipv4"]) == (1500, 1460, False)
    assert d0["kind"] == "virtual" and d0["driver"] == "veth"
    assert d0["scatter_gather"] is True  # veth's default features (drivers/net/veth.c)
    assert ifaces["lo"]["kind"] == "loopback" and ifaces["lo"]["mtu"] == 61512
    lo = _check(doc, "interface.lo.receive")
    assert lo["status"] == "ok" and lo["data"]["page_multiple_ipv6"] is True


@needs_netns
def test_namespace_optmem_too_small_fails_the_selftest_honestly() -> None:
    """optmem_max below one notification: doctor says transmit 'no', and its own loopback
    self-test, run in that namespace, sees no completion (every send was copied)."""
    with Netns(lo_mtu=None) as ns:
        ns.sysctl("net.core.optmem_max", NOTIFICATION_ADMISSION - 1)
        out = _zcnet("doctor", "--json", "--no-namespace", netns=ns)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert _check(doc, "limits.optmem_max")["status"] == "no"
    assert _verdict(doc, "transmit")["status"] == "no"
    selftest = _check(doc, "selftest.msg_zerocopy_loopback")
    assert selftest["data"]["verified"] is True
    assert selftest["data"]["completions"] == 0 and selftest["status"] == "no"


_CHILD_PREIMPORT = ["zcnet.doctor", "zcnet.doctor.facts", "zcnet.doctor.verdict",
                    "zcnet.doctor.ethtool", "zcnet.doctor.selftest", "platform", "fcntl",
                    "struct"]


def test_child_memlock_limit_and_non_root() -> None:
    """As nobody with RLIMIT_MEMLOCK 64 KiB: doctor reports that limit, no CAP_IPC_LOCK, what
    needs root, and skips the namespace part of the self-test instead of failing."""
    reason = nobody_unavailable_reason()
    if reason:
        pytest.skip(reason)
    child = run_child_json("""
        import json
        from zcnet.doctor import report
        doc = report()
        print(json.dumps(doc))
    """, as_nobody=True, memlock_bytes=65536, preimport=_CHILD_PREIMPORT)
    _check_schema(child)
    assert child["platform"]["root"] is False
    memlock = _check(child, "limits.memlock")
    assert memlock["data"] == {"soft": 65536, "hard": 65536, "cap_ipc_lock": False}
    assert memlock["status"] == "warn"
    privileges = _check(child, "limits.privileges")
    assert "Needs root" in privileges["evidence"]
    assert privileges["data"]["cap_net_admin"] is False and privileges["data"]["netns"] is False
    for cid in ("selftest.udp_ifb", "selftest.send_zc_ifb"):
        ifb = _check(child, cid)
        assert ifb["status"] == "skipped" and "root" in ifb["evidence"]
    # 256 KiB sends pin more than 64 KiB: the kernel refuses each zero-copy send (ENOBUFS from
    # mm_account_pinned_pages), zcnet copies them, and the doctor says so
    loop = _check(child, "selftest.msg_zerocopy_loopback")
    assert loop["data"]["verified"] is True
    assert loop["status"] == "no" and loop["data"]["enobufs"] > 0
    assert loop["data"]["completions"] == 0 and loop["data"]["bytes_plain"] == loop["data"]["bytes"]
    assert "RLIMIT_MEMLOCK" in loop["evidence"]
    transmit = _verdict(child, "transmit")
    assert transmit["status"] == "no" and "ulimit -l" in transmit["next_step"]


#: What ``zcnet.cli.build_parser`` imports (the benchmark's parser too), for a child as nobody.
_CLI_MODULES = ["zcnet.cli", "zcnet.doctor.cli", "zcnet.doctor.render", "argparse", "contextlib",
                "io", *(f"zcnet.bench.{m}" for m in ("cli", "common", "dask", "env", "modes",
                                                     "stats", "workers"))]


def test_cli_json_as_nobody() -> None:
    """``zcnet doctor --json`` as nobody: exit 0 and a document that says it is not root."""
    reason = nobody_unavailable_reason()
    if reason:
        pytest.skip(reason)
    child = run_child_json("""
        import contextlib, io, json
        from zcnet.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["doctor", "--json", "--no-selftest"])
        print(json.dumps({"status": status, "doc": json.loads(out.getvalue())}))
    """, as_nobody=True, preimport=[*_CHILD_PREIMPORT, *_CLI_MODULES])
    assert child["status"] == 0
    _check_schema(child["doc"])
    assert child["doc"]["platform"]["root"] is False


def test_seccomp_child_reports_io_uring_refused() -> None:
    reason = io_uring_refusal_unavailable_reason()
    if reason:
        pytest.skip(reason)
    child = run_child_json("""
        import json
        from zcnet.doctor import report
        print(json.dumps(report(namespace=False)))
    """, refuse_io_uring=True)
    ring = _check(child, "kernel.io_uring")
    assert ring["status"] == "no" and ring["data"]["setup_errno"] == "EPERM"
    assert "seccomp" in ring["evidence"]
    seccomp = _check(child, "limits.seccomp")["data"]
    assert seccomp["refuses_io_uring"] is True
    assert seccomp["mode"] == 2 and seccomp["filters"] >= 1  # as /proc/self/status says
    assert _verdict(child, "io_uring")["status"] == "no"
    assert _check(child, "kernel.so_zerocopy.tcp")["status"] == "ok"  # the rest still works
    live = _check(child, "selftest.send_zc_loopback")
    here = unavailable_reason()  # e.g. the pure-Python implementation has no io_uring engine
    assert live["status"] == "skipped" and (here or "EPERM") in live["evidence"]
    assert _check(child, "selftest.msg_zerocopy_loopback")["status"] == "ok"


def test_so_zerocopy_checks_match_the_kernel() -> None:
    doc = report(selftest=False)
    assert _check(doc, "kernel.so_zerocopy.tcp")["status"] == "ok"
    assert _check(doc, "kernel.so_zerocopy.udp")["status"] == "ok"
    for name in ("raw", "packet"):
        check = _check(doc, f"kernel.so_zerocopy.{name}")
        assert (check["status"], check["data"]["errno"]) == ("no", "EOPNOTSUPP")


def test_selftest_without_namespaces_skips_the_ifb_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a container without namespaces: the ifb part is skipped with the reason."""
    from zcnet.doctor import selftest

    monkeypatch.setattr(selftest, "netns_unavailable_reason",
                        lambda: "the kernel has no network namespaces")
    checks = {c.id: c for c in selftest.run_selftest()}
    for cid in ("selftest.udp_ifb", "selftest.send_zc_ifb"):
        assert checks[cid].status == "skipped"
        assert "the kernel has no network namespaces" in checks[cid].evidence


def test_a_failing_selftest_part_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    from zcnet.doctor import selftest

    def broken() -> selftest.Check:
        raise RuntimeError("the receive part broke")

    monkeypatch.setattr(selftest, "_mapped_receive", broken)
    checks = {c.id: c for c in selftest.run_selftest(root_parts=False)}
    assert checks["selftest.mapped_receive"].status == "no"
    assert "RuntimeError: the receive part broke" in checks["selftest.mapped_receive"].evidence
    assert checks["selftest.msg_zerocopy_loopback"].status == "ok"


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def test_selftest_moves_verified_bytes() -> None:
    from zcnet.doctor.selftest import run_selftest

    checks = {c.id: c for c in run_selftest()}
    loop = checks["selftest.msg_zerocopy_loopback"]
    assert loop.status == "ok" and loop.data["verified"]
    assert loop.data["completions"] > 0 and loop.data["bytes_copied"] == loop.data["bytes"]
    uring = checks["selftest.send_zc_loopback"]
    if unavailable_reason() is None:
        assert uring.status == "ok" and uring.data["verified"] and uring.data["completions"] > 0
        assert uring.data["engine"] == "io_uring"
    else:
        assert uring.status == "skipped"
    mapped = checks["selftest.mapped_receive"]
    assert mapped.status == "ok" and mapped.data["verified"] and mapped.data["bytes_mapped"] > 0
    for cid, engine in (("selftest.udp_ifb", "msg_zerocopy"), ("selftest.send_zc_ifb", "io_uring")):
        ifb = checks[cid]
        if NETNS_SKIP or (engine == "io_uring" and unavailable_reason() is not None):
            assert ifb.status == "skipped"
            continue
        assert ifb.status == "ok", ifb.evidence
        assert ifb.data["engine"] == engine
        assert ifb.data["bytes_copied"] == 0 and ifb.data["bytes_at_sink"] >= ifb.data["bytes"]
    assert not [n for n in _netns_names() if n.startswith("zcdoctor")]  # deleted again


# -- offloads and header split against the ethtool program ----------------------------------------

ETHTOOL = next((p for p in ("/usr/sbin/ethtool", "/sbin/ethtool") if Path(p).exists()), None)
needs_ethtool = pytest.mark.skipif(
    ETHTOOL is None, reason="the ethtool program is not installed (scripts/ensure-system-deps.sh)")


def _ethtool(*args: str, netns: Netns | None = None) -> subprocess.CompletedProcess[str]:
    assert ETHTOOL is not None
    argv = [ETHTOOL, *args]
    if netns is not None:
        argv = netns.exec_argv(argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _ethtool_features(name: str, netns: Netns | None = None) -> dict[str, bool]:
    """scatter-gather, TSO (``tx-tcp-segmentation``) and GSO as ``ethtool -k`` shows them."""
    out = _ethtool("-k", name, netns=netns)
    assert out.returncode == 0, out.stderr
    lines = {k.strip(): v.split()[0] for k, _, v in
             (ln.partition(":") for ln in out.stdout.splitlines()[1:]) if v.strip()}
    return {"scatter_gather": lines["scatter-gather"] == "on",
            "tso": lines["tx-tcp-segmentation"] == "on",
            "gso": lines["generic-segmentation-offload"] == "on"}


def _ethtool_split(name: str) -> str:
    """TCP data split as ``ethtool -g`` shows it, in the doctor's words: ethtool's "n/a" for a
    driver that does not report it is the doctor's "unknown"; no ring parameters at all is
    "n/a"."""
    out = _ethtool("-g", name)
    if out.returncode != 0:
        assert "Operation not supported" in out.stderr, out.stderr
        return "n/a"
    m = re.search(r"^TCP data split:\s*(\S+)", out.stdout, re.MULTILINE)
    assert m, out.stdout
    return {"n/a": "unknown"}.get(m.group(1), m.group(1))


@needs_ethtool
def test_host_interfaces_match_ethtool() -> None:
    doc = json.loads(_zcnet("doctor", "--json", "--no-selftest").stdout)
    assert doc["interfaces"]
    for i in doc["interfaces"]:
        name = i["name"]
        assert {k: i[k] for k in ("scatter_gather", "tso", "gso")} == _ethtool_features(name)
        assert i["header_split"] == _ethtool_split(name), name
        info = _ethtool("-i", name)
        if info.returncode == 0:
            assert f"driver: {i['driver']}" in info.stdout


@needs_ethtool
@needs_netns
def test_scatter_gather_off_is_seen_and_fixed() -> None:
    """A veth end with scatter-gather turned off by ethtool: the doctor reads it off (as ethtool
    does), says TCP would copy, and proposes the ethtool command that turns it back on."""
    with Netns(lo_mtu=None) as ns:
        made = subprocess.run(["ip", "-n", ns.name, "link", "add", "zveth0", "type", "veth",
                               "peer", "name", "zveth1"], capture_output=True, text=True,
                              check=False)
        if made.returncode != 0:
            pytest.skip(f"no veth interfaces: {made.stderr.strip()}")
        before = json.loads(_zcnet("doctor", "--json", "--no-selftest", "--interface", "zveth0",
                                   netns=ns).stdout)
        truth_before = _ethtool_features("zveth0", ns)
        assert _ethtool("-K", "zveth0", "sg", "off", netns=ns).returncode == 0
        after = json.loads(_zcnet("doctor", "--json", "--no-selftest", "--interface", "zveth0",
                                  netns=ns).stdout)
        truth_after = _ethtool_features("zveth0", ns)
    for doc, truth in ((before, truth_before), (after, truth_after)):
        (iface,) = doc["interfaces"]
        assert {k: iface[k] for k in truth} == truth
    assert truth_before["scatter_gather"] and not truth_after["scatter_gather"]
    assert _check(before, "interface.zveth0.transmit")["status"] == "ok"
    tx = _check(after, "interface.zveth0.transmit")
    assert tx["status"] == "no" and tx["fix"] == "ethtool -K zveth0 sg on"
