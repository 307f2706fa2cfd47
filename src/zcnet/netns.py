"""Isolated network namespaces for tests and benchmarks.

Theory of operation: a :class:`Netns` is created with iproute2 (``ip netns add``), gets its own
loopback (whose MTU can be set so the TCP MSS is a whole number of pages, the recipe that makes
loopback receive pages mappable, see docs/ARCHITECTURE.md, 'Receive: loopback'), optionally an
``ifb`` sink (a device that drops whatever is routed to it without copying, so transmit zero-copy
completes uncopied) and a
veth pair to a second namespace. Code runs inside it either as a subprocess (``ip netns exec``) or
in-process: :meth:`Netns.entered` switches the *calling thread* into the namespace with
``setns(2)`` (network namespaces are per task), so sockets created there live in the namespace for
their whole life, and switches back on exit. The namespace is always deleted on exit, even when the
code inside fails. All addresses used live only inside namespaces created here; nothing routes out.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from zcnet.errors import NetnsUnavailable
from zcnet.lowlevel._libc import errno_error, libc_function

__all__ = [
    "IFB_LOCAL_ADDR",
    "VETH_ADDR_A",
    "VETH_ADDR_B",
    "IFB_SINK_ADDR",
    "LO_MTU_IPV4_MSS_61440",
    "LO_MTU_IPV6_MSS_61440",
    "Netns",
    "NetnsUnavailable",
    "netns_unavailable_reason",
]

# MTU minus IP and TCP headers (and 12 bytes of timestamp option) gives MSS 61440 = 15 pages.
LO_MTU_IPV6_MSS_61440: Final = 61512
LO_MTU_IPV4_MSS_61440: Final = 61492

# The ifb sink: a /24 on the ifb device; datagrams to IFB_SINK_ADDR leave through the ifb and are
# dropped there (198.18.0.0/15 is the benchmarking range of RFC 2544; it exists only in the netns).
IFB_LOCAL_ADDR: Final = "198.18.0.1"
IFB_SINK_ADDR: Final = "198.18.0.2"
_IFB_PREFIX: Final = 24

VETH_ADDR_A: Final = "198.19.0.1"
VETH_ADDR_B: Final = "198.19.0.2"

_CLONE_NEWNET: Final = 0x40000000
_counter = itertools.count()
_counter_lock = threading.Lock()


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or ``None`` when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if not os.path.exists("/proc/self/ns/net"):
        return "the kernel has no network namespaces"
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def _libc_setns(fd: int) -> None:
    setns = libc_function("setns", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    if setns(fd, _CLONE_NEWNET) != 0:
        raise errno_error("setns")


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
    else:
        _libc_setns(fd)


@dataclass
class Netns:
    """A network namespace owned by this process; use as a context manager.

    Args:
        lo_mtu: MTU for the namespace's loopback, or ``None`` to keep the default (65536).
            The default makes an IPv6 MSS of 61440 bytes (15 pages).
        ifb_sink: add an ``ifb`` device with :data:`IFB_LOCAL_ADDR`; traffic to
            :data:`IFB_SINK_ADDR` is dropped by it without being copied.
        name_prefix: prefix of the namespace name (a unique suffix is appended).
    """

    lo_mtu: int | None = LO_MTU_IPV6_MSS_61440
    ifb_sink: bool = False
    name_prefix: str = "zcnet"
    name: str = ""
    peers: list[str] = field(default_factory=list)
    _created: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            with _counter_lock:
                n = next(_counter)
            self.name = f"{self.name_prefix}-{os.getpid()}-{n}"

    # -- lifecycle -------------------------------------------------------------------------
    def create(self) -> Netns:
        """Create the namespace and its devices; raises :class:`NetnsUnavailable`."""
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        _ip("netns", "add", self.name)
        self._created = True
        try:
            _ip("link", "set", "lo", "up", netns=self.name)
            if self.lo_mtu is not None:
                _ip("link", "set", "lo", "mtu", str(self.lo_mtu), netns=self.name)
            if self.ifb_sink:
                _ip("link", "add", "ifb0", "type", "ifb", netns=self.name)
                _ip("link", "set", "ifb0", "up", netns=self.name)
                _ip("addr", "add", f"{IFB_LOCAL_ADDR}/{_IFB_PREFIX}", "dev", "ifb0",
                    netns=self.name)
        except BaseException:
            self.delete()
            raise
        return self

    def add_veth_peer(self, mtu: int = 1500) -> Netns:
        """Create a second namespace joined to this one by a veth pair.

        This namespace gets :data:`VETH_ADDR_A`, the peer :data:`VETH_ADDR_B` (a /30 with no
        route out). The peer is deleted together with this namespace.
        """
        peer = Netns(lo_mtu=None, name_prefix=f"{self.name_prefix}p").create()
        self.peers.append(peer.name)
        # device names are per namespace: only this namespace's own pairs can clash
        a, b = f"zveth{len(self.peers) - 1}", "zveth-peer"
        _ip("link", "add", a, "type", "veth", "peer", "name", b, "netns", peer.name,
            netns=self.name)
        for ns, dev, addr in ((self.name, a, VETH_ADDR_A), (peer.name, b, VETH_ADDR_B)):
            _ip("link", "set", dev, "mtu", str(mtu), netns=ns)
            _ip("addr", "add", f"{addr}/30", "dev", dev, netns=ns)
            _ip("link", "set", dev, "up", netns=ns)
        return peer

    def delete(self) -> None:
        """Delete the namespace (and its veth peers); idempotent."""
        for peer in self.peers:
            subprocess.run(["ip", "netns", "del", peer], capture_output=True, check=False)
        self.peers = []
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
            self._created = False

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # -- running code inside ---------------------------------------------------------------
    @property
    def path(self) -> str:
        """The bind-mounted namespace file (``/run/netns/NAME``)."""
        return f"/run/netns/{self.name}"

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Switch the calling thread into the namespace for the ``with`` block.

        Sockets created inside stay in the namespace after the block ends.
        """
        with open("/proc/thread-self/ns/net", "rb") as home, open(self.path, "rb") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside the namespace (for ``subprocess``)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a per-namespace sysctl (for example ``net.core.optmem_max``).

        Written through ``/proc/sys`` from a thread inside the namespace: network sysctls are
        resolved against the opener's namespace.
        """
        path = "/proc/sys/" + key.replace(".", "/")
        errors: list[BaseException] = []

        def write() -> None:
            try:
                with self.entered(), open(path, "w") as f:
                    f.write(str(value))
            except OSError as e:
                errors.append(e)

        t = threading.Thread(target=write, name=f"netns-sysctl-{self.name}")
        t.start()
        t.join()
        if errors:
            raise NetnsUnavailable(f"sysctl {key}={value} failed: {errors[0]}") from errors[0]
