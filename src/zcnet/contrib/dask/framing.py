"""Wire format of one Dask message on a ``zc://`` connection (pure logic, stdlib only).

Theory of operation: Dask hands a comm a list of frames (``distributed.protocol.dumps``). On the
wire a message is a *prelude* followed by the frames, back to back::

    u64 nframes | u64 size[0] ... u64 size[nframes-1] | frame 0 | frame 1 | ...

(little-endian). The sizes travel first so that the receiver can prepare each frame's final
destination before any of its bytes arrive: every frame gets a right-sized buffer of its own
(:func:`frame_groups`), which Dask's deserializers then use without another copy and which is
freed with the one object that uses it (Dask's TCP comm also reads buffers into separate
allocations, so one small array never keeps another's memory alive). Bit 63 of a size
(:data:`JOINED`) says that the frame continues the previous one in memory at the sender (Dask
shards buffers larger than ``distributed.comm.shard``): the receiver then puts both in one
buffer, so Dask's ``merge_memoryviews`` rejoins the shards without the copy it makes of
separately allocated ones. On the sending side the same size threshold splits the message into
*segments*: runs of small frames (and the prelude) go out in one gathered copying send, each
large frame in its own send, which may use ``MSG_ZEROCOPY``
(Documentation/networking/msg_zerocopy.rst: zero-copy pays only for large sends).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "COUNT_SIZE",
    "JOINED",
    "MAX_FRAMES",
    "FramingError",
    "Segment",
    "decode_count",
    "decode_sizes",
    "encode_prelude",
    "frame_groups",
    "plan_segments",
]

COUNT_SIZE = 8
JOINED = 1 << 63
MAX_FRAMES = 1 << 20
_MAX_FRAME = 1 << 50  # a sanity bound (1 PiB): anything larger is a corrupt stream


class FramingError(ValueError):
    """The bytes on the wire are not a valid prelude (corrupt or foreign stream)."""


def encode_prelude(sizes: Sequence[int], joined: Sequence[bool] | None = None) -> bytes:
    """The prelude announcing frames of ``sizes`` bytes (``joined[i]``: frame i continues i-1)."""
    if len(sizes) > MAX_FRAMES:
        raise FramingError(f"{len(sizes)} frames exceed the limit of {MAX_FRAMES}")
    words = list(sizes)
    if joined is not None:
        words = [s | JOINED if j and i else s for i, (s, j) in enumerate(zip(sizes, joined,
                                                                             strict=True))]
    return struct.pack(f"<Q{len(words)}Q", len(words), *words)


def decode_count(data: bytes | bytearray | memoryview) -> int:
    """The frame count from the first :data:`COUNT_SIZE` bytes of a prelude."""
    (n,) = struct.unpack("<Q", data)
    if n > MAX_FRAMES:
        raise FramingError(f"prelude announces {n} frames (limit {MAX_FRAMES})")
    return int(n)


def decode_sizes(data: bytes | bytearray | memoryview, count: int
                 ) -> tuple[list[int], list[bool]]:
    """The ``count`` frame sizes following the count in a prelude, and their joined flags."""
    words = struct.unpack(f"<{count}Q", data)
    sizes = [w & ~JOINED for w in words]
    joined = [bool(w & JOINED) for w in words]
    for s in sizes:
        if s > _MAX_FRAME:
            raise FramingError(f"prelude announces a frame of {s} bytes")
    return sizes, joined


@dataclass(frozen=True, slots=True)
class Segment:
    """Frames ``[start, stop)`` handled by one transfer; ``large`` if it is a single big frame."""

    start: int
    stop: int
    large: bool


def plan_segments(sizes: Sequence[int], threshold: int,
                  joined: Sequence[bool] | None = None) -> list[Segment]:
    """Group frames: each frame of ``threshold`` bytes or more alone, the others in runs.

    A frame marked ``joined`` that follows a large segment extends it, whatever its size (the
    last shard of a buffer is usually short). The same plan serves the sender (one send per
    segment, zero-copy candidates are the large ones) and the receiver (one buffer per segment).
    """
    plan: list[Segment] = []
    run_start: int | None = None
    for i, size in enumerate(sizes):
        if joined is not None and joined[i] and run_start is None and plan and plan[-1].large \
                and plan[-1].stop == i:
            plan[-1] = Segment(plan[-1].start, i + 1, True)
        elif size >= threshold:
            if run_start is not None:
                plan.append(Segment(run_start, i, False))
                run_start = None
            plan.append(Segment(i, i + 1, True))
        elif run_start is None:
            run_start = i
    if run_start is not None:
        plan.append(Segment(run_start, len(sizes), False))
    return plan


def frame_groups(joined: Sequence[bool]) -> list[tuple[int, int]]:
    """The receive buffers of a message: ``(start, stop)`` frame ranges, one per buffer.

    Each frame starts a buffer of its own, except one marked ``joined``, which continues the
    previous frame's buffer (a shard of the same sender buffer). Frames are never grouped by
    size: one buffer per frame lets each deserialized object be freed on its own.
    """
    groups: list[tuple[int, int]] = []
    for i, j in enumerate(joined):
        if j and groups:
            groups[-1] = (groups[-1][0], i + 1)
        else:
            groups.append((i, i + 1))
    return groups
