"""zcnet's error hierarchy: one base, errors by meaning.

Kernel failures are translated once, at the I/O boundary, into these types; the original
``OSError`` is kept as ``__cause__``. Everything zcnet raises on purpose derives from
:class:`ZcnetError`, so ``except zcnet.ZcnetError`` catches all of it.

This module is the bottom layer of the package: every other module may import it, and it imports
nothing of zcnet (docs/ARCHITECTURE.md, 'Layers and modules'; enforced by tests/test_layers.py).
The benchmark harness's own failures (``zcnet.bench``: ``ProtocolError`` between its processes,
``WorkerError`` for a worker process that died, ``PatternMismatch`` for a wrong byte) report on
the harness or on a test, not on the library, and stay outside this hierarchy.
"""

from __future__ import annotations

import errno
from typing import Final, Literal

__all__ = [
    "CONNECTION_LOST_ERRNOS",
    "AccountingError",
    "BufferLifetimeError",
    "ConcurrentUseError",
    "ConnectionResetByPeer",
    "InvalidBufferError",
    "InvalidCompletionError",
    "LimitExceeded",
    "LimitWaitTimeout",
    "ModeUnavailable",
    "NetnsUnavailable",
    "PoolError",
    "ReceiveError",
    "SendError",
    "SocketClosedError",
    "TimeoutExpired",
    "UnsupportedSocketError",
    "ZcnetError",
    "ZerocopyUnavailable",
    "translate_os_error",
]

#: Errors that mean a TCP connection is gone, whichever call reports them. On a datagram socket
#: these fail one call only (an ICMP error for one datagram), so the translator makes them a
#: :class:`SendError` / :class:`ReceiveError` there.
CONNECTION_LOST_ERRNOS: Final = frozenset({
    errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN,
    errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED,
})


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


class NetnsUnavailable(ZcnetError, RuntimeError):
    """A private network namespace cannot be created or configured here.

    Not root, no iproute2, a kernel without namespaces, or an ``ip``/``sysctl`` step that failed
    (:mod:`zcnet.netns`). ``RuntimeError`` stays a base for code written before the hierarchy.
    """


class ModeUnavailable(ZcnetError, RuntimeError):
    """A benchmark mode cannot run here: an optional dependency (uvloop) or a zcnet part is
    missing, the kernel lacks a feature, or the mode or loop name is unknown.

    Not a :class:`ZerocopyUnavailable`: most reasons have nothing to do with zero-copy, and code
    that catches ``ZerocopyUnavailable`` to fall back to copies must not catch "uvloop is not
    installed". Where zero-copy itself is what is missing, the ``ZerocopyUnavailable`` is the
    ``__cause__``. ``RuntimeError`` stays a base for code written before the hierarchy.
    """


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


class ConcurrentUseError(ZcnetError, RuntimeError):
    """An object that must be used by one thread at a time was entered twice at once.

    Raised, for example, when two threads call one :class:`~zcnet.sender.Sender` together, or
    when a ticket's done callback sends on the Sender that is reaping it.
    """


Operation = Literal["send", "receive", "close", "setup"]


def translate_os_error(e: OSError, op: Operation, *, stream: bool = True) -> ZcnetError:
    """The one map from a kernel error to zcnet's hierarchy; ``e`` becomes ``__cause__``.

    Args:
        e: what the system call raised.
        op: what was being done; names the error and picks :class:`SendError` or
            :class:`ReceiveError` for errors that are not a lost connection.
        stream: ``False`` for a datagram socket, where a "connection lost" errno is the failure
            of one datagram, not of the socket.

    ``EBADF`` is :class:`SocketClosedError`; :data:`CONNECTION_LOST_ERRNOS` on a stream socket
    are :class:`ConnectionResetByPeer`; anything else is :class:`SendError` (send, close, setup)
    or :class:`ReceiveError` (receive).
    """
    code = e.errno
    detail = e.strerror or str(e)
    err: ZcnetError
    if code == errno.EBADF:
        err = SocketClosedError(f"{op}: the socket was closed underneath ({detail})")
    elif stream and (code in CONNECTION_LOST_ERRNOS or isinstance(e, ConnectionError)):
        err = ConnectionResetByPeer(f"{op}: connection lost ({detail})")
    elif op == "receive":
        err = ReceiveError(f"receive failed: {detail}")
    else:
        err = SendError(f"{op} failed: {detail}")
    err.__cause__ = e
    return err
