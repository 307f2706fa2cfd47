"""The C library, loaded once for every ctypes call zcnet makes.

Theory of operation (dlopen(3); ``Lib/ctypes/__init__.py``; ``Lib/ctypes/util.py``):
``ctypes.util.find_library("c")`` runs ``ldconfig -p`` (and, failing that, ``gcc`` or ``ld``) in
a child process on Linux, so calling it at import makes ``import zcnet`` fork and exec.
``ctypes.CDLL(None)`` is ``dlopen(NULL)``: the handle of the running program, whose symbol lookup
covers every library already loaded with global scope, libc among them (the interpreter links
against it). Nothing is searched on disk and no process is started. Should a symbol be missing
from that handle (an interpreter linked statically, an unusual loader), ``libc.so.6`` (glibc's
soname) is tried by name, still without ``find_library``.

All handles are made with ``use_errno=True``: ctypes swaps the thread's ``errno`` in and out
around each call, so :func:`errno_error` reads the ``errno`` of the call that just failed in
this thread.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Final

__all__ = ["LIBC", "errno_error", "libc_function"]

#: ``dlopen(NULL)``: the symbols already linked into this process (libc included).
LIBC: Final = ctypes.CDLL(None, use_errno=True)

_fallback: ctypes.CDLL | None = None


def libc_function(name: str, argtypes: tuple[Any, ...], restype: Any) -> Any:
    """libc's ``name`` as a ctypes function with the given signature.

    Each call returns a new function object (``CDLL[name]``, not the attribute ``CDLL`` caches),
    so two modules can give the same symbol different ``argtypes`` without clashing.

    Raises:
        AttributeError: neither the process nor ``libc.so.6`` has the symbol.
    """
    global _fallback
    try:
        fn = LIBC[name]
    except AttributeError:
        if _fallback is None:
            try:
                _fallback = ctypes.CDLL("libc.so.6", use_errno=True)
            except OSError as e:
                raise AttributeError(f"libc has no {name} ({e})") from e
        fn = _fallback[name]
    fn.argtypes = argtypes
    fn.restype = restype
    return fn


def errno_error(what: str | None = None) -> OSError:
    """An ``OSError`` for the ``errno`` the last failed libc call left in this thread.

    ``what`` (e.g. ``"mmap"``) is put in front of the message; the ``errno`` attribute is the
    kernel's code either way, so ``OSError`` subclass dispatch (``BlockingIOError``, ...) works.
    """
    err = ctypes.get_errno()
    msg = os.strerror(err)
    return OSError(err, f"{what}: {msg}" if what else msg)
