"""Stand-in for the zero-copy completion plumbing used by the ``zc://`` transport.

Theory of operation (Documentation/networking/msg_zerocopy.rst): every successful send call with
``MSG_ZEROCOPY`` takes the next value of a per-socket u32 counter. When the kernel no longer
needs the pages of a range of those calls it queues one ``struct sock_extended_err`` on the
socket error queue (``recvmsg(MSG_ERRQUEUE)``, cmsg ``SOL_IP/IP_RECVERR`` or
``SOL_IPV6/IPV6_RECVERR``) with ``ee_origin == SO_EE_ORIGIN_ZEROCOPY`` and the inclusive range
``[ee_info, ee_data]``; ``ee_code & SO_EE_CODE_ZEROCOPY_COPIED`` says the kernel copied anyway
(always so on loopback, where frags are orphaned). Until its range is reported, a call's buffers
must stay untouched, so :class:`Holds` keeps a reference to them per call number.

This module stays small on purpose: the project's ``zcnet.lowlevel.errqueue`` and
``zcnet._core.tracker`` are the general versions.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from zcnet.lowlevel.constants import (
    IP_RECVERR,
    IPV6_RECVERR,
    MSG_ERRQUEUE,
    SO_EE_CODE_ZEROCOPY_COPIED,
    SO_EE_ORIGIN_ZEROCOPY,
    SOL_IP,
    SOL_IPV6,
)

__all__ = ["Completion", "Holds", "read_completions"]

_EE = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
_MASK = 0xFFFFFFFF
_CMSG_SPACE = socket.CMSG_SPACE(_EE.size + 28)  # sock_extended_err + offender sockaddr_in6


@dataclass(frozen=True, slots=True)
class Completion:
    """The kernel released send calls ``lo .. hi`` (inclusive, wrapping); ``copied``: it copied."""

    lo: int
    hi: int
    copied: bool


def read_completions(sock: socket.socket) -> list[Completion]:
    """Drain the socket's error queue without blocking; return the zero-copy completions.

    Other error-queue messages (ICMP errors, timestamps) are dropped. Raises ``OSError`` for
    errors other than an empty queue.
    """
    out: list[Completion] = []
    while True:
        try:
            _, ancdata, _, _ = sock.recvmsg(0, _CMSG_SPACE, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return out
        for level, kind, data in ancdata:
            if (level, kind) not in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
                continue
            if len(data) < _EE.size:
                continue
            errno_, origin, _type, code, _pad, lo, hi = _EE.unpack_from(data)
            if origin == SO_EE_ORIGIN_ZEROCOPY and errno_ == 0:
                out.append(Completion(lo, hi, bool(code & SO_EE_CODE_ZEROCOPY_COPIED)))


class Holds:
    """References kept alive per zero-copy send call until the kernel reports the call done."""

    def __init__(self) -> None:
        self._next = 0
        self._held: dict[int, tuple[int, object]] = {}
        self.bytes_held = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, nbytes: int, ref: object) -> int:
        """Record the next send call (``nbytes`` sent from ``ref``); returns its number."""
        key = self._next
        self._next = (self._next + 1) & _MASK
        self._held[key] = (nbytes, ref)
        self.bytes_held += nbytes
        return key

    def release(self, c: Completion) -> int:
        """Drop the references of the calls ``c`` covers; returns the bytes released."""
        width = ((c.hi - c.lo) & _MASK) + 1
        released = 0
        if width > len(self._held):  # wider than anything outstanding: walk what we hold
            keys = [k for k in self._held if ((k - c.lo) & _MASK) < width]
        else:
            keys = [(c.lo + i) & _MASK for i in range(width)]
        for k in keys:
            item = self._held.pop(k, None)
            if item is not None:
                released += item[0]
        self.bytes_held -= released
        return released

    def drop_all(self) -> int:
        """Forget every reference (after the socket is gone); returns the bytes dropped."""
        n = self.bytes_held
        self._held.clear()
        self.bytes_held = 0
        return n
