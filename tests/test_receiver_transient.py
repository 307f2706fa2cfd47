"""Transient failures to map copy one receive and retry later; permanent ones copy for good.

ENOMEM is provoked for real: a window's mmap reserves address space, so RLIMIT_AS set below one
window makes the kernel refuse it (may_expand_vm in mm/mmap.c), in a subprocess so the limit
cannot hurt pytest. EMFILE cannot be provoked any more: windows hold no fd (see
test_receiver_fds.test_windows_need_no_spare_fd). Failures the kernel cannot produce on demand
(ENOMEM from TCP_ZEROCOPY_RECEIVE itself, ENODEV from a TCP socket's mmap) are injected at the
lowlevel boundary (the ZerocopyCall and Window objects the Receiver uses), and say so.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import zcnet.receiver as receiver_mod
from tests.conftest import requires_zerocopy
from tests.rx_helpers import read_verified, sending, tcp_pair
from zcnet.errors import ZerocopyUnavailable
from zcnet.lowlevel.zerocopy_rx import Window, ZerocopyCall
from zcnet.receiver import Chunk, Receiver, RecvPolicy, make_mappable_listener

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]

pytestmark = requires_zerocopy


def _mappable_pair() -> Any:
    return tcp_pair(None, host="127.0.0.1", listener=lambda: make_mappable_listener("127.0.0.1"))


_ADDRESS_SPACE = textwrap.dedent("""
    import json, resource, threading
    from tests.rx_helpers import PATTERN, send_stream, tcp_pair
    from zcnet.receiver import Receiver, RecvPolicy, make_mappable_listener

    def vm_size():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    client, server = tcp_pair(None, host="127.0.0.1",
                              listener=lambda: make_mappable_listener("127.0.0.1"))
    total = 48 << 20
    t = threading.Thread(target=send_stream, args=(client, total))
    t.start()
    window = 256 << 20
    rx = Receiver(server, RecvPolicy(force_zerocopy=True, window_bytes=window, max_windows=1,
                                     map_backoff_max=4))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    off = 0
    phases = {}

    def read(upto):
        global off
        while off < upto:
            with rx.recv(min(1 << 20, upto - off), timeout=30) as c:
                assert c, "early EOF"
                assert PATTERN.matches(off, c.view), f"corrupt bytes at {off}"
                off += len(c)

    # room for Python and the copies, not for one window
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (64 << 20), hard))
    read(16 << 20)
    phases["tight"] = rx.stats
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    read(total)
    with rx.recv(1 << 20, timeout=30) as c:
        assert not c, "bytes after the end"
    t.join()
    st = rx.stats
    rx.close()
    out = {name: {"mapped": s.bytes_mapped, "copied": s.bytes_copied,
                  "reasons": dict(s.copy_reasons), "transient": s.transient_map_errors,
                  "retries": s.map_retries, "mode": s.mode, "windows": s.windows_mapped}
           for name, s in (("tight", phases["tight"]), ("end", st))}
    out["off"] = off
    print(json.dumps(out))
""")


def test_enomem_from_address_space_limit_copies_then_maps_again() -> None:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
               MALLOC_ARENA_MAX="1")  # no 64 MiB per-thread malloc arenas under RLIMIT_AS
    out = subprocess.run([sys.executable, "-c", _ADDRESS_SPACE], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    tight, end = res["tight"], res["end"]
    assert res["off"] == 48 * MIB  # every byte received, in order, checked against the pattern
    # under the limit: nothing mapped, every receive copied, the connection still zero-copy
    assert tight["mapped"] == 0 and tight["windows"] == 0, tight
    assert tight["transient"] >= 2 and tight["mode"] == "zerocopy", tight
    assert tight["reasons"].get("map_backoff", 0) == tight["copied"] == 16 * MIB, tight
    # limit lifted: the backoff (at most 4 receives) ran out, a window was mapped, pages too
    assert end["mode"] == "zerocopy" and end["windows"] == 1, end
    assert end["retries"] >= 1 and end["transient"] == tight["transient"], end
    assert end["mapped"] > 16 * MIB, end
    assert end["mapped"] + end["copied"] == 48 * MIB


class _FailingCall:
    """Wraps the Receiver's receive calls, failing the first ``n`` zero-copy calls with ``code``.

    Fault injection at the lowlevel boundary: the kernel has no way to make
    TCP_ZEROCOPY_RECEIVE fail with ENOMEM (vm_insert_pages short of page-table memory) on demand.
    """

    def __init__(self, call: ZerocopyCall[Chunk], code: int, n: int) -> None:
        self.call, self.code, self.left, self.failed = call, code, n, 0
        self.copybuf = call.copybuf
        self.recv_copy = call.recv_copy

    def receive(self, window: Window, length: int,
                copybuf: bool) -> tuple[Chunk | None, int, int, int, int, int]:
        if self.left:
            self.left -= 1
            self.failed += 1
            raise OSError(self.code, os.strerror(self.code))
        return self.call.receive(window, length, copybuf)


def test_transient_error_of_the_zerocopy_call_copies_once_and_backs_off() -> None:
    total = 32 * MIB
    client, server = _mappable_pair()
    with Receiver(server, RecvPolicy(force_zerocopy=True, map_backoff_max=8)) as rx:
        fake = _FailingCall(rx._call, errno.ENOMEM, 3)
        rx._call = fake  # type: ignore[assignment]
        with sending(client, total):
            read_verified(rx, total, max_bytes=512 * 1024)
        st = rx.stats
    assert fake.failed == 3
    assert st.transient_map_errors == 3 and st.map_retries == 3, st
    assert st.mode == "zerocopy" and st.fallback_reason is None
    assert st.copy_reasons.get("map_backoff", 0) > 0, st
    assert st.bytes_mapped > total // 2, st
    assert st.bytes_mapped + st.bytes_copied == total


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EINVAL])
def test_unsupported_error_of_the_zerocopy_call_copies_for_good(code: int) -> None:
    # Injected at the lowlevel boundary: this kernel supports TCP_ZEROCOPY_RECEIVE.
    total = 8 * MIB
    client, server = _mappable_pair()
    with Receiver(server) as rx:
        fake = _FailingCall(rx._call, code, 1)
        rx._call = fake  # type: ignore[assignment]
        with sending(client, total):
            read_verified(rx, total, max_bytes=512 * 1024)
        st = rx.stats
    assert st.mode == "copy" and st.calls == 0 and st.bytes_mapped == 0, st
    assert st.fallback_reason is not None and "TCP_ZEROCOPY_RECEIVE" in st.fallback_reason
    assert st.transient_map_errors == 0


class _NoMmap:
    """Stands in for Window: the socket's mmap fails with ``code``.

    Injected at the lowlevel boundary: a TCP socket always supports mmap (tcp_mmap), so the
    kernel will not answer ENODEV for it on demand.
    """

    code = errno.ENODEV

    def __init__(self, fd: int, size: int) -> None:
        raise OSError(self.code, f"mmap of the socket: {os.strerror(self.code)}")


def test_unsupported_mmap_copies_for_good_or_raises_when_forced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receiver_mod, "Window", _NoMmap)
    client, server = _mappable_pair()
    with Receiver(server) as rx:
        with sending(client, 4 * MIB):
            read_verified(rx, 4 * MIB, max_bytes=512 * 1024)
        st = rx.stats
    assert st.mode == "copy" and st.fallback_reason is not None
    assert "mmap of the socket" in st.fallback_reason and st.transient_map_errors == 0
    client, server = _mappable_pair()
    with (Receiver(server, RecvPolicy(force_zerocopy=True)) as rx,
          sending(client, MIB, tolerate_reset=True), pytest.raises(ZerocopyUnavailable)):
        rx.recv(MIB, timeout=30)
