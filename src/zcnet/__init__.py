"""zcnet: the Linux kernel's zero-copy networking for Python programs.

The flat, friendly API: re-exports only, no logic.
"""

from __future__ import annotations

from zcnet.errors import (
    BufferLifetimeError,
    ConnectionResetByPeer,
    InvalidBufferError,
    InvalidCompletionError,
    LimitExceeded,
    PoolError,
    ReceiveError,
    SendError,
    SocketClosedError,
    TimeoutExpired,
    UnsupportedSocketError,
    ZcnetError,
    ZerocopyUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "BufferLifetimeError",
    "ConnectionResetByPeer",
    "InvalidBufferError",
    "InvalidCompletionError",
    "LimitExceeded",
    "PoolError",
    "ReceiveError",
    "SendError",
    "SocketClosedError",
    "TimeoutExpired",
    "UnsupportedSocketError",
    "ZcnetError",
    "ZerocopyUnavailable",
    "__version__",
]
