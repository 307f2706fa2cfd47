"""Fixtures for the Dask comm backend tests: skip without Dask, register ``zc``, run coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

pytest.importorskip("distributed", reason="the dask extra (distributed) is not installed")
pytest.importorskip("numpy", reason="the dask extra (numpy) is not installed")

from distributed.comm import registry

from zcnet.contrib.dask import ZCBackend

T = TypeVar("T")


@pytest.fixture(autouse=True)
def zc_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[ZCBackend]:
    """Register the backend in this process (worker processes use the entry point)."""
    backend = ZCBackend()
    monkeypatch.setitem(registry.backends, "zc", backend)
    yield backend


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a coroutine on a fresh loop, failing (not hanging) after ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())
