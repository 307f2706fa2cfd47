"""Hierarchical memory accounts for pinned, mapped and pooled bytes (pure logic).

Theory of operation: accounts form a tree like memory cgroups v2 (Documentation/admin-guide/
cgroup-v2.rst, "Memory"; mm/page_counter.c). A charge is made to exactly one account and is
propagated to every ancestor's hierarchical counter, all-or-nothing: it succeeds only if no
account on the path to the root would go over its limit (``page_counter_try_charge``). Each byte
is charged once, to one account, under one *kind*:

- ``"pinned"``: bytes of in-flight ``MSG_ZEROCOPY`` sends the kernel may still read
  (Documentation/networking/msg_zerocopy.rst);
- ``"mapped"``: received pages held mapped by ``TCP_ZEROCOPY_RECEIVE`` (net/ipv4/tcp.c);
- ``"pool"``: idle (or leased but not in flight) memory of a buffer pool.

A pool buffer that goes in flight does not get a second charge: :meth:`Account.move` (or
:meth:`Charge.move_to`) re-labels its bytes from ``"pool"`` to ``"pinned"`` and back when the
kernel reports completion. A move never changes any total, so it can never exceed a limit.
:class:`Charge` handles uncharge exactly once, which makes balanced accounting the easy path.

This module holds no locks; :mod:`zcnet.accounting` wraps it for threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from zcnet.errors import AccountingError, LimitExceeded

__all__ = [
    "KINDS",
    "MAPPED",
    "PINNED",
    "POOL",
    "Account",
    "AccountStats",
    "AccountingError",
    "Charge",
]

PINNED: Final = "pinned"
MAPPED: Final = "mapped"
POOL: Final = "pool"
KINDS: Final[tuple[str, ...]] = (PINNED, MAPPED, POOL)


def _check_nbytes(nbytes: int) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return nbytes


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


@dataclass(frozen=True, slots=True)
class AccountStats:
    """A snapshot of one account and its subtree.

    ``usage`` is hierarchical (this account and all descendants), ``local`` only what was
    charged to this account directly; both map each kind to bytes.
    """

    name: str
    path: str
    limit: int | None
    usage: dict[str, int]
    local: dict[str, int]
    children: tuple[AccountStats, ...]

    @property
    def total(self) -> int:
        """Hierarchical bytes of all kinds."""
        return sum(self.usage.values())


class Charge:
    """A handle to bytes charged to one account; uncharges exactly once.

    ``release()`` is idempotent; the handle is also a context manager. ``move_to(kind)``
    re-labels the bytes (e.g. ``"pool"`` -> ``"pinned"``) without changing any total.
    """

    __slots__ = ("_account", "_kind", "_nbytes", "_released")

    def __init__(self, account: Account, nbytes: int, kind: str) -> None:
        self._account = account
        self._nbytes = nbytes
        self._kind = kind
        self._released = False

    @property
    def account(self) -> Account:
        """The account charged."""
        return self._account

    @property
    def nbytes(self) -> int:
        """Bytes charged."""
        return self._nbytes

    @property
    def kind(self) -> str:
        """Current kind of the charged bytes."""
        return self._kind

    @property
    def released(self) -> bool:
        """True once the bytes were uncharged."""
        return self._released

    def release(self) -> None:
        """Uncharge the bytes; later calls do nothing."""
        self._account._release_charge(self)

    def move_to(self, kind: str) -> None:
        """Re-label the charged bytes as ``kind`` (no limit check: totals do not change)."""
        self._account._move_charge(self, kind)

    def shrink(self, nbytes: int) -> None:
        """Keep only ``nbytes`` charged (uncharge the rest), e.g. a reservation once used."""
        self._account._shrink_charge(self, nbytes)

    def __enter__(self) -> Charge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "live"
        return f"<Charge {self._nbytes} {self._kind} bytes to {self._account.path!r} ({state})>"


class Account:
    """A node of an accounting tree with an optional byte limit.

    Args:
        name: the account's name (its path is the names from the root, joined with ``/``).
        limit: maximum hierarchical bytes (all kinds together), or ``None`` for no limit.
        parent: the parent account; charges here also count against every ancestor's limit.
    """

    __slots__ = ("__weakref__", "_children", "_limit", "_local", "_name", "_parent", "_usage")

    def __init__(self, name: str, limit: int | None = None, parent: Account | None = None) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"account name must be a non-empty string without '/': {name!r}")
        self._name = name
        self._limit = _check_limit(limit)
        self._parent = parent
        self._children: list[Account] = []
        self._local = dict.fromkeys(KINDS, 0)
        self._usage = dict.fromkeys(KINDS, 0)
        if parent is not None:
            parent._children.append(self)

    # -- structure ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The account's own name."""
        return self._name

    @property
    def path(self) -> str:
        """Names from the root to this account, joined with ``/``."""
        names = [a._name for a in self._lineage()]
        return "/".join(reversed(names))

    @property
    def parent(self) -> Account | None:
        """The parent account, or ``None`` for a root."""
        return self._parent

    @property
    def children(self) -> tuple[Account, ...]:
        """Direct children, in creation order."""
        return tuple(self._children)

    @property
    def limit(self) -> int | None:
        """The byte limit (all kinds, hierarchical), or ``None``."""
        return self._limit

    def set_limit(self, limit: int | None) -> None:
        """Change the limit; lowering it below current usage only makes new charges fail."""
        self._limit = _check_limit(limit)

    def _lineage(self) -> list[Account]:
        out: list[Account] = []
        node: Account | None = self
        while node is not None:
            out.append(node)
            node = node._parent
        return out

    # -- reading ------------------------------------------------------------------------------
    def usage(self, kind: str | None = None) -> int:
        """Hierarchical bytes of ``kind`` (or of all kinds) charged here and below."""
        if kind is None:
            return sum(self._usage.values())
        return self._usage[_check_kind(kind)]

    def local_usage(self, kind: str | None = None) -> int:
        """Bytes of ``kind`` (or all kinds) charged to this account itself."""
        if kind is None:
            return sum(self._local.values())
        return self._local[_check_kind(kind)]

    def headroom(self) -> int | None:
        """Bytes that could still be charged here before some limit is hit (``None``: no limit)."""
        room: int | None = None
        for acct in self._lineage():
            if acct._limit is not None:
                r = max(0, acct._limit - acct.usage())
                room = r if room is None else min(room, r)
        return room

    def blocking_account(self, nbytes: int) -> Account | None:
        """The nearest account whose limit a charge of ``nbytes`` here would exceed."""
        _check_nbytes(nbytes)
        for acct in self._lineage():
            if acct._limit is not None and acct.usage() + nbytes > acct._limit:
                return acct
        return None

    def snapshot(self) -> AccountStats:
        """A frozen snapshot of this account and its subtree."""
        return AccountStats(
            name=self._name,
            path=self.path,
            limit=self._limit,
            usage=dict(self._usage),
            local=dict(self._local),
            children=tuple(c.snapshot() for c in self._children),
        )

    # -- charging -----------------------------------------------------------------------------
    def try_charge(self, nbytes: int, kind: str) -> bool:
        """Charge ``nbytes`` of ``kind`` if no limit up the tree would be exceeded.

        All or nothing: on ``False`` nothing was charged anywhere.
        """
        _check_kind(kind)
        if self.blocking_account(nbytes) is not None:
            return False
        self._local[kind] += nbytes
        for acct in self._lineage():
            acct._usage[kind] += nbytes
        return True

    def charge(self, nbytes: int, kind: str) -> Charge:
        """Charge ``nbytes`` of ``kind`` and return a handle that uncharges it.

        Raises:
            LimitExceeded: the charge would exceed this account's or an ancestor's limit.
        """
        if not self.try_charge(nbytes, kind):
            raise self._limit_error(nbytes, kind)
        return Charge(self, nbytes, kind)

    def _limit_error(self, nbytes: int, kind: str) -> LimitExceeded:
        acct = self.blocking_account(nbytes)
        if acct is None:  # the limit moved between the check and now; report our own
            acct = self
        err = LimitExceeded(
            f"charging {nbytes} {kind} bytes to account {self.path!r} would exceed the limit "
            f"of account {acct.path!r} ({acct.limit} bytes, {acct.usage()} in use)",
            account=acct.path, limit=acct.limit,
        )
        return err

    def uncharge(self, nbytes: int, kind: str) -> None:
        """Give back ``nbytes`` of ``kind`` charged to this account.

        Raises:
            AccountingError: more than this account holds of that kind.
        """
        _check_nbytes(nbytes)
        _check_kind(kind)
        if nbytes > self._local[kind]:
            raise AccountingError(
                f"uncharging {nbytes} {kind} bytes from account {self.path!r}, "
                f"which holds only {self._local[kind]}"
            )
        self._local[kind] -= nbytes
        for acct in self._lineage():
            acct._usage[kind] -= nbytes

    def move(self, nbytes: int, from_kind: str, to_kind: str) -> None:
        """Re-label ``nbytes`` charged here from one kind to another; totals are unchanged.

        Raises:
            AccountingError: this account holds fewer than ``nbytes`` of ``from_kind``.
        """
        _check_nbytes(nbytes)
        _check_kind(from_kind)
        _check_kind(to_kind)
        if nbytes > self._local[from_kind]:
            raise AccountingError(
                f"moving {nbytes} bytes from {from_kind} to {to_kind} in account "
                f"{self.path!r}, which holds only {self._local[from_kind]} {from_kind} bytes"
            )
        self._local[from_kind] -= nbytes
        self._local[to_kind] += nbytes
        for acct in self._lineage():
            acct._usage[from_kind] -= nbytes
            acct._usage[to_kind] += nbytes

    # -- handle support (overridden by the thread-safe wrapper to take its lock) --------------
    def _release_charge(self, handle: Charge) -> None:
        if handle._released:
            return
        self.uncharge(handle._nbytes, handle._kind)
        handle._released = True

    def _move_charge(self, handle: Charge, kind: str) -> None:
        if handle._released:
            raise AccountingError(f"{handle!r} was already released")
        if kind != handle._kind:
            self.move(handle._nbytes, handle._kind, kind)
            handle._kind = kind

    def _shrink_charge(self, handle: Charge, nbytes: int) -> None:
        _check_nbytes(nbytes)
        if handle._released:
            raise AccountingError(f"{handle!r} was already released")
        if nbytes > handle._nbytes:
            raise AccountingError(f"cannot grow {handle!r} to {nbytes} bytes by shrinking")
        self.uncharge(handle._nbytes - nbytes, handle._kind)
        handle._nbytes = nbytes

    def __repr__(self) -> str:
        return f"<Account {self.path!r} limit={self._limit} usage={self.usage()}>"
