"""Kernel constants for zero-copy networking that Python's ``socket`` module does not define.

Values from include/uapi/asm-generic/socket.h, include/uapi/linux/socket.h,
include/uapi/linux/errqueue.h, include/uapi/linux/tcp.h and include/uapi/linux/udp.h.
"""

from __future__ import annotations

import socket
from typing import Final

# Transmit: Documentation/networking/msg_zerocopy.rst
SO_ZEROCOPY: Final = 60
MSG_ZEROCOPY: Final = 0x4000000
SO_EE_ORIGIN_ZEROCOPY: Final = 5
SO_EE_CODE_ZEROCOPY_COPIED: Final = 1
MSG_ERRQUEUE: Final = getattr(socket, "MSG_ERRQUEUE", 0x2000)

# cmsg level/type of error-queue messages
SOL_IP: Final = getattr(socket, "SOL_IP", 0)
SOL_IPV6: Final = getattr(socket, "SOL_IPV6", 41)
IP_RECVERR: Final = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR: Final = getattr(socket, "IPV6_RECVERR", 25)

# Receive: net/ipv4/tcp.c tcp_zerocopy_receive, tools/testing/selftests/net/tcp_mmap.c
TCP_ZEROCOPY_RECEIVE: Final = 35
TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT: Final = 0x1
TCP_MAXSEG: Final = getattr(socket, "TCP_MAXSEG", 2)
SO_RCVLOWAT: Final = getattr(socket, "SO_RCVLOWAT", 18)
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)  # beyond rmem_max; CAP_NET_ADMIN
SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)  # beyond wmem_max; CAP_NET_ADMIN
TCP_INQ: Final = 36

# Memory: SO_MEMINFO returns u32[SK_MEMINFO_VARS]
SO_MEMINFO: Final = 55
SK_MEMINFO_VARS: Final = 9

# UDP GSO: include/uapi/linux/udp.h
SOL_UDP: Final = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)
