"""The zero-copy send policy, sans-I/O: when to use ``MSG_ZEROCOPY``, when to stop, what to count.

Theory of operation (Documentation/networking/msg_zerocopy.rst; docs/ARCHITECTURE.md, 'Transmit'):

* zero-copy pays only for large sends (pinning pages and reading notifications cost more than a
  copy below roughly 10 KB), so sends under ``zerocopy_threshold`` are plain copies;
* a notification with ``SO_EE_CODE_ZEROCOPY_COPIED`` means the kernel copied after all (always
  so over loopback and veth); pin-then-copy costs more than a copy, so after
  ``copied_fallback_after`` such send calls the socket switches to copy mode for good (Folly's
  rule), unless ``force_zerocopy`` keeps ``MSG_ZEROCOPY`` on (tests, and receive-side zero-copy
  over loopback, which needs a zero-copy sender);
* ``ENOBUFS`` from a zero-copy send means the notification budget (``net.core.optmem_max``) or
  the locked-memory limit is exhausted: back-pressure, not failure. Reap completions and retry,
  at most ``enobufs_retries`` times for one send call, then send that piece with a copy. With no
  send outstanding there is nothing to reap, so it copies at once; after
  ``ENOBUFS_COPIES_BEFORE_FALLBACK`` pieces in a row went out as copies (a budget too small for
  even one notification) the socket switches to copy mode unless ``force_zerocopy``. ``ENOBUFS`` is
  never raised to the caller.

:class:`TxController` holds this state and the counters behind :class:`SenderStats`. The blocking
:class:`zcnet.sender.Sender` and an asyncio layer share it; only their I/O differs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from zcnet._accel import speedups

__all__ = [
    "ENOBUFS_COPIES_BEFORE_FALLBACK",
    "PLAIN_ENOBUFS_ATTEMPTS",
    "REAP_EVERY",
    "ZC_CHUNK",
    "EnobufsAction",
    "SendPolicy",
    "SenderStats",
    "TxController",
]

#: Consecutive ENOBUFS-forced copies after which a non-forced socket stops trying zero-copy.
ENOBUFS_COPIES_BEFORE_FALLBACK: Final = 16
#: Largest piece of a TCP buffer sent by one zero-copy call: keeps the pinned (RLIMIT_MEMLOCK
#: charged) amount per call moderate; every call costs one counter value, completions coalesce.
ZC_CHUNK: Final = 1 << 20
#: Read the error queue once this many "reap units" were sent with zero-copy: one unit per call
#: plus one per 128 KiB (64 KiB datagrams: every 64 calls; 1 MiB pieces, 9 units each: every
#: 8th call). The kernel coalesces completions meanwhile, and a copied-completion fallback is
#: noticed early.
REAP_EVERY: Final = 64
REAP_SHIFT: Final = 17
#: Copying-send attempts of one piece that keeps failing with ENOBUFS (a full device queue on
#: UDP, or memory pressure), each after a short wait, before the send fails.
PLAIN_ENOBUFS_ATTEMPTS: Final = 64

Mode = Literal["zerocopy", "copy"]
#: How zero-copy sends reach the kernel (docs/ARCHITECTURE.md, 'Transmit: the io_uring engine').
Engine = Literal["msg_zerocopy", "io_uring", "auto"]
ENGINES: Final[tuple[str, ...]] = ("msg_zerocopy", "io_uring", "auto")
#: The environment variable that sets :attr:`SendPolicy.engine` where the policy leaves it None.
ENGINE_ENV: Final = "ZCNET_SEND_ENGINE"


def resolve_engine(engine: Engine | None, environ: Mapping[str, str]) -> Engine:
    """The engine a policy's ``engine`` means: itself, or (``None``) ``environ[ENGINE_ENV]``,
    else ``"msg_zerocopy"``.

    Raises:
        ValueError: the environment names no engine.
    """
    if engine is not None:
        return engine
    value = environ.get(ENGINE_ENV) or "msg_zerocopy"
    if value not in ENGINES:
        raise ValueError(f"{ENGINE_ENV}={value!r}: expected one of {', '.join(ENGINES)}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """Knobs of a :class:`~zcnet.sender.Sender`.

    Attributes:
        zerocopy_threshold: sends smaller than this many bytes are plain copies.
        force_zerocopy: keep ``MSG_ZEROCOPY`` even after the kernel reports copies.
        copied_fallback_after: zero-copy send calls reported copied before switching to copy.
        enobufs_retries: reap-and-retry rounds on ``ENOBUFS`` before a copying send.
        drain_timeout: seconds ``close()`` waits for outstanding completions.
        engine: how zero-copy sends reach the kernel: ``"msg_zerocopy"`` (``send(2)`` with
            ``MSG_ZEROCOPY``, completions on the error queue), ``"io_uring"`` (``SEND_ZC`` on an
            io_uring, pool leases from registered memory; the Sender raises
            :class:`~zcnet.errors.ZerocopyUnavailable` where it cannot be used) or ``"auto"``
            (``MSG_ZEROCOPY``, which measures as cheap or cheaper, unless it cannot send the
            socket's data uncopied and io_uring can: ``IP_RECVERR`` on a UDP socket,
            ``net.core.optmem_max`` too small for a notification; ``stats.engine_reason``
            says why io_uring was not taken). ``None`` (the default): ``$ZCNET_SEND_ENGINE``
            when the Sender is made, else ``"msg_zerocopy"``.
    """

    zerocopy_threshold: int = 10 * 1024
    force_zerocopy: bool = False
    copied_fallback_after: int = 1
    enobufs_retries: int = 8
    drain_timeout: float = 5.0
    engine: Engine | None = None

    def __post_init__(self) -> None:
        if self.zerocopy_threshold < 0:
            raise ValueError("zerocopy_threshold must be >= 0")
        if self.copied_fallback_after < 1:
            raise ValueError("copied_fallback_after must be >= 1")
        if self.enobufs_retries < 0:
            raise ValueError("enobufs_retries must be >= 0")
        if self.drain_timeout < 0:
            raise ValueError("drain_timeout must be >= 0")
        if self.engine is not None and self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")


@dataclass(frozen=True, slots=True)
class SenderStats:
    """A snapshot of a sender's counters.

    Bytes are counted once each: ``bytes_zerocopy`` (completed, not copied by the kernel),
    ``bytes_copied`` (sent with ``MSG_ZEROCOPY`` but reported copied by the kernel),
    ``bytes_plain`` (sent with a plain copying send), ``bytes_pending`` (zero-copy, not yet
    completed). ``sends_*`` count send calls (one per datagram of a ``sendmmsg`` batch, which is
    what the kernel's zero-copy counter counts), ``completions`` the zero-copy calls completed,
    ``notifications`` the completion messages read, ``enobufs`` the ``ENOBUFS`` errors absorbed,
    ``other_errors`` the non-zero-copy messages seen on the error queue (e.g. ICMP errors).
    ``engine`` is the send engine in use (``"msg_zerocopy"`` or ``"io_uring"``) and
    ``engine_reason`` why ``"auto"`` did not pick io_uring; on io_uring, ``sends_registered``
    counts zero-copy sends from registered memory, ``registered_bytes`` the pool slabs
    registered with the ring, and ``registration_reason`` why leases go unregistered.
    """

    bytes_zerocopy: int
    bytes_copied: int
    bytes_plain: int
    bytes_pending: int
    sends_zerocopy: int
    sends_plain: int
    completions: int
    notifications: int
    enobufs: int
    other_errors: int
    mode: Mode
    fallback_reason: str | None
    engine: str = "msg_zerocopy"
    engine_reason: str | None = None
    sends_registered: int = 0
    registered_bytes: int = 0
    registration_reason: str | None = None


class EnobufsAction(enum.Enum):
    """What to do after a zero-copy send call failed with ``ENOBUFS``."""

    REAP_AND_RETRY = "reap_and_retry"
    COPY = "copy"


class _PyCounters:
    """The counters of :class:`TxController` (the compiled implementation keeps them in C)."""

    __slots__ = (
        "bytes_copied",
        "bytes_pending",
        "bytes_plain",
        "bytes_zerocopy",
        "completions",
        "copied_calls",
        "enobufs",
        "enobufs_copies",
        "enobufs_round",
        "handed",
        "notifications",
        "other_errors",
        "reap_units",
        "sends_plain",
        "sends_zerocopy",
        "threshold",
        "zerocopy",
    )

    bytes_copied: int
    bytes_pending: int
    bytes_plain: int
    bytes_zerocopy: int
    completions: int
    copied_calls: int
    enobufs: int
    enobufs_copies: int
    enobufs_round: int
    handed: int
    notifications: int
    other_errors: int
    reap_units: int
    sends_plain: int
    sends_zerocopy: int
    threshold: int
    zerocopy: bool


# The compiled send path (src/zcnet/_ext/txfast.c) reads and bumps these counters in place: with
# the extension they live in its C base class, the same integers for the policy and for it.
if TYPE_CHECKING or speedups is None:  # noqa: SIM108 (mypy reads the first branch)
    _Counters = _PyCounters
else:
    _Counters = speedups.TxCounters


class TxController(_Counters):
    """Policy state of one sending socket; the I/O layer reports events and asks for decisions.

    The counters are plain attributes so the I/O layer's hot path can bump them directly.
    """

    __slots__ = ("fallback_reason", "policy")

    def __init__(self, policy: SendPolicy) -> None:
        self.policy = policy
        self.threshold = policy.zerocopy_threshold
        self.zerocopy = True
        self.fallback_reason: str | None = None
        self.bytes_zerocopy = 0
        self.bytes_copied = 0
        self.bytes_plain = 0
        self.bytes_pending = 0
        self.sends_zerocopy = 0
        self.sends_plain = 0
        self.completions = 0
        self.notifications = 0
        self.enobufs = 0
        self.enobufs_round = 0
        self.enobufs_copies = 0
        self.other_errors = 0
        self.copied_calls = 0
        self.reap_units = 0  # zero-copy work since the error queue was last read (REAP_EVERY)
        self.handed = 0  # bytes handed to the kernel (SendEngine.handed)

    @property
    def mode(self) -> Mode:
        """``"zerocopy"`` while ``MSG_ZEROCOPY`` may be used, ``"copy"`` after the fallback."""
        return "zerocopy" if self.zerocopy else "copy"

    def use_zerocopy(self, nbytes: int) -> bool:
        """Whether a send of ``nbytes`` should use ``MSG_ZEROCOPY``."""
        return self.zerocopy and nbytes >= self.threshold

    def disable(self, reason: str) -> None:
        """Switch to copy mode for good (the first reason is kept)."""
        if self.zerocopy:
            self.zerocopy = False
            self.fallback_reason = reason

    def on_zerocopy_sent(self, nbytes: int) -> None:
        """A zero-copy send call succeeded with ``nbytes``."""
        self.sends_zerocopy += 1
        self.bytes_pending += nbytes
        self.enobufs_round = 0
        self.enobufs_copies = 0

    def on_zerocopy_batch(self, calls: int, nbytes: int) -> None:
        """``calls`` zero-copy datagrams (one ``sendmmsg``) succeeded, ``nbytes`` in total."""
        self.sends_zerocopy += calls
        self.bytes_pending += nbytes
        self.enobufs_round = 0
        self.enobufs_copies = 0

    def reap_due(self, nbytes: int, calls: int = 1) -> bool:
        """Count ``calls`` zero-copy calls of ``nbytes`` in all; True once the error queue should
        be read (see :data:`REAP_EVERY`). The I/O layer calls :meth:`reaped` when it read it."""
        units = self.reap_units + calls + (nbytes >> REAP_SHIFT)
        self.reap_units = units
        return units >= REAP_EVERY

    def reaped(self) -> None:
        """The error queue was just read."""
        self.reap_units = 0

    def on_plain_sent(self, nbytes: int, calls: int = 1) -> None:
        """Plain (copying) send calls handed ``nbytes`` to the kernel."""
        self.sends_plain += calls
        self.bytes_plain += nbytes

    def on_enobufs(self, outstanding: int = 1) -> EnobufsAction:
        """A zero-copy send call failed with ``ENOBUFS``: retry after reaping, or copy.

        ``outstanding`` is the number of zero-copy calls not yet completed (0: nothing to reap).
        """
        self.enobufs += 1
        self.enobufs_round += 1
        if outstanding and self.enobufs_round <= self.policy.enobufs_retries:
            return EnobufsAction.REAP_AND_RETRY
        self.enobufs_round = 0
        self.enobufs_copies += 1
        if (
            self.enobufs_copies >= ENOBUFS_COPIES_BEFORE_FALLBACK
            and not self.policy.force_zerocopy
        ):
            self.disable(
                f"ENOBUFS on {self.enobufs_copies} zero-copy sends in a row "
                "(net.core.optmem_max or RLIMIT_MEMLOCK too small)"
            )
        return EnobufsAction.COPY

    @staticmethod
    def plain_enobufs_wait(attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0-based) of a copying send that got
        ``ENOBUFS`` (a full device queue): 1 ms more per attempt, at most 50 ms."""
        return min(0.001 * (attempt + 1), 0.05)

    def enobufs_wait(self) -> float:
        """Seconds to wait for completions before the current ``ENOBUFS`` retry (backs off)."""
        return float(min(0.0005 * (1 << min(self.enobufs_round, 16)), 0.05))

    def on_completion(self, calls: int, nbytes: int, copied: bool) -> None:
        """A notification completed ``calls`` send calls carrying ``nbytes``."""
        self.notifications += 1
        self.completions += calls
        self.bytes_pending -= nbytes
        if not copied:
            self.bytes_zerocopy += nbytes
            return
        self.bytes_copied += nbytes
        self.copied_calls += calls
        if (
            self.zerocopy
            and not self.policy.force_zerocopy
            and calls
            and self.copied_calls >= self.policy.copied_fallback_after
        ):
            self.disable(
                f"the kernel copied {self.copied_calls} zero-copy send call(s) "
                "(loopback, veth or a device without scatter-gather): copying is cheaper"
            )

    def on_other_error(self) -> None:
        """A non-zero-copy message (e.g. an ICMP error) was read from the error queue."""
        self.other_errors += 1

    def stats(self) -> SenderStats:
        """A frozen snapshot of the counters."""
        return SenderStats(
            bytes_zerocopy=self.bytes_zerocopy,
            bytes_copied=self.bytes_copied,
            bytes_plain=self.bytes_plain,
            bytes_pending=self.bytes_pending,
            sends_zerocopy=self.sends_zerocopy,
            sends_plain=self.sends_plain,
            completions=self.completions,
            notifications=self.notifications,
            enobufs=self.enobufs,
            other_errors=self.other_errors,
            mode=self.mode,
            fallback_reason=self.fallback_reason,
        )
