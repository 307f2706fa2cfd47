"""Start addresses of Python buffers, without copying them.

Theory of operation (CPython buffer protocol, PEP 3118; ``Modules/_ctypes``): a system call made
through ctypes needs the address of the caller's bytes. For a *writable* buffer
``ctypes.c_char.from_buffer`` gives it cheaply (its temporary export is released when the ctypes
object is dropped). Read-only buffers (``bytes``, read-only views) refuse ``from_buffer``; for them
``PyObject_GetBuffer`` / ``PyBuffer_Release`` are called through ``ctypes.pythonapi`` with one
preallocated ``Py_buffer`` per :class:`BufferAddresser` (no allocation per call).

Either way the export is released before the address is returned: **the address is valid only while
the caller keeps the memory alive and unmoved** (e.g. by holding a ``memoryview`` of the object,
which pins a ``bytearray`` against resizing and an ``mmap`` against closing).
"""

from __future__ import annotations

import ctypes
from typing import Final

__all__ = ["BufferAddresser", "PyBuffer", "buffer_address"]


class PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (Include/pybuffer.h), 80 bytes on 64-bit platforms."""

    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),  # a new reference; PyBuffer_Release drops it
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


assert ctypes.sizeof(PyBuffer) == 10 * ctypes.sizeof(ctypes.c_void_p), "Py_buffer layout"

_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = (ctypes.py_object, ctypes.c_void_p, ctypes.c_int)
_PyObject_GetBuffer.restype = ctypes.c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = (ctypes.c_void_p,)
_PyBuffer_Release.restype = None
_PyBUF_SIMPLE: Final = 0


class BufferAddresser:
    """Reads buffer start addresses; reuses one ``Py_buffer`` (not thread-safe: one per user)."""

    __slots__ = ("_addr", "_view")

    def __init__(self) -> None:
        self._view = PyBuffer()
        self._addr = ctypes.addressof(self._view)

    def readonly(self, obj: object) -> int:
        """The start address of ``obj``'s buffer (any buffer, read-only ones included).

        Raises:
            TypeError: ``obj`` does not export a buffer, or not a contiguous one.
        """
        addr = self._addr
        if _PyObject_GetBuffer(obj, addr, _PyBUF_SIMPLE) != 0:
            raise TypeError(f"{type(obj).__name__} does not export a simple buffer")
        start = self._view.buf
        _PyBuffer_Release(addr)
        return int(start or 0)

    def __call__(self, obj: object) -> int:
        """The start address of ``obj``'s buffer: ``from_buffer`` if writable, else
        :meth:`readonly`."""
        try:
            return ctypes.addressof(ctypes.c_char.from_buffer(obj))  # type: ignore[arg-type]
        except (TypeError, ValueError):  # read-only, or empty
            return self.readonly(obj)


def buffer_address(obj: object) -> int:
    """The start address of any object exporting a buffer, read-only ones included.

    For occasional use (it allocates a ``Py_buffer``); hot paths keep a :class:`BufferAddresser`.
    The export is released before returning: the address stays valid only as long as the object
    keeps its memory (for an mmap, until it is closed).
    """
    return BufferAddresser().readonly(obj)
