"""Shared fixtures: kernel feature probes (run once) and namespaces created per test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from zcnet import implementation
from zcnet.netns import Netns, netns_unavailable_reason


def pytest_report_header() -> str:
    impl = implementation()
    return f"zcnet implementation: {impl.name} ({impl.reason})"


def pytest_sessionstart(session: pytest.Session) -> None:
    """``ZCNET_EXPECT_IMPLEMENTATION`` (set by the test command): refuse to test the wrong one.

    Without it a failed build of the extension would silently test the Python path twice.
    """
    want = os.environ.get("ZCNET_EXPECT_IMPLEMENTATION")
    impl = implementation()
    if want and want != impl.name:
        raise pytest.UsageError(
            f"ZCNET_EXPECT_IMPLEMENTATION={want} but the {impl.name} implementation is active: "
            f"{impl.reason}")


def _probe_so_zerocopy() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, 60, 1)
    except OSError as e:
        return f"SO_ZEROCOPY unsupported: {e}"
    return None


NETNS_SKIP = netns_unavailable_reason()
ZEROCOPY_SKIP = _probe_so_zerocopy()

requires_netns = pytest.mark.skipif(NETNS_SKIP is not None, reason=NETNS_SKIP or "")
requires_zerocopy = pytest.mark.skipif(ZEROCOPY_SKIP is not None, reason=ZEROCOPY_SKIP or "")


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace with lo MTU 61512 (MSS 61440); deleted afterwards."""
    if NETNS_SKIP:
        pytest.skip(NETNS_SKIP)
    with Netns() as ns:
        yield ns


@pytest.fixture
def ifb_netns() -> Iterator[Netns]:
    """A fresh namespace with an ifb sink (see zcnet.netns.IFB_SINK_ADDR); deleted afterwards."""
    if NETNS_SKIP:
        pytest.skip(NETNS_SKIP)
    with Netns(ifb_sink=True) as ns:
        yield ns
