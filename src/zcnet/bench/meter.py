"""CPU and wall-clock measurement of one transfer inside one process.

Theory of operation: ``getrusage(RUSAGE_SELF)`` user + system time of the measuring process,
read just before the first timed byte and just after the last one, so process start-up,
connection set-up and warm-up are excluded (getrusage(2); Linux scales the tick-sampled
user/system split to the precise scheduler runtime, so the sum is exact). Work that must not be
counted (verification) is bracketed with :meth:`CpuWindow.exclude`, measured with the calling
thread's CPU clock (``CLOCK_THREAD_CPUTIME_ID``) and subtracted. Workers are single-threaded.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator

__all__ = ["CpuWindow"]



class CpuWindow:
    """Measure CPU seconds (user + sys) and wall seconds between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self._wall0 = 0.0
        self.cpu = 0.0
        self.user = 0.0
        self.sys = 0.0
        self.wall = 0.0
        self.excluded = 0.0
        self._ru0: resource.struct_rusage | None = None

    def start(self) -> None:
        """Begin the window."""
        self.excluded = 0.0
        self._ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self._wall0 = time.perf_counter()

    def stop(self) -> None:
        """End the window and compute :attr:`cpu` (minus excluded work) and :attr:`wall`."""
        wall1 = time.perf_counter()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        assert self._ru0 is not None, "stop() before start()"
        self.wall = wall1 - self._wall0
        self.user = ru1.ru_utime - self._ru0.ru_utime
        self.sys = ru1.ru_stime - self._ru0.ru_stime
        self.cpu = max(0.0, self.user + self.sys - self.excluded)

    @contextlib.contextmanager
    def exclude(self) -> Iterator[None]:
        """Do not count the CPU used inside this block."""
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.excluded += time.thread_time() - t0
