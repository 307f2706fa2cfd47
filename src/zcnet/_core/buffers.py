"""Checking what callers pass as a buffer (pure: the buffer protocol, no I/O).

Every public call that takes a buffer (``Sender.send``, ``ZcStream.send``/``recv_into``,
``Receiver.recv_into``) checks it here, before anything blocks or touches a socket, so bad input
always gets the same typed error (:class:`~zcnet.errors.InvalidBufferError`, also a
``TypeError``) that names the problem.
"""

from __future__ import annotations

from zcnet.errors import InvalidBufferError

__all__ = ["byte_view"]


def byte_view(buf: object, *, what: str, writable: bool = False) -> memoryview:
    """A flat view of ``buf`` as unsigned bytes (a new export of ours).

    Args:
        buf: anything that exports a buffer (``bytes``, ``bytearray``, ``memoryview``, ``mmap``,
            ``array``, a NumPy array, a PEP 688 class...).
        what: the call, for the message (``"send"``, ``"recv_into"``...).
        writable: the buffer is a receive target.

    Raises:
        InvalidBufferError: not a buffer (or a released memoryview), read-only when
            ``writable``, or not C-contiguous.
    """
    name = type(buf).__name__
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise InvalidBufferError(f"{what}: expected a bytes-like buffer, got {name}: {e}") from e
    if writable and view.readonly:
        view.release()
        raise InvalidBufferError(f"{what}: the {name} is read-only; a writable buffer is needed")
    if not view.c_contiguous:
        view.release()
        raise InvalidBufferError(f"{what}: the {name} buffer is not C-contiguous")
    if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
        view = view.cast("B")
    return view
