"""The benchmark's memory cgroup: finding the hierarchy (pure), create/join/read/remove for real."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zcnet.bench.memcg import (
    PREFIX,
    MemCgroup,
    MemoryHierarchy,
    find_memory_hierarchy,
    memcg_unavailable_reason,
    parse_memory_stat,
)

V1 = ("35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n"
      "36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:15 - cgroup cgroup rw,cpu\n")
V2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID = V1 + "40 25 0:35 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw\n"
NESTED_V1 = ("35 25 0:30 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")


@pytest.mark.parametrize(("mountinfo", "controllers", "expected"), [
    (V1, None, MemoryHierarchy(1, "/sys/fs/cgroup/memory")),
    (HYBRID, "", MemoryHierarchy(1, "/sys/fs/cgroup/memory")),
    (V2, "cpuset cpu io memory pids", MemoryHierarchy(2, "/sys/fs/cgroup")),
    (V2, "cpu io pids", None),        # v2 without the memory controller
    (V2, None, None),
    (NESTED_V1, None, None),          # not the hierarchy's root: no group of our own there
    ("", None, None),
])
def test_find_memory_hierarchy(mountinfo: str, controllers: str | None,
                               expected: MemoryHierarchy | None) -> None:
    assert find_memory_hierarchy(mountinfo, controllers) == expected


def test_parse_memory_stat() -> None:
    assert parse_memory_stat("cache 4096\nrss 8192\nmapped_file 0\nbad line\n") == {
        "cache": 4096, "rss": 8192, "mapped_file": 0}


REASON = memcg_unavailable_reason()
requires_memcg = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _leftovers(mount: str) -> list[str]:
    # only this process's groups: other sessions may run benchmarks at the same time
    return [n for n in os.listdir(mount) if n.startswith(PREFIX) and f"-{os.getpid()}-" in n]


@requires_memcg
def test_group_charges_a_joined_process_and_is_removed_with_it_inside() -> None:
    # a child that allocates (and touches) 32 MiB after joining, then waits
    code = ("import sys\nsys.stdin.readline()\nb = bytearray(32 << 20)\nprint('ok', flush=True)\n"
            "sys.stdin.readline()\n")
    with MemCgroup("test") as cg:
        mount = cg.mount
        assert os.path.isdir(cg.path)
        assert cg.charge_sockets() is None
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        cg.join(proc.pid)
        assert cg.pids() == [proc.pid]
        base = cg.read().usage
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
        reading = cg.read()
        # the 32 MiB are charged (less what the child freed meanwhile of its baseline: a few
        # pages; once 8 KiB short of 32 MiB in the test command)
        assert reading.usage - base >= 30 << 20
        assert reading.anon is not None and reading.anon >= 30 << 20
        # leaving the block removes the group with the process still in it
    try:
        assert not os.path.exists(cg.path)   # the process was moved out first
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert not _leftovers(mount)


@requires_memcg
def test_group_removed_on_error() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(RuntimeError, match="boom"), MemCgroup("test") as cg:
            cg.join(proc.pid)
            raise RuntimeError("boom")
        assert not os.path.exists(cg.path)
        assert not _leftovers(cg.mount)
        with open(f"/proc/{proc.pid}/cgroup") as f:
            assert PREFIX not in f.read()
    finally:
        proc.kill()
        proc.wait()
