"""A network interface's offloads, read from the kernel without root or the ``ethtool`` program.

Theory of operation:

* Scatter-gather, TSO and GSO: the legacy ``SIOCETHTOOL`` ioctl's read-only commands
  (``ETHTOOL_GSG``, ``ETHTOOL_GTSO``, ``ETHTOOL_GGSO``; include/uapi/linux/ethtool.h,
  net/ethtool/ioctl.c ``dev_ethtool``, which asks ``CAP_NET_ADMIN`` only of the set commands).
  Each answers a ``struct ethtool_value {u32 cmd; u32 data}`` through ``ifreq.ifr_data``.
* TCP header/data split, which a NIC needs so that received TCP payload lands in whole pages
  that can be mapped: only the ethtool netlink family has it (``ETHTOOL_MSG_RINGS_GET``,
  attribute ``ETHTOOL_A_RINGS_TCP_DATA_SPLIT``, 2022; include/uapi/linux/ethtool_netlink.h,
  net/ethtool/rings.c, which leaves the attribute out when the driver does not report it). The
  request is made with a generic netlink socket of the standard library's ``socket`` module
  (``AF_NETLINK``), after resolving the family's id with ``CTRL_CMD_GETFAMILY``
  (include/uapi/linux/genetlink.h).
* The driver: the ``device/driver`` link in sysfs, else ``ETHTOOL_GDRVINFO`` (virtual devices
  such as veth and ifb answer it too), else nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["Offloads", "driver_name", "header_split", "offloads"]

_SIOCETHTOOL: Final = 0x8946
_ETHTOOL_GDRVINFO: Final = 0x03
_ETHTOOL_GSG: Final = 0x18
_ETHTOOL_GTSO: Final = 0x1E
_ETHTOOL_GGSO: Final = 0x23
_IFNAMSIZ: Final = 16

_NETLINK_GENERIC: Final = 16
_GENL_ID_CTRL: Final = 0x10
_CTRL_CMD_GETFAMILY: Final = 3
_CTRL_ATTR_FAMILY_ID: Final = 1
_CTRL_ATTR_FAMILY_NAME: Final = 2
_NLM_F_REQUEST: Final = 1
_NLMSG_ERROR: Final = 2
_NLA_F_NESTED: Final = 0x8000
_ETHTOOL_MSG_RINGS_GET: Final = 15
_ETHTOOL_A_RINGS_HEADER: Final = 1
_ETHTOOL_A_HEADER_DEV_NAME: Final = 2
_ETHTOOL_A_RINGS_TCP_DATA_SPLIT: Final = 11
_SPLIT_NAMES: Final = {0: "unknown", 1: "off", 2: "on"}


@dataclass(frozen=True, slots=True)
class Offloads:
    """Scatter-gather, TSO and GSO of one interface (``None``: the driver did not say)."""

    scatter_gather: bool | None
    tso: bool | None
    gso: bool | None
    reason: str | None = None


def _ioctl(sock: socket.socket, name: str, data: ctypes.Array[ctypes.c_char]) -> None:
    ifreq = struct.pack(f"{_IFNAMSIZ}sP16x", name.encode()[:_IFNAMSIZ - 1],
                        ctypes.addressof(data))
    fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)


def _get_value(sock: socket.socket, name: str, cmd: int) -> bool | None:
    data = ctypes.create_string_buffer(struct.pack("II", cmd, 0), 8)
    try:
        _ioctl(sock, name, data)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    return bool(struct.unpack("II", data.raw)[1])


def offloads(name: str) -> Offloads:
    """The interface's scatter-gather, TSO and GSO settings through ``SIOCETHTOOL``."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return Offloads(_get_value(sock, name, _ETHTOOL_GSG),
                            _get_value(sock, name, _ETHTOOL_GTSO),
                            _get_value(sock, name, _ETHTOOL_GGSO))
    except OSError as e:
        return Offloads(None, None, None, f"SIOCETHTOOL failed: {e.strerror}")


def driver_name(name: str) -> str | None:
    """The interface's driver: sysfs ``device/driver``, else ``ETHTOOL_GDRVINFO``."""
    link = f"/sys/class/net/{name}/device/driver"
    with contextlib.suppress(OSError):
        return os.path.basename(os.readlink(link))
    # struct ethtool_drvinfo: u32 cmd, char driver[32], ... (196 bytes)
    data = ctypes.create_string_buffer(struct.pack("I", _ETHTOOL_GDRVINFO), 196)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            _ioctl(sock, name, data)
    except OSError:
        return None
    driver = data.raw[4:36].split(b"\0", 1)[0].decode(errors="replace")
    return driver or None


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    at = 0
    while at + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, at)
        if length < 4:
            break
        out[kind & ~_NLA_F_NESTED] = data[at + 4:at + length]
        at += (length + 3) & ~3
    return out


def _request(sock: socket.socket, family: int, cmd: int, version: int, attrs: bytes,
             seq: int) -> bytes:
    """One generic netlink request; the attributes of its reply.

    Raises:
        OSError: the kernel answered with an error (its errno).
    """
    body = struct.pack("BBH", cmd, version, 0) + attrs
    sock.send(struct.pack("IHHII", 16 + len(body), family, _NLM_F_REQUEST, seq, 0) + body)
    while True:
        reply = sock.recv(65536)
        at = 0
        while at + 16 <= len(reply):
            length, kind, _, rseq, _ = struct.unpack_from("IHHII", reply, at)
            if length < 16:
                raise OSError(errno.EPROTO, "malformed netlink reply")
            if rseq == seq:
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("i", reply, at + 16)[0]
                    raise OSError(code, os.strerror(code))
                return reply[at + 20:at + length]
            at += (length + 3) & ~3


def header_split(name: str) -> tuple[str | None, str]:
    """TCP header/data split of the interface: ``"on"``, ``"off"``, ``"unknown"`` or ``None``
    (could not ask), and how that was learned."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC)
    except (OSError, AttributeError) as e:
        return None, f"no generic netlink socket: {e}"
    with sock:
        sock.settimeout(2.0)
        try:
            sock.bind((0, 0))
            found = _attrs(_request(sock, _GENL_ID_CTRL, _CTRL_CMD_GETFAMILY, 1,
                                    _attr(_CTRL_ATTR_FAMILY_NAME, b"ethtool\0"), 1))
            family = struct.unpack("H", found[_CTRL_ATTR_FAMILY_ID][:2])[0]
        except (OSError, KeyError) as e:
            return None, f"the kernel has no ethtool netlink family ({e})"
        header = _attr(_ETHTOOL_A_HEADER_DEV_NAME, name.encode() + b"\0")
        try:
            rings = _attrs(_request(sock, family, _ETHTOOL_MSG_RINGS_GET, 1,
                                    _attr(_ETHTOOL_A_RINGS_HEADER | _NLA_F_NESTED, header), 2))
        except OSError as e:
            code = errno.errorcode.get(e.errno or 0, str(e.errno))
            if e.errno == errno.EOPNOTSUPP:
                code = "EOPNOTSUPP"
            return "n/a", f"ETHTOOL_MSG_RINGS_GET: {code} (the driver has no ring parameters)"
    value = rings.get(_ETHTOOL_A_RINGS_TCP_DATA_SPLIT)
    if value is None:
        return "unknown", "ETHTOOL_MSG_RINGS_GET: the driver does not report tcp-data-split"
    return _SPLIT_NAMES.get(value[0], f"value {value[0]}"), "ETHTOOL_MSG_RINGS_GET"
