"""Worker processes: benchmark peers run in separate processes, inside the namespace.

Theory of operation: workers are started with the ``fork`` multiprocessing context (``spawn``
would re-import the caller's ``__main__``, which breaks scripts without a main guard; the forked
child only runs the worker body and never touches the parent's rich or matplotlib state; CPython
re-creates the import lock and GIL after fork) and first move into the benchmark's
network namespace with ``setns(2)`` (:meth:`zcnet.netns.Netns.entered`; workers are
single-threaded, so the whole process lives there). Each worker talks to the orchestrator over a
pipe: the server reports its address; the client runs one command (one repetition) per message
and sends back the result. CPU is measured inside the workers (``getrusage(RUSAGE_SELF)``), so
the orchestrator's own work (progress bar, bookkeeping) never counts.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from zcnet.netns import Netns

__all__ = ["Worker", "WorkerError", "in_netns", "spawn"]

_CTX = multiprocessing.get_context("fork")


class WorkerError(RuntimeError):
    """A worker process died, timed out or reported an error."""


@contextlib.contextmanager
def in_netns(ns_name: str | None) -> Iterator[None]:
    """Run the block inside namespace ``ns_name`` (``None``: stay where we are)."""
    if ns_name is None:
        yield
        return
    with Netns(name=ns_name).entered():
        yield


def _entry(ns_name: str | None, func: Callable[..., None], pipe: Connection,
           args: tuple[Any, ...]) -> None:
    try:
        with in_netns(ns_name):
            func(pipe, *args)
    except BaseException as e:  # report, then die: the orchestrator is waiting on the pipe
        with contextlib.suppress(OSError):
            pipe.send({"ok": False, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()})
        raise


class Worker:
    """A spawned process running ``func(pipe, *args)`` inside ``ns_name``."""

    def __init__(self, func: Callable[..., None], ns_name: str | None, *args: Any,
                 name: str = "zcnet-bench-worker", daemon: bool = True) -> None:
        self.pipe, child = _CTX.Pipe()
        self.process = _CTX.Process(target=_entry, args=(ns_name, func, child, args),
                                    name=name, daemon=daemon)
        self.process.start()
        child.close()

    def recv(self, timeout: float = 600.0) -> Any:
        """The next message from the worker; :class:`WorkerError` on timeout or death."""
        if not self.pipe.poll(timeout):
            self.stop()
            raise WorkerError(f"{self.process.name}: no answer within {timeout:.0f} s")
        try:
            msg = self.pipe.recv()
        except EOFError as e:
            raise WorkerError(f"{self.process.name} exited (code {self.process.exitcode})") from e
        if isinstance(msg, dict) and msg.get("ok") is False and "traceback" in msg:
            raise WorkerError(f"{self.process.name}: {msg['error']}\n{msg['traceback']}")
        return msg

    def call(self, cmd: Any, timeout: float = 600.0) -> Any:
        """Send ``cmd`` and wait for the answer."""
        self.pipe.send(cmd)
        return self.recv(timeout)

    def stop(self, timeout: float = 10.0, *, graceful: bool = True) -> None:
        """Ask the worker to end (``None`` command), then terminate it if it lingers."""
        if graceful:
            with contextlib.suppress(OSError, ValueError):
                self.pipe.send(None)
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.pipe.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(func: Callable[..., None], ns_name: str | None, *args: Any,
          daemon: bool = True) -> Worker:
    """Start ``func(pipe, *args)`` in a new process inside ``ns_name``.

    ``daemon=False`` for a worker that starts processes of its own (multiprocessing forbids
    children of daemonic processes); :meth:`Worker.stop` still ends it.
    """
    return Worker(func, ns_name, *args, name=f"zcnet-bench-{func.__name__}", daemon=daemon)
