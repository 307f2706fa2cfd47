"""zcnet: the Linux kernel's zero-copy networking for Python programs.

The flat, friendly API: re-exports only, no logic. The asyncio API lives in :mod:`zcnet.aio`,
the Dask comm backend in :mod:`zcnet.contrib.dask`, the benchmark in :mod:`zcnet.bench`.
"""

from __future__ import annotations

from zcnet._accel import Implementation, implementation
from zcnet.accounting import (
    Account,
    AccountStats,
    Charge,
    KernelMemorySnapshot,
    MemInfo,
    kernel_memory_snapshot,
    recv_accounted,
    send_accounted,
)
from zcnet.errors import (
    AccountingError,
    BufferLifetimeError,
    ConcurrentUseError,
    ConnectionResetByPeer,
    InvalidBufferError,
    InvalidCompletionError,
    LimitExceeded,
    LimitWaitTimeout,
    PoolError,
    ReceiveError,
    SendError,
    SocketClosedError,
    TimeoutExpired,
    UnsupportedSocketError,
    ZcnetError,
    ZerocopyUnavailable,
)
from zcnet.pool import BufferPool, Lease, LockedFreeListPool, PoolStats
from zcnet.receiver import Chunk, Receiver, ReceiverStats, RecvPolicy, make_mappable_listener
from zcnet.sender import Sender, SenderStats, SendPolicy, Ticket

__version__ = "0.1.0"

__all__ = [
    "Account",
    "AccountStats",
    "AccountingError",
    "BufferLifetimeError",
    "ConcurrentUseError",
    "BufferPool",
    "Charge",
    "Chunk",
    "ConnectionResetByPeer",
    "Implementation",
    "InvalidBufferError",
    "InvalidCompletionError",
    "KernelMemorySnapshot",
    "Lease",
    "LimitExceeded",
    "LimitWaitTimeout",
    "LockedFreeListPool",
    "MemInfo",
    "PoolError",
    "PoolStats",
    "ReceiveError",
    "Receiver",
    "ReceiverStats",
    "RecvPolicy",
    "SendError",
    "SendPolicy",
    "Sender",
    "SenderStats",
    "SocketClosedError",
    "Ticket",
    "TimeoutExpired",
    "UnsupportedSocketError",
    "ZcnetError",
    "ZerocopyUnavailable",
    "__version__",
    "implementation",
    "kernel_memory_snapshot",
    "make_mappable_listener",
    "recv_accounted",
    "send_accounted",
]
