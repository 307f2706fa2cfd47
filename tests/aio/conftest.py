"""Fixtures for zcnet.aio: every behavioural test runs on asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dev dependency
    uvloop = None

LOOPS = ["asyncio", "uvloop"]
Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of fresh event loops of ``kind`` ("asyncio" or "uvloop")."""
    if kind == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed")
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.SelectorEventLoop


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_kind: str) -> Iterator[Runner]:
    """``run(coro)`` runs a coroutine to completion on one loop of the parametrized kind."""
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:

        def run_one(coro: Coroutine[Any, Any, Any]) -> Any:
            return runner.run(asyncio.wait_for(coro, 60))

        yield run_one
