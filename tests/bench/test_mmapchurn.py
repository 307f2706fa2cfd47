"""``--mmap-churn``'s thread (compiled extension) and its pure-Python answer (a reason to skip)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from zcnet.bench.mmapchurn import ChurnThread, churn_unavailable_reason

NO_CHURN = churn_unavailable_reason()


def _maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.skipif(NO_CHURN is not None, reason=NO_CHURN or "")
def test_churn_maps_and_unmaps() -> None:
    with ChurnThread():
        time.sleep(0.01)
    before = _maps()  # after one run: glibc keeps a joined thread's stack for the next one
    with ChurnThread() as churn:
        assert churn.running
        while churn._churn.iterations < 100:  # wait for some work (untimed)
            time.sleep(0.001)
    assert not churn.running
    result = churn.result
    assert result is not None
    assert result.iterations >= 100
    assert 0 < result.cpu <= result.wall * 1.5
    assert result.per_s > 0
    assert _maps() == before  # every region it mapped is unmapped


@pytest.mark.skipif(NO_CHURN is not None, reason=NO_CHURN or "")
def test_churn_start_twice_and_stop_idle_are_errors() -> None:
    from zcnet._accel import speedups

    assert speedups is not None
    c = speedups.MmapChurn(1 << 16)
    with pytest.raises(RuntimeError, match="not running"):
        c.stop()
    c.start()
    with pytest.raises(RuntimeError, match="already running"):
        c.start()
    for _ in range(1000):  # let the thread complete a few iterations before stopping it
        if c.iterations > 10:
            break
        time.sleep(0.001)
    iterations, cpu = c.stop()
    assert iterations > 0 and cpu >= 0
    ctl = speedups.MmapChurn(control=True)  # the control: busy, no mapping at all
    before = _maps()
    ctl.start()
    while ctl.iterations < 100:
        time.sleep(0.001)
    assert ctl.stop()[0] >= 100
    assert _maps() == before
    with pytest.raises(ValueError, match="positive"):
        speedups.MmapChurn(0)
    # dropped while running: the thread is joined, not left behind
    d = speedups.MmapChurn(1 << 16)
    d.start()
    del d


def test_pure_python_path_says_why() -> None:
    code = ("from zcnet.bench.mmapchurn import churn_unavailable_reason as r, ChurnThread\n"
            "print(r())\n"
            "try:\n    ChurnThread()\nexcept RuntimeError as e:\n    print('refused', e)\n")
    env = dict(os.environ, ZCNET_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "needs zcnet's compiled extension" in out
    assert "ZCNET_NO_EXTENSIONS is set" in out
    assert "refused" in out
