"""zcnet's error hierarchy: one base, errors by meaning.

Kernel failures are translated once, at the I/O boundary, into these types; the original
``OSError`` is kept as ``__cause__``. Everything zcnet raises on purpose derives from
:class:`ZcnetError`, so ``except zcnet.ZcnetError`` catches all of it.
"""

from __future__ import annotations

__all__ = [
    "AccountingError",
    "BufferLifetimeError",
    "ConnectionResetByPeer",
    "InvalidBufferError",
    "InvalidCompletionError",
    "LimitExceeded",
    "LimitWaitTimeout",
    "PoolError",
    "ReceiveError",
    "SendError",
    "SocketClosedError",
    "TimeoutExpired",
    "UnsupportedSocketError",
    "ZcnetError",
    "ZerocopyUnavailable",
]


class ZcnetError(Exception):
    """Base class of every error zcnet raises on purpose."""


class UnsupportedSocketError(ZcnetError, ValueError):
    """The socket cannot be used for this purpose (wrong family or type, not connected, ...)."""


class InvalidBufferError(ZcnetError, TypeError):
    """The buffer is not usable: not a contiguous, byte-addressable buffer, or of the wrong kind."""


class SocketClosedError(ZcnetError):
    """The socket (or the zcnet object wrapping it) is already closed."""


class ConnectionResetByPeer(ZcnetError, ConnectionError):
    """The peer reset or closed the connection in the middle of a transfer."""


class SendError(ZcnetError):
    """A send failed for a reason other than a peer reset; the kernel error is the ``__cause__``."""


class ReceiveError(ZcnetError):
    """A receive failed for a reason other than a peer reset (kernel error in ``__cause__``)."""


class TimeoutExpired(ZcnetError, TimeoutError):
    """A wait (for completions, data or a free buffer) ran past its deadline."""


class InvalidCompletionError(ZcnetError, ValueError):
    """The kernel reported a completion range that cannot match any outstanding send.

    Raised instead of releasing a buffer that the kernel may still read.
    """


class BufferLifetimeError(ZcnetError):
    """A buffer or chunk was used after release, released twice, or is still in use."""


class ZerocopyUnavailable(ZcnetError):
    """Zero-copy was explicitly required but the kernel or platform does not offer it."""


class LimitExceeded(ZcnetError):
    """Charging bytes to an account would exceed its limit (or a parent's limit).

    ``account`` is the path of the account whose limit stood in the way, ``limit`` that limit.
    """

    def __init__(self, message: str, *, account: str | None = None,
                 limit: int | None = None) -> None:
        super().__init__(message)
        self.account = account
        self.limit = limit


class LimitWaitTimeout(LimitExceeded, TimeoutExpired):
    """A blocking charge waited past its timeout for room under a limit."""


class AccountingError(ZcnetError, ValueError):
    """Unbalanced accounting: uncharging or moving more bytes than were charged."""


class PoolError(ZcnetError):
    """Misuse of a buffer pool: double release, foreign buffer, pool closed."""
