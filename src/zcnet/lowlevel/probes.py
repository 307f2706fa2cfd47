"""Kernel feature probes: each feature is tried, not inferred from the kernel version.

Theory of operation: a probe makes the smallest call that the kernel would refuse if it lacked the
feature, on a socket or ring of its own that it closes before returning, and reports what the
kernel answered (an errno name, a struct size). Nothing here needs root, sends data or changes a
setting that outlives the call. ``zcnet doctor`` (:mod:`zcnet.doctor`) reports every probe; the
:class:`~zcnet.sender.Sender` and :class:`~zcnet.receiver.Receiver` use :func:`so_zerocopy_refusal`
for the kernel's rule on which sockets may use ``SO_ZEROCOPY``, so their refusal and the doctor's
report say the same thing.

Kernel facts used (checked on Linux 6.18):

* ``SO_ZEROCOPY``: net/core/sock.c ``sk_setsockopt`` accepts it on ``AF_INET``/``AF_INET6`` TCP
  and UDP sockets and on ``AF_RDS``; net/vmw_vsock/af_vsock.c accepts it on ``AF_VSOCK``
  (the vsock ``MSG_ZEROCOPY`` support of 2023). Every other socket, ``SOCK_RAW`` and
  ``AF_PACKET`` included, gets ``EOPNOTSUPP`` (errno 95, which Python names ``ENOTSUP``: the
  same number on Linux), although ``MSG_ZEROCOPY`` once covered them
  (tools/testing/selftests/net/msg_zerocopy.c still lists them).
* ``UDP_SEGMENT`` (UDP GSO, Linux 4.18): net/ipv4/udp.c ``udp_lib_setsockopt``.
* ``TCP_ZEROCOPY_RECEIVE`` (Linux 4.18): net/ipv4/tcp.c ``do_tcp_getsockopt`` writes back the
  size of the ``struct tcp_zerocopy_receive`` it knows when given a longer, zeroed one, before
  doing anything else; with nothing queued the call itself returns 0 mapping nothing. The copy
  buffer fields (``copybuf_address``, ``copybuf_len``) came with Linux 5.11.
* io_uring: ``io_uring_setup`` (io_uring/io_uring.c) and ``IORING_REGISTER_PROBE``
  (io_uring/register.c), which lists each opcode with ``IO_URING_OP_SUPPORTED``. The opcode
  numbers are those of include/uapi/linux/io_uring.h: ``IORING_OP_SEND_ZC`` 47 (Linux 6.0),
  ``IORING_OP_SENDMSG_ZC`` 48 (6.1), ``IORING_OP_RECV_ZC`` 58 (zero-copy receive, 6.15).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import sys
from dataclasses import dataclass
from typing import Final

from zcnet.lowlevel._libc import libc_function
from zcnet.lowlevel.constants import (
    MSG_ZEROCOPY,
    SO_MEMINFO,
    SO_ZEROCOPY,
    SOL_UDP,
    TCP_ZEROCOPY_RECEIVE,
    UDP_SEGMENT,
)

__all__ = [
    "IORING_OP_RECV_ZC",
    "IORING_OP_SENDMSG_ZC",
    "IORING_OP_SEND_ZC",
    "NOTIFICATION_ADMISSION",
    "NOTIFICATION_CHARGE_HERE",
    "SO_ZEROCOPY_RULE",
    "TCP_ZC_COPYBUF_END",
    "ProbeResult",
    "UringProbe",
    "errno_name",
    "measure_notification_charge",
    "probe_io_uring",
    "probe_so_zerocopy",
    "probe_tcp_zerocopy_receive",
    "probe_udp_segment",
    "raw_or_packet_refusal",
    "so_zerocopy_refusal",
]

#: The kernel's rule, in the words of every refusal zcnet reports.
SO_ZEROCOPY_RULE: Final = (
    "SO_ZEROCOPY is supported by the kernel only on TCP, UDP, RDS and VSOCK sockets "
    "(net/core/sock.c sk_setsockopt); RAW and PACKET sockets refuse it with EOPNOTSUPP")

#: The least ``net.core.optmem_max`` that admits one ``MSG_ZEROCOPY`` notification:
#: net/core/sock.c ``sock_omalloc`` refuses once ``sk_omem_alloc + SKB_TRUESIZE(0)`` would pass
#: it. 576 bytes on Linux 6.18 x86-64, found by bisecting ``optmem_max`` in a namespace.
NOTIFICATION_ADMISSION: Final = 576
#: What one outstanding notification then holds of ``sk_omem_alloc`` (its skb's real truesize,
#: more than ``SKB_TRUESIZE(0)``): 832 bytes on Linux 6.18 x86-64. Used only where
#: :func:`measure_notification_charge` cannot measure it.
NOTIFICATION_CHARGE_HERE: Final = 832
_SK_MEMINFO_OPTMEM: Final = 6

IORING_OP_SEND_ZC: Final = 47
IORING_OP_SENDMSG_ZC: Final = 48
IORING_OP_RECV_ZC: Final = 58
_IORING_REGISTER_PROBE: Final = 8
_IO_URING_OP_SUPPORTED: Final = 1
_NR_IO_URING_SETUP: Final = 425  # the same number in every Linux syscall table
_NR_IO_URING_REGISTER: Final = 427
_PROBE_OPS: Final = 256

#: ``struct tcp_zerocopy_receive`` up to the end of ``copybuf_len`` (Linux 5.11).
TCP_ZC_COPYBUF_END: Final = 36
_ZC_STRUCT_PROBE_LEN: Final = 128  # longer than any struct tcp_zerocopy_receive so far


def errno_name(code: int | None) -> str:
    """The kernel's name of ``code``: ``EOPNOTSUPP`` for 95 (Python says ``ENOTSUP``)."""
    if code is None:
        return "error"
    if code == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno.errorcode.get(code, f"errno {code}")


def so_zerocopy_refusal(family: int, type_: int, proto: int = 0) -> str | None:
    """Why the kernel refuses ``SO_ZEROCOPY`` on such a socket, by its rule, or ``None``.

    Pure: no socket is made. ``type_`` may carry ``SOCK_NONBLOCK``/``SOCK_CLOEXEC`` bits.
    """
    kind = type_ & 0xF
    if family in (socket.AF_INET, socket.AF_INET6):
        if kind == socket.SOCK_STREAM and proto in (0, socket.IPPROTO_TCP):
            return None
        if kind == socket.SOCK_DGRAM and proto in (0, socket.IPPROTO_UDP):
            return None
        what = "a RAW socket" if kind == socket.SOCK_RAW else f"socket type {kind} proto {proto}"
        return f"{what}: {SO_ZEROCOPY_RULE}"
    if family in (getattr(socket, "AF_RDS", 21), getattr(socket, "AF_VSOCK", 40)):
        return None
    what = "an AF_PACKET socket" if family == getattr(socket, "AF_PACKET", 17) else (
        f"address family {family}")
    return f"{what}: {SO_ZEROCOPY_RULE}"


def raw_or_packet_refusal(family: int, type_: int) -> str | None:
    """The kernel's rule, if the socket is a RAW or an ``AF_PACKET`` one, else ``None``.

    What the :class:`~zcnet.sender.Sender` and :class:`~zcnet.receiver.Receiver` say when given
    such a socket (the kernel would refuse ``SO_ZEROCOPY`` on it with ``EOPNOTSUPP``).
    """
    if family == getattr(socket, "AF_PACKET", 17) or type_ & 0xF == socket.SOCK_RAW:
        return so_zerocopy_refusal(family, type_)
    return None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the kernel answered to one probe.

    ``supported`` is ``None`` when the probe could not be made (``detail`` says why);
    ``errno`` is the kernel's errno name of a refusal; ``value`` a figure the probe read.
    """

    supported: bool | None
    detail: str
    errno: str | None = None
    value: int | None = None


def probe_so_zerocopy(family: int, type_: int, proto: int = 0) -> ProbeResult:
    """Try ``setsockopt(SO_ZEROCOPY, 1)`` on a new socket of this kind."""
    try:
        sock = socket.socket(family, type_, proto)
    except OSError as e:
        return ProbeResult(None, f"cannot create the socket: {e.strerror} "
                                 f"({errno_name(e.errno)})", errno_name(e.errno))
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        except OSError as e:
            return ProbeResult(False, f"setsockopt(SO_ZEROCOPY) refused: {e.strerror}",
                               errno_name(e.errno))
    return ProbeResult(True, "setsockopt(SO_ZEROCOPY, 1) accepted")


def probe_udp_segment() -> ProbeResult:
    """Try ``setsockopt(SOL_UDP, UDP_SEGMENT, 1400)`` on a new UDP socket (value: read back)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as e:
        return ProbeResult(None, f"cannot create a UDP socket: {e.strerror}", errno_name(e.errno))
    with sock:
        try:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, 1400)
            value = sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        except OSError as e:
            return ProbeResult(False, f"UDP_SEGMENT refused: {e.strerror}", errno_name(e.errno))
    return ProbeResult(True, f"UDP_SEGMENT accepted (read back {value})", value=value)


def probe_tcp_zerocopy_receive() -> ProbeResult:
    """``getsockopt(TCP_ZEROCOPY_RECEIVE)`` with nothing queued, on an unconnected TCP socket.

    ``value`` is the size of ``struct tcp_zerocopy_receive`` the kernel knows (64 on recent
    kernels); at least :data:`TCP_ZC_COPYBUF_END` means the copy-buffer fields are there.
    """
    getsockopt = libc_function(
        "getsockopt",
        (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p),
        ctypes.c_int)
    buf = ctypes.create_string_buffer(_ZC_STRUCT_PROBE_LEN)
    optlen = ctypes.c_uint32(_ZC_STRUCT_PROBE_LEN)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        return ProbeResult(None, f"cannot create a TCP socket: {e.strerror}", errno_name(e.errno))
    with sock:
        rc = getsockopt(sock.fileno(), socket.IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE,
                        ctypes.addressof(buf), ctypes.addressof(optlen))
        err = ctypes.get_errno() if rc != 0 else 0
    size = optlen.value
    if rc != 0 and err in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
        return ProbeResult(False, "getsockopt(TCP_ZEROCOPY_RECEIVE) is unknown to this kernel",
                           errno_name(err))
    if size >= _ZC_STRUCT_PROBE_LEN:  # not written back: an old kernel's
        return ProbeResult(rc == 0 or None, f"the kernel answered {errno_name(err)} without "
                           "saying its struct size", errno_name(err) if rc else None)
    copybuf = "with" if size >= TCP_ZC_COPYBUF_END else "without"
    return ProbeResult(True, f"struct tcp_zerocopy_receive of {size} bytes ({copybuf} the "
                       "copy-buffer fields)", errno_name(err) if rc else None, size)


def measure_notification_charge() -> ProbeResult:
    """Bytes of option memory one outstanding ``MSG_ZEROCOPY`` notification holds, measured.

    A loopback TCP connection whose receiver reads nothing through a tiny receive buffer keeps
    the sender's bytes in its write queue; a ``MSG_ZEROCOPY`` send appended there allocates a
    notification (net/core/skbuff.c ``msg_zerocopy_alloc``) that stays charged to the sender's
    ``sk_omem_alloc`` until those bytes are acknowledged, and ``SO_MEMINFO``'s
    ``SK_MEMINFO_OPTMEM`` shows it. ``value`` is that charge; ``supported`` is ``None`` when it
    could not be measured (no ``SO_ZEROCOPY``, an ``optmem_max`` too small, ...).
    """
    try:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        return ProbeResult(None, f"cannot create a TCP socket: {e.strerror}", errno_name(e.errno))
    client: socket.socket | None = None
    server: socket.socket | None = None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by server
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
        client.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        client.setblocking(False)
        client.send(bytes(128 * 1024))  # more than the receiver's window: most stays queued
        client.send(bytes(4096), MSG_ZEROCOPY)
        raw = client.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (_SK_MEMINFO_OPTMEM + 1))
        charge = int.from_bytes(raw[4 * _SK_MEMINFO_OPTMEM:4 * _SK_MEMINFO_OPTMEM + 4],
                                sys.byteorder)
    except OSError as e:
        return ProbeResult(None, f"not measurable here: {e.strerror} ({errno_name(e.errno)})",
                           errno_name(e.errno))
    finally:
        for sock in (client, server, listener):
            if sock is not None:
                sock.close()
    if charge <= 0:
        return ProbeResult(None, "not measurable here: no option memory charged")
    return ProbeResult(True, f"{charge} bytes per outstanding notification (measured)",
                       value=charge)


class _IoUringParams(ctypes.Structure):
    """``struct io_uring_params`` (include/uapi/linux/io_uring.h), 120 bytes."""

    _fields_ = (("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
                ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
                ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
                ("sq_off", ctypes.c_uint32 * 10), ("cq_off", ctypes.c_uint32 * 10))


assert ctypes.sizeof(_IoUringParams) == 120


@dataclass(frozen=True, slots=True)
class UringProbe:
    """What ``io_uring_setup`` and ``IORING_REGISTER_PROBE`` said.

    ``setup_errno`` is the errno name of a refused ``io_uring_setup`` (``None``: a ring was made);
    ``ops`` the opcodes the kernel marks supported (empty when there was no ring or no probe);
    ``last_op`` the highest opcode the kernel knows; ``features`` the ``IORING_FEAT_*`` bits.
    """

    setup_errno: str | None
    ops: frozenset[int]
    last_op: int | None
    features: int
    detail: str

    def supports(self, op: int) -> bool:
        """Whether opcode ``op`` is supported (``False`` when no ring could be made)."""
        return op in self.ops


def probe_io_uring() -> UringProbe:
    """Set up a two-entry ring and ask ``IORING_REGISTER_PROBE`` which opcodes it has."""
    setup = libc_function("syscall", (ctypes.c_long, ctypes.c_uint, ctypes.c_void_p),
                          ctypes.c_long)
    register = libc_function("syscall", (ctypes.c_long, ctypes.c_int, ctypes.c_uint,
                                         ctypes.c_void_p, ctypes.c_uint), ctypes.c_long)
    params = _IoUringParams()
    fd = int(setup(_NR_IO_URING_SETUP, 2, ctypes.addressof(params)))
    if fd < 0:
        err = ctypes.get_errno()
        return UringProbe(errno_name(err), frozenset(), None, 0,
                          f"io_uring_setup refused with {errno_name(err)}")
    close = libc_function("close", (ctypes.c_int,), ctypes.c_int)
    try:
        # struct io_uring_probe: u8 last_op, u8 ops_len, u16 resv, u32 resv2[3], then ops[]
        # of struct io_uring_probe_op: u8 op, u8 resv, u16 flags, u32 resv2 (8 bytes each).
        buf = ctypes.create_string_buffer(16 + 8 * _PROBE_OPS)
        rc = int(register(_NR_IO_URING_REGISTER, fd, _IORING_REGISTER_PROBE,
                          ctypes.addressof(buf), _PROBE_OPS))
        if rc < 0:
            err = ctypes.get_errno()
            return UringProbe(None, frozenset(), None, params.features,
                              f"IORING_REGISTER_PROBE refused: {errno_name(err)}")
        raw = buf.raw
        last_op, ops_len = raw[0], raw[1]
        ops = frozenset(raw[16 + 8 * i] for i in range(min(ops_len, _PROBE_OPS))
                        if int.from_bytes(raw[16 + 8 * i + 2:16 + 8 * i + 4], "little")
                        & _IO_URING_OP_SUPPORTED)
        return UringProbe(None, ops, last_op, params.features,
                          f"ring made; last opcode {last_op}, {len(ops)} supported")
    finally:
        close(fd)

