"""The choice of implementation, and the compiled extension's exactly counted buffers."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

import zcnet
from zcnet._accel import speedups
from zcnet.errors import BufferLifetimeError

compiled = pytest.mark.skipif(speedups is None,
                              reason=f"the Python implementation is active: "
                                     f"{zcnet.implementation().reason}")


def test_implementation_is_reported() -> None:
    impl = zcnet.implementation()
    assert impl.name in ("c", "python")
    assert impl.reason
    assert (speedups is not None) == (impl.name == "c")


def test_no_extensions_forces_python() -> None:
    env = dict(os.environ, ZCNET_NO_EXTENSIONS="1")
    out = subprocess.run(
        [sys.executable, "-c", "import zcnet; i = zcnet.implementation(); print(i.name, i.reason)"],
        env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("python ZCNET_NO_EXTENSIONS is set"), out


@compiled
def test_exports_are_counted_exactly() -> None:
    assert speedups is not None
    group = speedups.PinGroup()
    source = bytearray(range(256)) * 16
    buf = speedups.BufferBase(source, 100, 1000, readonly=True, group=group)
    assert (len(buf), buf.nbytes, buf.exports, group.count) == (1000, 1000, 0, 1)
    assert bytes(buf) == bytes(source[100:1100])
    assert hashlib.sha256(buf).digest() == hashlib.sha256(source[100:1100]).digest()
    view = memoryview(buf)
    assert view.readonly
    piece = view[10:20]
    again = memoryview(piece)
    del view, piece
    assert buf.exports == 1  # the slices share the first view's one export
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert buf.exports == 2
    assert not buf._end()  # exports alive: ended, not finalized
    with pytest.raises(BufferLifetimeError):
        memoryview(buf)
    assert group.count == 1
    assert bytes(again) == bytes(source[110:120])
    del again
    assert buf.exports == 1 and group.count == 1
    assert int(arr[0]) == source[100]
    del arr
    assert buf.exports == 0 and group.count == 0 and buf._finalized


@compiled
def test_source_is_held_until_finalized() -> None:
    assert speedups is not None
    source = bytearray(4096)
    buf = speedups.BufferBase(source)
    with pytest.raises(BufferError):
        source.append(1)  # our export keeps the bytearray from moving
    view = memoryview(buf)
    view[0] = 7  # writable source, writable export
    assert source[0] == 7
    assert not buf._end_if_unexported()  # refused, nothing changed
    assert not buf._ended
    view.release()
    assert buf._end_if_unexported()
    source.append(1)  # no longer exported
    with pytest.raises(BufferLifetimeError):
        bytes(buf)


@compiled
def test_readonly_refuses_writable_exports_and_bad_bounds() -> None:
    assert speedups is not None
    buf = speedups.BufferBase(b"abcdef", readonly=True)
    with pytest.raises((BufferError, TypeError)):
        io.BytesIO(b"xyz").readinto(buf)  # asks for a writable export
    assert not np.frombuffer(buf, dtype=np.uint8).flags.writeable
    with pytest.raises(BufferError):
        speedups.BufferBase(b"abc")  # bytes are read-only: readonly=False needs a writable one
    with pytest.raises(ValueError, match="do not fit"):
        speedups.BufferBase(b"abc", 2, 5, readonly=True)
    with pytest.raises(TypeError, match="PinGroup"):
        speedups.BufferBase(b"abc", readonly=True, group=object())  # type: ignore[arg-type]


@compiled
def test_dropped_buffer_leaves_its_group() -> None:
    assert speedups is not None
    group = speedups.PinGroup()
    buf = speedups.BufferBase(bytearray(64), group=group)
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is None and group.count == 0
