"""zcnet.lowlevel._libc: libc found once, without ldconfig, gcc or any other child process."""

from __future__ import annotations

import ctypes
import errno
import json
import subprocess
import sys
import textwrap

from zcnet.lowlevel._libc import LIBC, errno_error, libc_function

# Run in a fresh interpreter: an audit hook (PEP 578) records every attempt to start a process
# (subprocess.Popen, os.posix_spawn, os.exec*, os.fork, os.system) and every call of
# ctypes.util.find_library, then every zcnet module that touches ctypes is imported. The last
# step is the control: find_library itself (ldconfig -p on Linux) must be seen, or the probe is
# blind and the test fails.
_PROBE = textwrap.dedent("""
    import ctypes.util, json, sys
    events = []
    SPAWN = {"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.exec", "os.fork",
             "os.forkpty", "os.system", "os.startfile"}
    def hook(event, args):
        if event in SPAWN:
            events.append(event)
    sys.addaudithook(hook)
    real = ctypes.util.find_library
    def spy(name):
        events.append("find_library")
        return real(name)
    ctypes.util.find_library = spy
    import zcnet, zcnet.receiver, zcnet.sender, zcnet.netns, zcnet.aio
    import zcnet.lowlevel._libc, zcnet.lowlevel.zerocopy_rx, zcnet.lowlevel.sendmmsg
    import zcnet.lowlevel.bufaddr, zcnet.lowlevel.meminfo, zcnet.lowlevel.errqueue
    at_import = list(events)
    ctypes.util.find_library("c")  # the control
    print(json.dumps({"import": at_import, "control": events[len(at_import):]}))
""")


def test_importing_zcnet_starts_no_process_and_never_calls_find_library() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, timeout=120)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["import"] == [], f"importing zcnet started a process or searched for libc: {seen}"
    # The probe sees find_library and the process it starts (ldconfig -p), so it is not blind.
    assert "find_library" in seen["control"]
    assert any(e != "find_library" for e in seen["control"]), seen


def test_libc_functions_are_independent_and_report_errno() -> None:
    getpid = libc_function("getpid", (), ctypes.c_int)
    import os

    assert getpid() == os.getpid()
    close = libc_function("close", (ctypes.c_int,), ctypes.c_int)
    other = libc_function("close", (ctypes.c_long,), ctypes.c_long)
    assert close.argtypes == (ctypes.c_int,)  # a second lookup did not change the first
    assert other is not close
    assert close(-1) == -1
    err = errno_error("close")
    assert err.errno == errno.EBADF and str(err).startswith("[Errno 9] close: ")
    assert isinstance(LIBC, ctypes.CDLL)


def test_missing_symbol_is_attribute_error() -> None:
    try:
        libc_function("zcnet_no_such_symbol", (), ctypes.c_int)
    except AttributeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a missing symbol must raise AttributeError")
