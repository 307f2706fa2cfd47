"""tests.restricted_child really restricts the child, and only the child.

Every check runs real syscalls in a real child: io_uring_setup refused by the seccomp filter (and
working without it), other syscalls untouched, mlock limited for nobody without CAP_IPC_LOCK.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource

import pytest

from tests.restricted_child import (
    CAP_IPC_LOCK,
    NR_IO_URING_ENTER,
    NR_IO_URING_REGISTER,
    NR_IO_URING_SETUP,
    X32_SYSCALL_BIT,
    capabilities,
    io_uring_refusal_unavailable_reason,
    nobody_unavailable_reason,
    run_child,
    run_child_json,
)

requires_refusal = pytest.mark.skipif(io_uring_refusal_unavailable_reason() is not None,
                                      reason=io_uring_refusal_unavailable_reason() or "")
requires_nobody = pytest.mark.skipif(nobody_unavailable_reason() is not None,
                                     reason=nobody_unavailable_reason() or "")

# Child code: the io_uring syscalls with harmless arguments; prints {"setup": [ret, errno], ...}.
IO_URING_CALLS = f"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(nr, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *args)
    return [ret, ctypes.get_errno() if ret < 0 else 0]

params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
setup = call({NR_IO_URING_SETUP}, ctypes.c_uint(8), params)
if setup[0] >= 0:
    os.close(setup[0])
bad_fd = ctypes.c_int(-2)  # (-1 has a meaning for io_uring_register)
result = {{
    "setup": setup,
    "enter": call({NR_IO_URING_ENTER}, bad_fd, ctypes.c_uint(0), ctypes.c_uint(0),
                  ctypes.c_uint(0), ctypes.c_void_p(0), ctypes.c_size_t(0)),
    "register": call({NR_IO_URING_REGISTER}, bad_fd, ctypes.c_uint(0), ctypes.c_void_p(0),
                     ctypes.c_uint(0)),
    "x32_setup": call({X32_SYSCALL_BIT | NR_IO_URING_SETUP}, ctypes.c_uint(8), params),
}}
print(json.dumps(result))
"""

# Child code: mlock of 16 KiB and of 1 MiB of fresh anonymous memory, with who did it.
MLOCK_CALLS = """
import ctypes, json, mmap, os, resource
libc = ctypes.CDLL(None, use_errno=True)

def try_mlock(size):
    m = mmap.mmap(-1, size)
    buf = (ctypes.c_char * size).from_buffer(m)
    ctypes.set_errno(0)
    ret = libc.mlock(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size))
    err = ctypes.get_errno() if ret != 0 else 0
    if ret == 0:
        assert libc.munlock(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size)) == 0
    del buf
    m.close()
    return err

status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "cap_eff": int(status["CapEff"], 16), "cap_prm": int(status["CapPrm"], 16),
    "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK),
    "mlock_16k": try_mlock(16 * 1024), "mlock_1m": try_mlock(1024 * 1024),
}))
"""

# Child code: a socket pair round trip and a pipe, plus the process's seccomp state.
OTHER_SYSCALLS = """
import json, os, socket
a, b = socket.socketpair()
a.sendall(b"ping" * 1000)
got = b""
while len(got) < 4000:
    got += b.recv(65536)
b.sendall(got[::-1])
back = a.recv(65536)
r, w = os.pipe()
os.write(w, b"pipe")
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({
    "round_trip": got == b"ping" * 1000 and back[:4] == b"gnip",
    "pipe": os.read(r, 4).decode(),
    "seccomp": int(status["Seccomp"]), "no_new_privs": int(status["NoNewPrivs"]),
}))
"""


def _io_uring_unavailable_reason() -> str | None:
    """Why io_uring_setup fails in an unrestricted child on this machine, or None if it works."""
    setup = run_child_json(IO_URING_CALLS)["setup"]
    if setup[0] >= 0:
        return None
    return (f"io_uring_setup fails here even without the filter: {errno.errorcode[setup[1]]} "
            f"(kernel.io_uring_disabled, the container's seccomp profile or no io_uring)")


@requires_refusal
def test_refuse_io_uring_gives_eperm_for_every_io_uring_syscall() -> None:
    calls = run_child_json(IO_URING_CALLS, refuse_io_uring=True)
    assert calls["setup"] == [-1, errno.EPERM]
    assert calls["enter"] == [-1, errno.EPERM]
    assert calls["register"] == [-1, errno.EPERM]
    if os.uname().machine == "x86_64":  # the x32 number of io_uring_setup cannot dodge it
        assert calls["x32_setup"] == [-1, errno.EPERM]


@requires_refusal
def test_without_the_filter_the_same_calls_reach_io_uring() -> None:
    reason = _io_uring_unavailable_reason()
    if reason:
        pytest.skip(reason)
    calls = run_child_json(IO_URING_CALLS)
    assert calls["setup"][0] >= 0 and calls["setup"][1] == 0  # a ring fd (closed by the child)
    assert calls["enter"] == [-1, errno.EBADF]  # io_uring itself judged the bad fd
    assert calls["register"] == [-1, errno.EBADF]


@requires_refusal
def test_other_syscalls_still_work_under_the_filter() -> None:
    result = run_child_json(OTHER_SYSCALLS, refuse_io_uring=True)
    assert result == {"round_trip": True, "pipe": "pipe", "seccomp": 2, "no_new_privs": 1}


@requires_nobody
def test_nobody_with_low_memlock_cannot_lock_past_the_limit() -> None:
    result = run_child_json(MLOCK_CALLS, memlock_bytes=64 * 1024, as_nobody=True,
                            preimport=["mmap"])
    assert result["uid"] != 0 and result["euid"] != 0 and result["gid"] != 0
    assert result["groups"] == []
    assert not result["cap_eff"] >> CAP_IPC_LOCK & 1
    assert result["cap_eff"] == 0 and result["cap_prm"] == 0
    assert result["memlock"] == [64 * 1024, 64 * 1024]
    assert result["mlock_16k"] == 0
    assert result["mlock_1m"] in (errno.ENOMEM, errno.EPERM)


@requires_nobody
def test_root_bypasses_the_same_limit_which_is_why_as_nobody_exists() -> None:
    if not capabilities()["CapEff"] >> CAP_IPC_LOCK & 1:
        pytest.skip("the test process has no CAP_IPC_LOCK: nothing to bypass the limit")
    result = run_child_json(MLOCK_CALLS, memlock_bytes=64 * 1024)
    assert result["uid"] == 0 and result["cap_eff"] >> CAP_IPC_LOCK & 1
    assert result["memlock"] == [64 * 1024, 64 * 1024]
    assert result["mlock_1m"] == 0


@requires_nobody
@requires_refusal
def test_all_restrictions_together_and_zcnet_imported_before_the_drop() -> None:
    result = run_child_json("""
        import json, os, zcnet
        print(json.dumps({"uid": os.getuid(), "zcnet": zcnet.__name__}))
    """, refuse_io_uring=True, memlock_bytes=64 * 1024, as_nobody=True, preimport=["zcnet"])
    assert result["uid"] != 0 and result["zcnet"] == "zcnet"
    calls = run_child_json(IO_URING_CALLS, refuse_io_uring=True, memlock_bytes=64 * 1024,
                           as_nobody=True)
    assert calls["setup"] == [-1, errno.EPERM]


@requires_nobody
def test_importing_after_the_drop_is_refused_with_the_remedy() -> None:
    # Whether nobody could read the module's file or not: the same failure here and in CI.
    proc = run_child("import mmap", as_nobody=True)
    assert proc.returncode == 1
    assert "module 'mmap' imported after dropping to nobody" in proc.stderr
    assert "preimport=" in proc.stderr


def test_run_child_json_reports_a_failed_child_with_its_output() -> None:
    with pytest.raises(AssertionError, match=r"status 3(.|\n)*said hello(.|\n)*went wrong"):
        run_child_json("""
            import sys
            print("said hello")
            print("went wrong", file=sys.stderr)
            sys.exit(3)
        """)
    with pytest.raises(AssertionError, match="did not print a JSON object"):
        run_child_json("print('[1, 2]')")


def _own_state() -> dict[str, object]:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return {
        "ids": (os.getresuid(), os.getresgid(), os.getgroups()),
        "caps": capabilities(),
        "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK),
        "seccomp": status["Seccomp"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
        "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),  # PR_GET_DUMPABLE
    }


def _io_uring_setup_here() -> tuple[int, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)
    ctypes.set_errno(0)
    fd = libc.syscall(ctypes.c_long(NR_IO_URING_SETUP), ctypes.c_uint(8), params)
    err = ctypes.get_errno()
    if fd >= 0:
        os.close(fd)
    return fd, err


def test_the_test_process_stays_unrestricted() -> None:
    before = _own_state()
    if io_uring_refusal_unavailable_reason() or nobody_unavailable_reason():
        pytest.skip(f"{io_uring_refusal_unavailable_reason() or nobody_unavailable_reason()}")
    assert run_child_json('print("{}")', refuse_io_uring=True) == {}
    assert run_child_json('print("{}")', refuse_io_uring=True, memlock_bytes=64 * 1024,
                          as_nobody=True) == {}
    assert _own_state() == before
    fd, err = _io_uring_setup_here()
    if fd < 0:
        reason = _io_uring_unavailable_reason()
        assert reason is not None, f"io_uring_setup fails in the test process only: errno {err}"
        pytest.skip(reason)
