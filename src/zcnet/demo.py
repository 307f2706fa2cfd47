"""``zcnet demo``: move data both ways over TCP and report what went zero-copy.

Theory of operation: two connections, one per direction, run at once and carry an offset-dependent
pattern; each sends with a :class:`~zcnet.sender.Sender` and receives with a
:class:`~zcnet.receiver.Receiver`, and every received byte is checked. Inside a private network
namespace whose loopback MTU makes the MSS a whole number of pages (root only), with the sender
forced to ``MSG_ZEROCOPY``, received pages are mappable; without the namespace the listener's
``TCP_MAXSEG`` is lowered instead (see docs/ARCHITECTURE.md, 'Receive: loopback'). Over loopback the
kernel always copies transmitted data (frags are orphaned), so the sender reports those bytes as
copied by the kernel.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from zcnet._accel import implementation
from zcnet._core.pattern import StreamPattern
from zcnet.netns import Netns, netns_unavailable_reason
from zcnet.receiver import Receiver, ReceiverStats
from zcnet.sender import Sender, SenderStats, SendPolicy

__all__ = ["DemoResult", "print_demo", "run_demo"]

_BLOCK = 256 * 1024
_PATTERN = StreamPattern(max_block=4 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one direction of the demo moved."""

    direction: str
    nbytes: int
    verified: bool
    sender: SenderStats
    receiver: ReceiverStats


@contextlib.contextmanager
def _place() -> Iterator[tuple[str, Netns | None]]:
    """Where to run: a page-MSS namespace when we may create one, else plain loopback."""
    if netns_unavailable_reason() is None:
        with Netns() as ns:
            yield "namespace with lo MTU 61512 (MSS 61440)", ns
    else:
        yield "plain loopback (no namespace: " + str(netns_unavailable_reason()) + ")", None


def _pair(ns: Netns | None) -> tuple[socket.socket, socket.socket]:
    ctx = ns.entered() if ns is not None else contextlib.nullcontext()
    with ctx:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        with listener:
            if ns is None:  # receiver-side recipe: MSS 4096 (+12 bytes of timestamp option)
                listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 4108)
            listener.bind(("::1", 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname()[:2])
            server, _ = listener.accept()
    return client, server


def _pump(tx: Sender, total: int) -> None:
    sent = 0
    while sent < total:
        n = min(_BLOCK, total - sent)
        tx.send(_PATTERN.block(sent, n))
        sent += n
    tx.flush(timeout=30)


def _drain(rx: Receiver, total: int) -> bool:
    got = 0
    ok = True
    while got < total:
        with rx.recv(min(4 * 1024 * 1024, total - got), timeout=30) as chunk:
            n = len(chunk)
            if n == 0:
                return False
            ok = ok and _PATTERN.matches(got, chunk.view)
            got += n
    return ok


def _one_way(name: str, ns: Netns | None, nbytes: int) -> DemoResult:
    client, server = _pair(ns)
    with Sender(client, SendPolicy(force_zerocopy=True)) as tx, Receiver(server) as rx:
        pump = threading.Thread(target=_pump, args=(tx, nbytes), name=f"demo-send-{name}")
        pump.start()
        verified = _drain(rx, nbytes)
        pump.join()
        return DemoResult(name, nbytes, verified, tx.stats, rx.stats)


def run_demo(nbytes: int = 64 * 1024 * 1024) -> tuple[str, list[DemoResult]]:
    """Send ``nbytes`` each way (one connection per direction, both at once).

    Returns where it ran and the per-direction results.
    """
    with _place() as (where, ns):
        results: list[DemoResult] = []
        back = threading.Thread(target=lambda: results.append(_one_way("b->a", ns, nbytes)))
        back.start()
        forth = _one_way("a->b", ns, nbytes)
        back.join()
    return where, [forth, *results]


def print_demo(nbytes: int) -> int:
    """Run the demo and print a plain-text report; exit status 0 when every byte verified."""
    where, results = run_demo(nbytes)
    mib = 1024 * 1024
    print(f"zcnet demo: {nbytes // mib} MiB each way over TCP, {where}")
    impl = implementation()
    print(f"  implementation: {impl.name} ({impl.reason})")
    for r in results:
        s, q = r.sender, r.receiver
        print(f"  {r.direction}: verified={'yes' if r.verified else 'NO'}")
        print(f"    send: {s.bytes_zerocopy / mib:7.1f} MiB zero-copy, "
              f"{s.bytes_copied / mib:.1f} MiB sent with MSG_ZEROCOPY but copied by the kernel, "
              f"{s.bytes_plain / mib:.1f} MiB plain copies; mode={s.mode}"
              + (f" ({s.fallback_reason})" if s.fallback_reason else ""))
        print(f"    recv: {q.bytes_mapped / mib:7.1f} MiB mapped, {q.bytes_copied / mib:.1f} MiB "
              f"copied; mode={q.mode}" + (f" ({q.fallback_reason})" if q.fallback_reason else ""))
    print("  (over loopback the kernel copies every transmitted byte: only the receive side can be"
          " zero-copy here; `zcnet bench stream` measures transmit toward an ifb sink)")
    return 0 if all(r.verified for r in results) else 1
