"""The doctor's live self-test: a few MiB moved with zcnet itself, every byte checked.

Theory of operation: five parts, each skipped with its reason when it cannot run here, each a
:class:`~zcnet.doctor.verdict.Check` of section ``selftest``:

* ``msg_zerocopy_loopback``: a :class:`~zcnet.sender.Sender` forced to ``MSG_ZEROCOPY`` sends a
  pattern over loopback TCP, a plain socket receives and checks it. Completions must arrive and
  say "copied": the kernel copies zero-copy frags of locally delivered packets
  (net/core/skbuff.c ``skb_orphan_frags_rx``), so that is the expected, healthy result here.
* ``send_zc_loopback``: the same with the io_uring engine (``IORING_OP_SEND_ZC``), skipped with
  the reason where io_uring cannot be used.
* ``mapped_receive``: a :class:`~zcnet.receiver.Receiver` on a connection accepted from
  :func:`~zcnet.receiver.make_mappable_listener` (``TCP_MAXSEG`` 4108: one page of payload per
  segment, no root needed), fed by a ``MSG_ZEROCOPY`` sender; reports the share of bytes mapped.
* ``udp_ifb`` and ``send_zc_ifb`` (root only): in a network namespace that it creates and
  deletes, UDP GSO datagrams toward an ``ifb`` sink, which frees packets without copying them,
  from a ``MSG_ZEROCOPY`` and an io_uring Sender: completions must say "not copied", real
  transmit zero-copy. The sink drops the bytes, so they are checked as counted by
  the sink (``ip -s link``), not by content.
"""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any, Final, Literal

from zcnet._core.pattern import StreamPattern
from zcnet.doctor.verdict import Check, Status
from zcnet.errors import NetnsUnavailable, ZerocopyUnavailable
from zcnet.lowlevel.constants import SOL_UDP, UDP_SEGMENT
from zcnet.netns import IFB_SINK_ADDR, Netns, netns_unavailable_reason
from zcnet.receiver import Receiver, make_mappable_listener
from zcnet.sender import Sender, SendPolicy

__all__ = ["run_selftest"]

_BLOCK = 256 * 1024
_TCP_BYTES = 4 * 1024 * 1024
_GSO_SIZE = 1472  # 1500 - IPv4 - UDP headers
_DATAGRAM = 44 * _GSO_SIZE
_DATAGRAMS = 64
_TIMEOUT = 20.0
_PATTERN = StreamPattern(max_block=_BLOCK)


def _loopback_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    with listener:
        # connect() to the numeric address, not create_connection(): getaddrinfo would load
        # the idna codec, a file a process that dropped its privileges may not read
        client = socket.socket(listener.family, socket.SOCK_STREAM)
        try:
            client.settimeout(_TIMEOUT)
            client.connect(listener.getsockname()[:2])
            client.settimeout(None)
            server, _ = listener.accept()
        except BaseException:
            client.close()
            raise
    return client, server


def _pump(sender: Sender, total: int, errors: list[BaseException]) -> None:
    try:
        sent = 0
        while sent < total:
            n = min(_BLOCK, total - sent)
            sender.send(_PATTERN.block(sent, n))
            sent += n
        sender.flush(timeout=_TIMEOUT)
    except BaseException as e:  # reported by the caller
        errors.append(e)


def _tcp_loopback(engine: Literal["msg_zerocopy", "io_uring"]) -> Check:
    """4 MiB over loopback TCP from a Sender on ``engine``, received with plain ``recv``."""
    uring = engine == "io_uring"
    cid = "selftest.send_zc_loopback" if uring else "selftest.msg_zerocopy_loopback"
    subject = "io_uring SEND_ZC over loopback" if uring else "MSG_ZEROCOPY over loopback"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client, server = _loopback_pair(listener)
    try:
        sender = Sender(client, SendPolicy(engine=engine, force_zerocopy=True))
    except ZerocopyUnavailable as e:
        client.close()
        server.close()
        return Check(cid, "selftest", subject, "skipped", f"io_uring unavailable: {e}",
                     "see kernel.io_uring above")
    errors: list[BaseException] = []
    with server, sender:
        pump = threading.Thread(target=_pump, args=(sender, _TCP_BYTES, errors),
                                name="zcnet-doctor-send")
        pump.start()
        got, ok = 0, True
        server.settimeout(_TIMEOUT)
        while got < _TCP_BYTES:
            received = server.recv(_BLOCK)
            if not received:
                break
            ok = ok and _PATTERN.matches(got, received)
            got += len(received)
        pump.join()
        st = sender.stats
    data: dict[str, Any] = {
        "bytes": got, "verified": ok and got == _TCP_BYTES, "engine": st.engine,
        "sends_zerocopy": st.sends_zerocopy, "completions": st.completions,
        "bytes_copied": st.bytes_copied, "bytes_zerocopy": st.bytes_zerocopy,
        "bytes_plain": st.bytes_plain, "enobufs": st.enobufs,
        "mode": st.mode, "fallback_reason": st.fallback_reason}
    if errors:
        return Check(cid, "selftest", subject, "no", f"the send failed: {errors[0]}", None, data)
    if not data["verified"]:
        return Check(cid, "selftest", subject, "no",
                     f"received bytes did not match ({got} of {_TCP_BYTES})", None, data)
    if st.completions == 0:
        budget = "the pinned-page charge against RLIMIT_MEMLOCK" if uring else (
            "the notification budget (optmem_max) or the pinned-page charge against "
            "RLIMIT_MEMLOCK")
        why = (f"the kernel refused every zero-copy send with ENOBUFS ({st.enobufs} times) and "
               f"all {st.bytes_plain} bytes were copied: {budget} ran out"
               if st.enobufs else st.fallback_reason or "no reason given")
        return Check(cid, "selftest", subject, "no",
                     f"{got} bytes verified, but no zero-copy send completed: {why}",
                     "raise RLIMIT_MEMLOCK" + ("" if uring else " or net.core.optmem_max")
                     + " (see the limits above)", data)
    return Check(cid, "selftest", subject, "ok",
                 f"{got} bytes verified; {st.sends_zerocopy} zero-copy sends, {st.completions} "
                 f"completed, {st.bytes_copied} bytes marked copied (expected over loopback: "
                 "local delivery copies)", None, data)


def _mapped_receive() -> Check:
    client, server = _loopback_pair(make_mappable_listener("127.0.0.1"))
    errors: list[BaseException] = []
    subject = "mapped receive (TCP_MAXSEG 4108 listener)"
    with Sender(client, SendPolicy(force_zerocopy=True)) as sender, Receiver(server) as rx:
        pump = threading.Thread(target=_pump, args=(sender, _TCP_BYTES, errors),
                                name="zcnet-doctor-send")
        pump.start()
        got, ok = 0, True
        while got < _TCP_BYTES:
            with rx.recv(_TCP_BYTES - got, timeout=_TIMEOUT) as chunk:
                if len(chunk) == 0:
                    break
                ok = ok and _PATTERN.matches(got, chunk.view)
                got += len(chunk)
        pump.join()
        st = rx.stats
    pct = round(100 * st.bytes_mapped / got, 1) if got else 0.0
    data = {"bytes": got, "verified": ok and got == _TCP_BYTES, "bytes_mapped": st.bytes_mapped,
            "bytes_copied": st.bytes_copied, "mapped_percent": pct, "mode": st.mode,
            "fallback_reason": st.fallback_reason}
    if errors or not data["verified"]:
        why = f"the send failed: {errors[0]}" if errors else (
            f"received bytes did not match ({got} of {_TCP_BYTES})")
        return Check("selftest.mapped_receive", "selftest", subject, "no", why, None, data)
    status: Status = "ok" if pct >= 50 else "warn"
    return Check("selftest.mapped_receive", "selftest", subject, status,
                 f"{got} bytes verified, {pct} % mapped"
                 + (f"; {st.fallback_reason}" if st.fallback_reason else ""), None, data)


def _ifb_rx_bytes(ns: Netns) -> int:
    out = subprocess.run(["ip", "-n", ns.name, "-s", "-j", "link", "show", "ifb0"],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


_IFB: Final = {"msg_zerocopy": ("selftest.udp_ifb", "UDP toward an ifb sink (namespace)"),
               "io_uring": ("selftest.send_zc_ifb", "io_uring SEND_ZC toward an ifb sink")}


def _ifb_round(ns: Netns, engine: Literal["msg_zerocopy", "io_uring"]) -> Check:
    """UDP GSO datagrams from a Sender on ``engine`` toward the sink of ``ns``."""
    cid, subject = _IFB[engine]
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((IFB_SINK_ADDR, 9000))
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, _GSO_SIZE)
        sender = Sender(sock, SendPolicy(engine=engine))
    except ZerocopyUnavailable as e:
        sock.close()
        return Check(cid, "selftest", subject, "skipped", f"io_uring unavailable: {e}",
                     "see kernel.io_uring above")
    except BaseException:
        sock.close()
        raise
    before = _ifb_rx_bytes(ns)
    buffers = [_PATTERN.block(i * _DATAGRAM, _DATAGRAM) for i in range(4)]
    with sender:
        tickets = [sender.send(buffers[i % 4]) for i in range(_DATAGRAMS)]
        sender.flush(timeout=_TIMEOUT)
        st = sender.stats
    sunk = _ifb_rx_bytes(ns) - before
    total = _DATAGRAMS * _DATAGRAM
    uncopied = all(t.done and t.zerocopy and t.copied is False for t in tickets)
    data = {"bytes": total, "bytes_at_sink": sunk, "verified": sunk >= total,
            "engine": st.engine, "bytes_zerocopy": st.bytes_zerocopy,
            "bytes_copied": st.bytes_copied, "completions": st.completions, "mode": st.mode,
            "fallback_reason": st.fallback_reason}
    if not data["verified"]:
        return Check(cid, "selftest", subject, "no",
                     f"the sink counted {sunk} of {total} bytes", None, data)
    if uncopied and st.bytes_zerocopy == total:
        return Check(cid, "selftest", subject, "ok",
                     f"{total} bytes reached the sink; all {st.completions} completions "
                     "not copied: real transmit zero-copy", None, data)
    return Check(cid, "selftest", subject, "warn",
                 f"{total} bytes reached the sink, {st.bytes_copied} marked copied, "
                 f"{st.bytes_zerocopy} zero-copy; {st.fallback_reason or ''}", None, data)


def _ifb_parts() -> list[Check]:
    """Both engines toward an ifb sink, in one namespace created and deleted here."""
    reason = netns_unavailable_reason()
    why = f"needs root and namespaces: {reason}" if reason is not None else None
    ns = None
    if why is None:
        try:
            ns = Netns(lo_mtu=None, ifb_sink=True, name_prefix="zcdoctor").create()
        except NetnsUnavailable as e:
            why = f"cannot set up the namespace: {e}"
    if ns is None:
        return [Check(cid, "selftest", subject, "skipped", why or "",
                      "run `zcnet doctor` as root to see real transmit zero-copy")
                for cid, subject in _IFB.values()]
    engines: tuple[Literal["msg_zerocopy", "io_uring"], ...] = ("msg_zerocopy", "io_uring")
    try:
        return [_guarded(*_IFB[engine], functools.partial(_ifb_round, ns, engine))
                for engine in engines]
    finally:
        ns.delete()


def _guarded(cid: str, subject: str, part: Callable[[], Check]) -> Check:
    """``part()``; a failure of any kind is that part's finding ("no"), never the doctor's end."""
    try:
        return part()
    except Exception as e:
        return Check(cid, "selftest", subject, "no", f"{type(e).__name__}: {e}")


def run_selftest(*, root_parts: bool = True) -> list[Check]:
    """Run the self-test; ``root_parts=False`` skips the namespace part even as root."""
    out = [_guarded("selftest.msg_zerocopy_loopback", "MSG_ZEROCOPY over loopback",
                    lambda: _tcp_loopback("msg_zerocopy")),
           _guarded("selftest.send_zc_loopback", "io_uring SEND_ZC over loopback",
                    lambda: _tcp_loopback("io_uring")),
           _guarded("selftest.mapped_receive", "mapped receive (TCP_MAXSEG 4108 listener)",
                    _mapped_receive)]
    if root_parts:
        out += _ifb_parts()
    else:
        out += [Check(cid, "selftest", subject, "skipped", "not asked for (--no-namespace)")
                for cid, subject in _IFB.values()]
    return out
