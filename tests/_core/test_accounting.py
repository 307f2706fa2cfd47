"""Pure accounting rules: table tests and a hypothesis state machine over an account tree."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from zcnet._core.accounting import (
    KINDS,
    MAPPED,
    PINNED,
    POOL,
    Account,
    AccountingError,
    Charge,
)
from zcnet.errors import LimitExceeded, ZcnetError


def test_charge_propagates_to_ancestors_and_back() -> None:
    root = Account("root", limit=1000)
    a = Account("a", limit=600, parent=root)
    b = Account("b", parent=a)
    h = b.charge(500, PINNED)
    assert (root.usage(PINNED), a.usage(PINNED), b.usage(PINNED)) == (500, 500, 500)
    assert (root.local_usage(), a.local_usage(), b.local_usage()) == (0, 0, 500)
    assert b.path == "root/a/b"
    assert b.headroom() == 100
    h.release()
    h.release()  # idempotent
    assert h.released
    assert root.usage() == a.usage() == b.usage() == 0


@pytest.mark.parametrize(
    ("limits", "charges", "nbytes", "blocked_by"),
    [
        ((100, None, None), [], 101, "root"),
        ((None, 50, None), [], 51, "root/a"),
        ((None, None, 10), [], 11, "root/a/b"),
        ((100, None, None), [60], 41, "root"),
        ((100, 80, 90), [70], 11, "root/a"),
        ((100, 80, 90), [70], 10, None),
        ((0, None, None), [], 0, None),
    ],
)
def test_limits_all_or_nothing(
    limits: tuple[int | None, int | None, int | None],
    charges: list[int],
    nbytes: int,
    blocked_by: str | None,
) -> None:
    root = Account("root", limit=limits[0])
    a = Account("a", limit=limits[1], parent=root)
    b = Account("b", limit=limits[2], parent=a)
    for n in charges:
        b.charge(n, MAPPED)
    before = [x.usage() for x in (root, a, b)]
    blocker = b.blocking_account(nbytes)
    assert (blocker.path if blocker else None) == blocked_by
    ok = b.try_charge(nbytes, MAPPED)
    assert ok == (blocked_by is None)
    if not ok:
        assert [x.usage() for x in (root, a, b)] == before
        with pytest.raises(LimitExceeded, match=str(blocked_by)) as ei:
            b.charge(nbytes, MAPPED)
        assert getattr(ei.value, "account", None) == blocked_by
        assert isinstance(ei.value, ZcnetError)


def test_uncharge_more_than_charged_is_an_error() -> None:
    root = Account("root")
    child = Account("c", parent=root)
    child.charge(10, PINNED)
    with pytest.raises(AccountingError, match="holds only 10"):
        child.uncharge(11, PINNED)
    with pytest.raises(AccountingError):
        child.uncharge(1, MAPPED)
    with pytest.raises(AccountingError):
        root.uncharge(1, PINNED)  # charged to the child, not the root
    assert child.usage(PINNED) == 10


def test_move_relabels_without_changing_totals_or_checking_limits() -> None:
    root = Account("root", limit=100)
    h = root.charge(100, POOL)
    h.move_to(PINNED)
    assert root.usage(POOL) == 0 and root.usage(PINNED) == 100 and root.usage() == 100
    h.move_to(POOL)
    with pytest.raises(AccountingError):
        root.move(101, POOL, PINNED)
    h.release()
    with pytest.raises(AccountingError):
        h.move_to(PINNED)
    assert root.usage() == 0


def test_shrink_keeps_part_of_a_reservation() -> None:
    root = Account("root", limit=100)
    h = root.charge(100, MAPPED)
    h.shrink(30)
    assert h.nbytes == 30 and root.usage(MAPPED) == 30
    with pytest.raises(AccountingError, match="grow"):
        h.shrink(31)
    h.release()
    with pytest.raises(AccountingError):
        h.shrink(0)
    assert root.usage() == 0


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda a: a.charge(-1, PINNED), ValueError),
        (lambda a: a.charge(1, "swap"), ValueError),
        (lambda a: a.charge(1.5, PINNED), TypeError),
        (lambda a: a.charge(True, PINNED), TypeError),
        (lambda a: Account("", parent=a), ValueError),
        (lambda a: Account("x/y", parent=a), ValueError),
        (lambda a: Account("x", limit=-1), ValueError),
    ],
)
def test_bad_arguments(call: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(Account("root"))  # type: ignore[operator]


def test_snapshot_and_charge_context_manager() -> None:
    root = Account("root", limit=10)
    kid = Account("kid", parent=root)
    with kid.charge(4, MAPPED) as h:
        assert isinstance(h, Charge) and "live" in repr(h)
        snap = root.snapshot()
        assert snap.usage[MAPPED] == 4 and snap.local[MAPPED] == 0 and snap.total == 4
        assert snap.children[0].path == "root/kid" and snap.children[0].local[MAPPED] == 4
    assert root.usage() == 0
    root.set_limit(None)
    assert root.headroom() is None


# -- the state machine --------------------------------------------------------------------------
# A tree: root -> {a, b}, a -> {a1}. Operations stand for what zcnet does: a zero-copy send
# (pinned), its completion, a mapped receive and its release, a pool lease (pool) going in flight
# (pool -> pinned) and completing (pinned -> pool), and raw uncharges. The model keeps every live
# handle; invariants check usage against the model and limits at every account.

NAMES = ("root", "a", "b", "a1")
PARENT = {"root": None, "a": "root", "b": "root", "a1": "a"}


class AccountingMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, Account] = {}
        self.live: list[Charge] = []

    @rule(limits=st.tuples(*[st.one_of(st.none(), st.integers(0, 400))] * 4))
    @precondition(lambda self: not self.accounts)
    def build(self, limits: tuple[int | None, ...]) -> None:
        for name, limit in zip(NAMES, limits, strict=True):
            parent = PARENT[name]
            self.accounts[name] = Account(
                name, limit=limit, parent=self.accounts[parent] if parent else None
            )

    def _expected_block(self, acct: Account, nbytes: int) -> bool:
        node: Account | None = acct
        while node is not None:
            if node.limit is not None and self._model_usage(node) + nbytes > node.limit:
                return True
            node = node.parent
        return False

    def _subtree(self, acct: Account) -> list[Account]:
        out = [acct]
        for c in acct.children:
            out.extend(self._subtree(c))
        return out

    def _model_usage(self, acct: Account, kind: str | None = None) -> int:
        members = {id(a) for a in self._subtree(acct)}
        return sum(
            h.nbytes
            for h in self.live
            if id(h.account) in members and (kind is None or h.kind == kind)
        )

    @rule(target=handles, name=st.sampled_from(NAMES), nbytes=st.integers(0, 200),
          kind=st.sampled_from(KINDS))
    @precondition(lambda self: bool(self.accounts))
    def charge(self, name: str, nbytes: int, kind: str) -> Charge | None:
        acct = self.accounts[name]
        blocked = self._expected_block(acct, nbytes)
        if blocked:
            with pytest.raises(LimitExceeded):
                acct.charge(nbytes, kind)
            return None
        h = acct.charge(nbytes, kind)
        self.live.append(h)
        return h

    @rule(h=consumes(handles))
    def release(self, h: Charge | None) -> None:
        if h is None:
            return
        h.release()
        self.live.remove(h)
        h.release()

    @rule(h=handles, kind=st.sampled_from(KINDS))
    def move(self, h: Charge | None, kind: str) -> None:
        if h is None or h.released:
            return
        h.move_to(kind)

    @rule(name=st.sampled_from(NAMES), kind=st.sampled_from(KINDS), extra=st.integers(1, 50))
    @precondition(lambda self: bool(self.accounts))
    def over_uncharge_is_refused(self, name: str, kind: str, extra: int) -> None:
        acct = self.accounts[name]
        with pytest.raises(AccountingError):
            acct.uncharge(acct.local_usage(kind) + extra, kind)

    @rule(name=st.sampled_from(NAMES), limit=st.one_of(st.none(), st.integers(0, 400)))
    @precondition(lambda self: bool(self.accounts))
    def set_limit(self, name: str, limit: int | None) -> None:
        acct = self.accounts[name]
        if limit is not None and limit < acct.usage():
            return  # lowering below usage is allowed but would break the limit invariant
        acct.set_limit(limit)

    @invariant()
    def usage_matches_model(self) -> None:
        for acct in self.accounts.values():
            for kind in KINDS:
                assert acct.usage(kind) == self._model_usage(acct, kind)

    @invariant()
    def limits_hold_everywhere(self) -> None:
        for acct in self.accounts.values():
            if acct.limit is not None:
                assert acct.usage() <= acct.limit

    def teardown(self) -> None:
        for h in list(self.live):
            h.release()
        for acct in self.accounts.values():
            assert acct.usage() == 0 and acct.local_usage() == 0


AccountingMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                               deadline=None)
TestAccountingMachine = AccountingMachine.TestCase
