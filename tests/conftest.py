"""Shared fixtures: kernel feature probes (run once) and namespaces created per test."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from zcnet.netns import Netns, netns_unavailable_reason


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
