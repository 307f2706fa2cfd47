"""``--mmap-churn``: a thread of the measured process that takes ``mmap_lock`` for write, in a loop.

Theory of operation: every ``mmap`` and ``munmap`` takes the process's ``mmap_lock`` for write
(mm/mmap.c, mm/vma.c), as a garbage collector, a JIT or a ``malloc`` returning memory does. A
zero-copy receive looks its window up in ``find_tcp_vma`` (net/ipv4/tcp.c): since Linux 6.5 under
the window's own VMA lock (``lock_vma_under_rcu``, mm/memory.c), which a write lock of *other*
mappings does not block; before, or when that fails, under ``mmap_lock`` for read, which waits
for every writer. The loop runs in C (``zcnet._speedups.MmapChurn``) without the GIL: a Python
thread would hold the GIL between its calls and stall the server's Python code instead of its
page-table lookups, which is a different experiment. So the pure-Python implementation has no
churn: :func:`churn_unavailable_reason` says why and the experiment skips those rows.

The control (``control=True``) is the same thread making two ``getppid`` system calls per
iteration instead: as busy, and entering the kernel as often, but taking no lock of the address
space. On a machine with few CPUs a busy thread slows the others by taking CPU time and caches;
the control measures that part, so the rest of a slowdown under the churn is the lock's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from zcnet._accel import implementation, speedups

__all__ = ["CHURN_BYTES", "ChurnResult", "ChurnThread", "churn_unavailable_reason"]

#: Bytes mapped and unmapped per iteration (untouched: the cost is the address-space change).
CHURN_BYTES: Final = 1 << 20


def churn_unavailable_reason() -> str | None:
    """``None`` if the churn thread can run here, else why not."""
    if speedups is None or not hasattr(speedups, "MmapChurn"):
        return ("the mmap churn thread needs zcnet's compiled extension (a C thread outside "
                f"the GIL); active implementation: python ({implementation().reason})")
    return None


@dataclass(frozen=True, slots=True)
class ChurnResult:
    """What the churn thread did: iterations (mmap + munmap pairs, or two getppid calls for
    the control), its own CPU seconds, the wall seconds."""

    iterations: int
    cpu: float
    wall: float

    @property
    def per_s(self) -> float:
        """Pairs per second of wall time."""
        return self.iterations / self.wall if self.wall > 0 else 0.0


class ChurnThread:
    """Start the churn on entering (``with``), stop it on leaving; :attr:`result` then.

    Raises:
        RuntimeError: the compiled extension is not active (see
            :func:`churn_unavailable_reason`).
    """

    def __init__(self, size: int = CHURN_BYTES, *, control: bool = False) -> None:
        reason = churn_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        assert speedups is not None
        self._churn = speedups.MmapChurn(size, control=control)
        self._t0 = 0.0
        self.result: ChurnResult | None = None

    def start(self) -> None:
        """Start the thread."""
        self._t0 = time.perf_counter()
        self._churn.start()

    def stop(self) -> ChurnResult:
        """Stop and join the thread; raises ``OSError`` if one of its calls failed."""
        iterations, cpu = self._churn.stop()
        self.result = ChurnResult(iterations, cpu, time.perf_counter() - self._t0)
        return self.result

    @property
    def running(self) -> bool:
        """Whether the thread runs."""
        return bool(self._churn.running)

    def __enter__(self) -> ChurnThread:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.running:
            self.stop()
