"""The ``rx`` experiment: tcp_mmap style bulk receive, copy vs asyncio vs zero-copy receive.

Theory of operation: reproduces tools/testing/selftests/net/tcp_mmap.c: one bulk TCP stream, and
the receiver's CPU seconds per GB, throughput and fraction of bytes mapped, for ``recv_into``
into a preallocated buffer, asyncio streams (``readexactly`` / ``read``) and zcnet's
``Receiver`` (TCP_ZEROCOPY_RECEIVE). Pages are mappable only when each segment's payload is a
whole number of pages and the sender used MSG_ZEROCOPY (docs/ARCHITECTURE.md, 'Receive: mappable
pages'): in our namespace the IPv6 MSS is 61440 (lo MTU 61512); on plain loopback (no root) the
listener sets ``TCP_MAXSEG`` 4108
(MSS 4096). The sender is the same for every receive mode: zcnet's ``Sender`` forced to
zero-copy (or ``sendall`` if it is missing, and then nothing is mapped). Like tcp_mmap's
SO_RCVLOWAT hint, receivers wait for ``rcvlowat`` bytes (512 KB) per call when they can:
``RecvPolicy(rcvlowat=...)`` for zcnet, ``MSG_WAITALL`` for ``recv_into``; asyncio streams
cannot (poll readiness would wait past the end of the stream). Modes alternate between
repetitions; verification as in the stream experiment.

The fallback configurations (issue 3): ``send_mode="sendall"`` (a plain copying sender: the
receiver gets compound page frags) or ``lo_mtu=None`` (the default MTU 65536, MSS 65464) make
pages unmappable; zcnet's receiver must then notice within its probe calls, switch to
``recv_into`` and say why (``rx_mode``/``fallback_reason``, and after how many calls it switched),
and cost about what ``recv_into`` costs. The summary entry of ``zcnet`` carries that mode and
reason, and the notes say it in words.

``c-recv`` and ``c-zerocopy`` are the C reference receivers (:mod:`zcnet.bench.cref`): ``recv``
into one buffer and tcp_mmap's TCP_ZEROCOPY_RECEIVE loop, in the same repetitions; every other
mode's summary entry names its C reference (``c-zerocopy`` for a zcnet mode that mapped most
bytes, ``c-recv`` otherwise) and gives ``receiver_cpu_vs_c_pct``. With ``profile`` one more
repetition per mode runs under perf (:mod:`zcnet.bench.profile`). The plan and the loop are
:mod:`zcnet.bench.driver`'s; this module is the workload (:class:`_RxWorkload`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from zcnet.bench import cref
from zcnet.bench.common import Progress, experiment_result, gbit_per_s, group_summary, s_per_gb
from zcnet.bench.driver import (
    Config,
    Item,
    drive,
    first_unavailable,
    plan_runs,
    profile_plan,
    verified,
)
from zcnet.bench.env import environment
from zcnet.bench.modes import C_RECEIVE_MODES, RECEIVE_MODES, split_loop
from zcnet.bench.peers import client_worker, server_worker
from zcnet.bench.results import Experiment, RxRun
from zcnet.bench.workers import Worker, spawn
from zcnet.netns import LO_MTU_IPV6_MSS_61440

__all__ = ["RxParams", "plan_count", "run_rx"]

KiB = 1024
# MSS 4096 with the 12-byte timestamp option (docs/ARCHITECTURE.md, 'Receive: loopback')
MSS_4K_LISTENER = 4096 + 12
# The listener's SO_RCVBUF (inherited by accepted sockets), as tcp_mmap's -r: with the default,
# autotuned buffer the sender sizes its segments to half the receive window (52736 bytes here,
# tcp_bound_to_half_wnd), which is not a page multiple, and zcnet's receiver then rightly copies.
RX_RCVBUF = 4 * 1024 * 1024
METRICS = ("receiver_cpu_s_per_gb", "throughput_gbit_s", "mapped_pct", "sender_cpu_s_per_gb")


@dataclass
class RxParams:
    """Parameters of the rx experiment."""

    nbytes: int = 512 * 1024 * 1024
    warmup: int = 32 * 1024 * 1024
    reps: int = 3
    recv_modes: tuple[str, ...] = RECEIVE_MODES
    send_mode: str = "zcnet-forced"
    msg_size: int = 256 * KiB
    recv_size: int = 512 * KiB
    source_bytes: int = 256 * 1024 * 1024
    rcvlowat: int = 512 * KiB
    verify: str = "sample"
    use_netns: bool = True
    lo_mtu: int | None = LO_MTU_IPV6_MSS_61440
    profile: bool = False

    def modes(self, c_ok: bool) -> tuple[str, ...]:
        """The receive modes that run (the C ones only with ``c_ok``)."""
        return self.recv_modes if c_ok else tuple(
            m for m in self.recv_modes if m not in C_RECEIVE_MODES)


def _listener_mss(p: RxParams, in_netns: bool) -> int | None:
    """TCP_MAXSEG for the listener: only outside a namespace, and not with ``lo_mtu=None``."""
    return None if in_netns or p.lo_mtu is None else MSS_4K_LISTENER


def _c_build(p: RxParams) -> cref.CBuild | None:
    """The compiled C receivers (``None`` when no C mode was asked for)."""
    return cref.build() if any(m in C_RECEIVE_MODES for m in p.recv_modes) else None


def _configs(modes: tuple[str, ...]) -> list[Config]:
    return [{"recv_mode": m} for m in modes]


def _plan(p: RxParams, c_ok: bool) -> tuple[list[Item], str | None]:
    """Every repetition, and why there is no profile (``None``: perf records, or not asked)."""
    configs = _configs(p.modes(c_ok))
    profiled, why = profile_plan(p.profile, configs)
    return plan_runs([[configs]], reps=p.reps, verify=p.verify, profile=profiled), why


def plan_count(p: RxParams) -> int:
    """How many runs :func:`run_rx` makes."""
    built = _c_build(p)
    return len(_plan(p, built is not None and built.available)[0])


def _record(item: Item, p: RxParams, send_mode: str, res: dict[str, Any]) -> RxRun:
    """The run record of one repetition from the peers' answers."""
    sender, receiver = res.get("sender"), res.get("receiver")
    ok = bool(sender and sender.get("ok") and receiver and receiver.get("ok"))
    metrics: dict[str, float | None] = {m: None for m in METRICS}
    if ok and sender is not None and receiver is not None:
        nbytes = int(receiver["bytes"])
        metrics["receiver_cpu_s_per_gb"] = s_per_gb(receiver["cpu"], nbytes)
        metrics["sender_cpu_s_per_gb"] = s_per_gb(sender["cpu"], int(sender["bytes"]))
        metrics["throughput_gbit_s"] = gbit_per_s(nbytes, receiver["wall"])
        mapped = receiver.get("bytes_mapped")
        metrics["mapped_pct"] = 100.0 * mapped / nbytes if mapped is not None and nbytes else (
            0.0 if nbytes else None)
    return {"recv_mode": item["recv_mode"], "rep": item["rep"], "role": item["role"],
            "send_mode": send_mode, "loop": split_loop(item["recv_mode"])[1],
            "msg_size": p.msg_size, "verified": verified(p.verify, item["role"]), "ok": ok,
            "error": None if ok else str(res.get("error") or (receiver or {}).get("error")
                                         or (sender or {}).get("error") or "failed"),
            # the receive mode's reason; a sender that cannot run is handled by the workload
            "unavailable": None if ok else first_unavailable(receiver),
            "sender": sender, "receiver": receiver, "metrics": metrics}


class _RxWorkload:
    """One rx repetition: the client worker sends, the server worker receives in the mode."""

    mode_kind = "receive"

    def __init__(self, p: RxParams, client: Worker, server: Worker, addr: tuple[Any, ...],
                 notes: list[str]) -> None:
        self.p, self.client, self.server, self.addr, self.notes = p, client, server, addr, notes
        self.send_mode = p.send_mode

    def mode(self, item: Mapping[str, Any]) -> str:
        return str(item["recv_mode"])

    def label(self, item: Item) -> str:
        return f"rx {item['recv_mode']}"

    def run(self, item: Item) -> RxRun:
        p = self.p
        cmd = {"kind": "tcp", "addr": self.addr, "msg_size": p.msg_size,
               "send_mode": self.send_mode, "recv_mode": item["recv_mode"],
               "recv_size": p.recv_size, "warmup": p.warmup, "bytes": p.nbytes,
               "source_bytes": p.source_bytes, "rcvlowat": p.rcvlowat,
               "verify": verified(p.verify, item["role"])}
        res = self.client.call(cmd)
        why = first_unavailable(res, res.get("sender"))
        if why is not None and self.send_mode != "sendall":
            # the sender mode cannot run here: every receive mode gets plain copies instead
            self.notes.append(f"sender {self.send_mode} unavailable ({why}); using sendall, "
                              "so no page can be mapped")
            self.send_mode = cmd["send_mode"] = "sendall"
            res = self.client.call(cmd)
        return _record(item, p, self.send_mode, res)

    def profile_pids(self, item: Item) -> dict[str, int]:
        pids = {"receiver": self.server.process.pid, "sender": self.client.process.pid}
        return {k: v for k, v in pids.items() if v is not None}


def run_rx(p: RxParams, progress: Progress) -> Experiment:
    """Run the rx experiment; the JSON-ready result (see docs/bench.md)."""
    built = _c_build(p)
    c_ok = built is not None and built.available
    items, perf_reason = _plan(p, c_ok)
    with environment(use_netns=p.use_netns, lo_mtu=p.lo_mtu) as env:
        notes = list(env.notes)
        mss = _listener_mss(p, env.ns_name is not None)
        if mss is not None:
            notes.append(f"listener TCP_MAXSEG {mss} (MSS 4096) so loopback pages are mappable")
        elif env.ns_name is None:
            notes.append("listener keeps the loopback's default MSS (--lo-mtu default): "
                         "pages are not mappable")
        if p.send_mode == "sendall":
            notes.append("sender sendall (plain copies): the receiver gets compound page "
                         "frags, which cannot be mapped")
        with spawn(client_worker, env.ns_name) as client:
            server = spawn(server_worker, env.ns_name, env.host, mss, RX_RCVBUF)
            try:
                addr = tuple(server.recv(60))
                out = drive(items, _RxWorkload(p, client, server, addr, notes), progress)
            finally:
                server.stop(0.2, graceful=False)
        runs = out.runs
        notes += out.notes()
        summary = group_summary(runs, ("recv_mode",), METRICS)
        no_c = {} if built is None or c_ok else {m: str(built.reason) for m in C_RECEIVE_MODES}
        summary += out.unavailable_rows(_configs(p.recv_modes), summary, ("recv_mode",), no_c)
        if no_c:
            notes.append(f"C reference receivers unavailable: {built.reason if built else ''}")
        _relative_to_recv_into(summary)
        _describe_zcnet(summary, runs, notes)
        if built is not None:
            _c_ratios(summary)
        if p.profile and perf_reason is not None:
            notes.append(f"--profile: no profile: {perf_reason}")
        result = experiment_result("rx", status=out.status(), environment=env.describe(),
                                   parameters=asdict(p), runs=runs, summary=summary,
                                   notes=notes)
        result["c_reference"] = None if built is None else built.describe()
        result["profiles"] = out.profiles
        result["profile_unavailable"] = perf_reason
        return result


def c_reference_for(entry: dict[str, Any]) -> str | None:
    """The C receiver a summary entry is compared with: ``c-zerocopy`` for a zcnet mode that
    mapped at least half the bytes (median), ``c-recv`` for everything else (copies)."""
    mode = str(entry["recv_mode"])
    if mode in C_RECEIVE_MODES:
        return None
    mapped = entry["metrics"].get("mapped_pct")
    if split_loop(mode)[0] in ("zcnet", "zcnet-aio") and mapped and mapped["median"] >= 50:
        return "c-zerocopy"
    return "c-recv"


def _c_ratios(summary: list[dict[str, Any]]) -> None:
    """``c_reference`` and ``receiver_cpu_vs_c_pct`` (100 * median / the C row's median)."""
    def median(entry: dict[str, Any] | None) -> float | None:
        m = None if entry is None else entry["metrics"].get("receiver_cpu_s_per_gb")
        return None if m is None else float(m["median"])

    by_mode = {e["recv_mode"]: e for e in summary}
    for entry in summary:
        ref = c_reference_for(entry)
        entry["c_reference"] = ref
        base = median(by_mode.get(ref)) if ref is not None else None
        value = median(entry)
        entry["receiver_cpu_vs_c_pct"] = (
            None if value is None or not base else round(100.0 * value / base, 1))


def _relative_to_recv_into(summary: list[dict[str, Any]]) -> None:
    """``receiver_cpu_vs_recv_into_pct``: 100 * median CPU/GB over recv_into's (None without)."""
    def median(entry: dict[str, Any]) -> float | None:
        m = entry["metrics"].get("receiver_cpu_s_per_gb")
        return None if m is None else float(m["median"])

    base = next((median(e) for e in summary if e["recv_mode"] == "recv_into"), None)
    for entry in summary:
        value = median(entry)
        entry["receiver_cpu_vs_recv_into_pct"] = (
            None if value is None or not base else round(100.0 * value / base, 1))


def _describe_zcnet(summary: list[dict[str, Any]], runs: list[dict[str, Any]],
                    notes: list[str]) -> None:
    """Add the zcnet receiver's mode and fallback reason to its summary entry and the notes."""
    for entry in summary:
        mode = entry["recv_mode"]
        members = [r for r in runs if r["recv_mode"] == mode and r["role"] == "timed"
                   and r["ok"] and r["receiver"] and "rx_mode" in r["receiver"]]
        if not members:
            continue
        rx_modes = sorted({str(r["receiver"]["rx_mode"]) for r in members})
        reasons = sorted({str(r["receiver"]["fallback_reason"]) for r in members
                          if r["receiver"].get("fallback_reason")})
        calls = sorted({int(r["receiver"]["switched_after_calls"]) for r in members
                        if r["receiver"].get("switched_after_calls") is not None})
        entry["rx_mode"] = rx_modes[0] if len(rx_modes) == 1 else "/".join(rx_modes)
        # reasons quote byte counts, so they differ between runs: keep the first one
        entry["fallback_reason"] = reasons[0] if reasons else None
        entry["switched_after_calls"] = calls[-1] if calls else None
        if mode in C_RECEIVE_MODES:  # the C loops never switch: nothing to say
            continue
        if reasons:
            when = (f" after {calls[0]}" + (f"-{calls[-1]}" if len(calls) > 1 else "")
                    + " recv calls") if calls else ""
            switched = sum(1 for r in members if r["receiver"].get("fallback_reason"))
            notes.append(f"{mode} receiver switched to {entry['rx_mode']}{when} in "
                         f"{switched} of {len(members)} timed runs: {reasons[0]}")
        else:
            notes.append(f"{mode} receiver stayed in mode {entry['rx_mode']}")
