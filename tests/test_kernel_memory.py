"""The kernel's own memory charge for copy vs MSG_ZEROCOPY sends, and the meminfo readers.

Inside a namespace the test creates, a TCP sender with an 8 MB send buffer queues data toward a
receiver that does not read, first by copying sends, then (on a fresh connection) by pure
MSG_ZEROCOPY sends. The charge is read three ways: /proc/net/sockstat "TCP ... mem" (kernel-wide
pages, cached per CPU: the thread is pinned to one CPU and the figure is a median of repetitions),
a memory cgroup's TCP charge (cgroup v1: a child group the test creates with a TCP limit, which
activates the counter, and removes again; cgroup v2: the "sock" line of the thread's group), and
SO_MEMINFO wmem_queued (which meters the send-buffer limit and does not differ).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from zcnet._core.pattern import StreamPattern
from zcnet.accounting import kernel_memory_snapshot
from zcnet.lowlevel.constants import (
    IP_RECVERR,
    MSG_ERRQUEUE,
    MSG_ZEROCOPY,
    SO_EE_ORIGIN_ZEROCOPY,
    SO_ZEROCOPY,
    SOL_IP,
)
from zcnet.lowlevel.meminfo import (
    parse_sockstat,
    read_cgroup_sock_memory,
    read_sockstat,
    so_meminfo,
)
from zcnet.netns import Netns

from .conftest import requires_zerocopy

SO_SNDBUFFORCE = 32
SNDBUF = 4 * 1024 * 1024  # the kernel doubles it: an 8 MB send buffer
CHUNK = 64 * 1024
MAX_QUEUE = 24 * 1024 * 1024
REPS = 3

SOCKSTAT_TEXT = """sockets: used 290
TCP: inuse 27 orphan 0 tw 3 alloc 30 mem 2157
UDP: inuse 4 mem 8
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
"""


def test_parse_sockstat() -> None:
    st = parse_sockstat(SOCKSTAT_TEXT, page_size=4096)
    assert (st.sockets_used, st.tcp_inuse, st.tcp_tw, st.tcp_alloc) == (290, 27, 3, 30)
    assert (st.tcp_mem_pages, st.tcp_mem_bytes, st.udp_inuse, st.udp_mem_pages) == (
        2157, 2157 * 4096, 4, 8)
    with pytest.raises(ValueError, match="TCP"):
        parse_sockstat("sockets: used 1\n")


def test_readers_report_a_reason_when_unavailable(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(os.fspath(tmp_path), "nope")
    probe = read_sockstat(missing)
    assert probe.value is None and probe.reason and "nope" in probe.reason and not probe
    cg = read_cgroup_sock_memory(proc_cgroup=missing)
    assert cg.value is None and cg.reason
    snap = kernel_memory_snapshot()
    assert snap.meminfo is None and snap.reasons["meminfo"] == "no socket given"
    assert snap.sockstat is not None or "sockstat" in snap.reasons
    assert snap.cgroup is not None or "cgroup" in snap.reasons


def test_cgroup_v2_and_v1_layouts(tmp_path: os.PathLike[str]) -> None:
    root = os.fspath(tmp_path)
    os.makedirs(f"{root}/v2/grp")
    with open(f"{root}/v2/grp/memory.stat", "w") as f:
        f.write("anon 1\nsock 8192\nshmem 0\n")
    with open(f"{root}/cg", "w") as f:
        f.write("0::/grp\n")
    with open(f"{root}/mi", "w") as f:
        f.write(f"41 31 0:38 / {root}/v2 rw - cgroup2 cgroup2 rw\n")
    cg = read_cgroup_sock_memory(f"{root}/cg", f"{root}/mi").value
    assert cg is not None and (cg.version, cg.sock_bytes, cg.active) == (2, 8192, True)

    os.makedirs(f"{root}/v1/b")
    for name, val in (("usage", 0), ("limit", 9223372036854771712)):
        with open(f"{root}/v1/b/memory.kmem.tcp.{name}_in_bytes", "w") as f:
            f.write(f"{val}\n")
    with open(f"{root}/cg", "w") as f:
        f.write("4:memory:/a/b\n0::/\n")
    with open(f"{root}/mi", "w") as f:  # mounted at its own root, and no v2 memory controller
        f.write(f"35 31 0:32 /a {root}/v1 rw - cgroup cgroup rw,memory\n"
                f"41 31 0:38 / {root}/nov2 rw - cgroup2 cgroup2 rw\n")
    cg = read_cgroup_sock_memory(f"{root}/cg", f"{root}/mi").value
    assert cg is not None and (cg.version, cg.sock_bytes, cg.active) == (1, 0, False)
    assert cg.note and "limit_in_bytes" in cg.note


def test_so_meminfo_of_a_plain_socket() -> None:
    with socket.socket() as s:
        mi = so_meminfo(s)
    assert mi.sndbuf > 0 and mi.rcvbuf > 0 and mi.wmem_queued == 0


# -- the experiment -----------------------------------------------------------------------------


@contextlib.contextmanager
def cgroup_tcp_counter() -> Iterator[tuple[Callable[[], int] | None, str]]:
    """Yield a reader of the calling thread's memory-cgroup socket charge (bytes), or None.

    cgroup v1: moves the calling thread into a fresh child group with a TCP limit (the counter
    is inactive without one) and back out afterwards, then removes the group.
    """
    probe = read_cgroup_sock_memory("/proc/thread-self/cgroup")
    cg = probe.value
    if cg is None:
        yield None, probe.reason or "unavailable"
        return
    if cg.version == 2:
        path = cg.path

        def read_v2() -> int:
            with open(path) as f:
                for line in f:
                    if line.startswith("sock "):
                        return int(line.split()[1])
            return 0

        yield read_v2, f"cgroup v2 {path} (whole group, not isolated)"
        return
    parent = os.path.dirname(cg.path)
    child = os.path.join(parent, f"zcnet-test-{os.getpid()}-{threading.get_native_id()}")
    try:
        os.mkdir(child)
    except OSError as e:
        yield None, f"cannot create a child memory cgroup: {e}"
        return
    tid = str(threading.get_native_id())
    usage = os.path.join(child, "memory.kmem.tcp.usage_in_bytes")
    try:
        try:
            with open(os.path.join(child, "memory.kmem.tcp.limit_in_bytes"), "w") as f:
                f.write(str(1 << 40))
            with open(os.path.join(child, "tasks"), "w") as f:
                f.write(tid)
        except OSError as e:
            yield None, f"cannot activate cgroup v1 TCP accounting: {e}"
            return

        def read_v1() -> int:
            with open(usage) as f:
                return int(f.read())

        try:
            yield read_v1, f"cgroup v1 child {child} with a TCP limit (isolated)"
        finally:
            with open(os.path.join(parent, "tasks"), "w") as f:
                f.write(tid)
    finally:
        for _ in range(50):
            try:
                os.rmdir(child)
                break
            except OSError:
                time.sleep(0.05)


@dataclass
class Measure:
    mode: str
    queued: int
    sockstat_pages: int
    cgroup_bytes: int | None
    wmem_queued: int
    fwd_alloc: int

    @property
    def pages_per_mb(self) -> float:
        return self.sockstat_pages / (self.queued / 2**20)


def drain_zerocopy_completions(sock: socket.socket, expected: int, timeout: float) -> int:
    """Read zero-copy completions off the error queue until ``expected`` sends are covered."""
    covered = 0
    deadline = time.monotonic() + timeout
    while covered < expected and time.monotonic() < deadline:
        select.select([], [], [sock], 0.1)
        while True:
            try:
                _, anc, _, _ = sock.recvmsg(0, 256, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            for level, typ, data in anc:
                if (level, typ) != (SOL_IP, IP_RECVERR):
                    continue
                ee_errno, origin, _t, _c, _pad, lo, hi = struct.unpack_from("=IBBBBII", data)
                assert ee_errno == 0 and origin == SO_EE_ORIGIN_ZEROCOPY
                covered += (hi - lo + 1) & 0xFFFFFFFF
    return covered


def queue_until_full(
    zerocopy: bool, pattern: StreamPattern, cg_read: Callable[[], int] | None
) -> Measure:
    """One fresh connection: fill the queues, read the charge, then read and check every byte."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        cli = socket.socket()
        srv: socket.socket | None = None
        try:
            try:
                cli.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
            except PermissionError:
                cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            if zerocopy:
                cli.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            cli.connect(lst.getsockname())
            srv, _ = lst.accept()
            cli.setblocking(False)
            time.sleep(0.05)  # let the handshake's own allocations settle
            before = read_sockstat().value
            cg0 = cg_read() if cg_read else None
            assert before is not None
            sent = sends = 0
            flags = MSG_ZEROCOPY if zerocopy else 0
            while sent < MAX_QUEUE:
                try:
                    sent += cli.send(pattern.block(sent, CHUNK), flags)
                    sends += 1
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.ENOBUFS):
                        break
                    raise
            time.sleep(0.05)
            after = read_sockstat().value
            cg1 = cg_read() if cg_read else None
            assert after is not None
            mi = so_meminfo(cli)
            m = Measure(
                "zerocopy" if zerocopy else "copy", sent,
                after.tcp_mem_pages - before.tcp_mem_pages,
                None if cg0 is None or cg1 is None else cg1 - cg0, mi.wmem_queued, mi.fwd_alloc,
            )
            # now every byte must arrive intact
            cli.setblocking(True)
            cli.shutdown(socket.SHUT_WR)
            buf = bytearray(1 << 20)
            got = 0
            while True:
                n = srv.recv_into(buf)
                if n == 0:
                    break
                assert pattern.matches(got, memoryview(buf)[:n]), f"corrupt bytes at {got}"
                got += n
            assert got == sent
            if zerocopy:
                assert drain_zerocopy_completions(cli, sends, timeout=10.0) == sends
            return m
        finally:
            cli.close()
            if srv is not None:
                srv.close()


@requires_zerocopy
def test_zerocopy_charges_fewer_pages_than_copy(netns: Netns) -> None:
    pattern = StreamPattern(max_block=CHUNK)
    results: list[Measure] = []
    notes: list[str] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one per-CPU cache
            with cgroup_tcp_counter() as (cg_read, how):
                notes.append(how)
                with netns.entered():
                    for _ in range(REPS):
                        results.append(queue_until_full(False, pattern, cg_read))
                        results.append(queue_until_full(True, pattern, cg_read))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=body, name="kernel-memory")
    t.start()
    t.join()
    if errors:
        raise errors[0]

    def med(mode: str, key: Callable[[Measure], float]) -> float:
        return statistics.median(key(m) for m in results if m.mode == mode)

    print(f"\ncgroup counter: {notes[0]}")
    for m in results:
        cg = "n/a" if m.cgroup_bytes is None else f"{m.cgroup_bytes // 4096} pages"
        print(f"  {m.mode:8s} queued {m.queued / 2**20:5.2f} MiB: sockstat TCP mem "
              f"{m.sockstat_pages:+5d} pages ({m.pages_per_mb:6.1f}/MiB), cgroup {cg}, "
              f"wmem_queued {m.wmem_queued / 2**20:.2f} MiB, fwd_alloc {m.fwd_alloc}")
    copy_ppm = med("copy", lambda m: m.pages_per_mb)
    zc_ppm = med("zerocopy", lambda m: m.pages_per_mb)
    print(f"  median pages per MiB queued: copy {copy_ppm:.1f}, zerocopy {zc_ppm:.1f}")
    assert copy_ppm > 64, "copy sends should charge roughly a page per page queued"
    assert zc_ppm < copy_ppm / 2, "zero-copy sends should not charge the user pages again"
    # wmem_queued meters the send-buffer limit: it reads about the same in both modes
    assert med("zerocopy", lambda m: m.wmem_queued) > med("copy", lambda m: m.wmem_queued) / 2
    cg_results = [m for m in results if m.cgroup_bytes is not None]
    if cg_results and "isolated" in notes[0]:
        cg_copy = med("copy", lambda m: (m.cgroup_bytes or 0) / m.queued)
        cg_zc = med("zerocopy", lambda m: (m.cgroup_bytes or 0) / m.queued)
        print(f"  median cgroup bytes charged per byte queued: copy {cg_copy:.3f}, "
              f"zerocopy {cg_zc:.3f}")
        assert cg_zc < cg_copy / 2
