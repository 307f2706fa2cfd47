"""What ``rpc --mmap-churn`` adds to the rpc server process: the churn thread and the lock profile.

Theory of operation: the rpc server (:func:`zcnet.bench.rpc.rpc_server`) starts these once
every connection is accepted and stops them after its timed window: a
:class:`zcnet.bench.mmapchurn.ChurnThread` when the configuration asks for a ``churn``
(``"mmap"``: a thread of the same process taking ``mmap_lock`` for write in a loop;
``"syscall"``: the control, as busy without that lock), and a
:class:`zcnet.bench.lockpath.ThreadPerf` on the server's receiving thread when it asks for
``lock_profile`` (an untimed repetition). The server reports :meth:`ServerExtras.stop`'s dict
beside its figures: ``churn`` (``{"iterations", "cpu", "wall", "per_s"}`` or ``None``) and
``lock_profile`` (see :meth:`zcnet.bench.lockpath.ThreadPerf.stop`, or ``None``).
"""

from __future__ import annotations

from typing import Any

from zcnet.bench.lockpath import ThreadPerf
from zcnet.bench.mmapchurn import ChurnThread

__all__ = ["ServerExtras"]


class ServerExtras:
    """The churn thread and the lock profile of one server repetition (each if asked)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        kind = cfg.get("churn")
        self.churn = None if not kind else ChurnThread(control=kind == "syscall")
        self.perf = ThreadPerf() if cfg.get("lock_profile") else None
        self._result: dict[str, Any] | None = None

    def start(self) -> None:
        """Start the churn, then attach perf (so the profile sees the churn from its start)."""
        if self.churn is not None:
            self.churn.start()
        if self.perf is not None:
            self.perf.start()

    def stop(self) -> dict[str, Any]:
        """Stop both (idempotent); ``{"churn": ..., "lock_profile": ...}``."""
        if self._result is not None:
            return self._result
        out: dict[str, Any] = {"churn": None, "lock_profile": None}
        self._result = out
        try:
            if self.perf is not None:
                out["lock_profile"] = self.perf.stop()
        finally:
            if self.churn is not None and self.churn.running:
                r = self.churn.stop()
                out["churn"] = {"iterations": r.iterations, "cpu": r.cpu, "wall": r.wall,
                                "per_s": r.per_s}
        return out
