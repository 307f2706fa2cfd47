"""Where a benchmark runs: a fresh namespace of its own, or plain loopback when it cannot.

Theory of operation: with root, each experiment gets a :class:`zcnet.netns.Netns` whose ``lo``
has MTU 61512 (IPv6 MSS 61440 = 15 pages, so received pages are mappable, docs/ARCHITECTURE.md,
'Receive: loopback'; tcp_mmap.c) and, when asked, an ``ifb`` sink that drops datagrams without
copying them (the only place on a host without a NIC where transmit zero-copy completes uncopied).
The
namespace is deleted when the experiment ends, even on error. Without root the experiment runs
on the host's loopback (IPv4), and the environment says what that changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from zcnet.bench.results import Environment as EnvironmentJSON
from zcnet.netns import IFB_SINK_ADDR, LO_MTU_IPV6_MSS_61440, Netns, netns_unavailable_reason

__all__ = ["DEFAULT_LO_MTU", "Environment", "environment"]

#: The loopback MTU of a fresh namespace.
DEFAULT_LO_MTU = 65536


@dataclass
class Environment:
    """Where the peers run and what the network looks like."""

    ns_name: str | None
    host: str
    lo_mtu: int | None
    ifb_sink: str | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> EnvironmentJSON:
        """The JSON form."""
        return {"netns": self.ns_name is not None, "host": self.host, "lo_mtu": self.lo_mtu,
                "ifb_sink": self.ifb_sink, "notes": list(self.notes)}


@contextlib.contextmanager
def environment(*, ifb: bool = False, use_netns: bool = True,
                lo_mtu: int | None = LO_MTU_IPV6_MSS_61440) -> Iterator[Environment]:
    """A namespace with lo MTU ``lo_mtu`` (and an ifb sink if ``ifb``), or plain loopback.

    ``lo_mtu=None`` keeps the namespace's default loopback MTU (65536: MSS 65464, not a page
    multiple, so received pages cannot be mapped).
    """
    reason = netns_unavailable_reason() if use_netns else "namespaces disabled (--no-netns)"
    if reason is not None:
        yield Environment(None, "127.0.0.1", None, None,
                          [f"plain loopback: {reason}; default lo MTU"])
        return
    with Netns(lo_mtu=lo_mtu, ifb_sink=ifb, name_prefix="zcbench") as ns:
        notes = [] if lo_mtu is not None else [
            f"lo MTU {DEFAULT_LO_MTU} (the default): IPv6 MSS 65464 is not a page multiple"]
        yield Environment(ns.name, "::1", DEFAULT_LO_MTU if lo_mtu is None else lo_mtu,
                          IFB_SINK_ADDR if ifb else None, notes)
