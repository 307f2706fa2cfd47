# Type stub of the compiled extension zcnet._speedups (sources: src/zcnet/_ext/*.c).
from collections.abc import Hashable, Iterator, Sequence
from mmap import mmap
from typing import Any, Generic, Protocol, Self, TypeVar

from typing_extensions import Buffer

from zcnet._core.tracker import Completion

class PinGroup:
    """Counts the BufferBase objects over one piece of memory that are not finalized."""

    @property
    def count(self) -> int: ...

class BufferBase:
    """Bytes of ``source`` exported through the buffer protocol with an exact export count."""

    def __new__(
        cls, source: Buffer, offset: int = 0, length: int = -1, *, readonly: bool = False,
        group: PinGroup | None = None,
    ) -> BufferBase: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, view: memoryview, /) -> None: ...
    @property
    def exports(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def _ended(self) -> bool: ...
    @property
    def _finalized(self) -> bool: ...
    @property
    def _address(self) -> int: ...
    def _end(self) -> bool: ...
    def _end_if_unexported(self) -> bool: ...

_B = TypeVar("_B", bound=BufferBase)

def end_lease(buf: BufferBase, view: memoryview | None, /) -> bool:
    """End ``buf`` and release ``view`` (its own memoryview) unless its memory is still used."""

def new_buffer(cls: type[_B], source: Buffer, offset: int, length: int, /) -> _B:
    """A new writable ``cls`` over ``length`` bytes of ``source`` at ``offset`` (no __init__)."""

# -- lease.c ----------------------------------------------------------------------------------

class LeaseBase(BufferBase):
    """The data of a zcnet.pool.Lease (its base class in the compiled implementation)."""

    _reaper: tuple[int, int] | None
    _view: memoryview | None
    _state: int
    @property
    def _pool(self) -> Any: ...
    @property
    def _block(self) -> Any: ...
    @property
    def _owner(self) -> Any: ...
    @property
    def _size(self) -> int: ...

_L = TypeVar("_L", bound=LeaseBase)

def new_lease(cls: type[_L], pool: Any, block: Any, size: int, owner: Any,
              core: PoolCore | None = None, /) -> _L:
    """A new leased ``cls`` over ``size`` bytes of ``block`` (no __init__)."""

def claim_lease(lease: Any, from_flight: bool = False, /) -> None:
    """Take the right to give ``lease`` back and end it (zcnet.pool._py_claim)."""

class ThreadCache:
    """zcnet.pool._ThreadCache in C: one thread's free lists, deferred returns and counters."""

    acquires: int
    releases: int
    cross_releases: int
    drained: int
    def __init__(self, nclasses: int, token: object, name: str) -> None: ...
    @property
    def free(self) -> list[list[Any]]: ...
    @property
    def deferred(self) -> Any: ...
    @property
    def name(self) -> str: ...
    @property
    def ident(self) -> int: ...
    def alive(self) -> bool: ...

class PoolCore:
    """A BufferPool's acquire, release and landing, their common cases in C."""

    def __init__(self, pool: Any, lease_type: type[LeaseBase], local: Any, book: FlightBook,
                 account: Any, waiters: set[Any], cap: list[int], max_size: int,
                 fallback: Any, release_fallback: Any, *, block_type: type | None = None,
                 slab_type: type | None = None) -> None: ...
    closed: bool
    def acquire(self, size: int, timeout: float | None = None) -> Any: ...
    def release(self, lease: Any, /) -> None: ...

class FlightBook:
    """zcnet._core.flight.FlightBook in C."""

    def __init__(self, lock: Any = None) -> None: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def flying(self) -> dict[Any, object]: ...
    @property
    def reapers(self) -> dict[tuple[int, int], list[Any]]: ...
    def check(self, pool: Any, leases: Sequence[Any], /) -> int: ...
    def take_off(self, leases: Sequence[Any], tickets: Sequence[Any],
                 key: tuple[int, int] | None, sender: object, /) -> None: ...
    def land(self, lease: Any, /) -> None: ...
# -- tracker.c --------------------------------------------------------------------------------

_T = TypeVar("_T", bound=Hashable)

class CompletionTracker(Generic[_T]):
    """zcnet._core.tracker.CompletionTracker in C (same API and semantics)."""

    uncertain_tail: bool
    _n: int
    def __init__(self, start: int = 0) -> None: ...
    @property
    def next_value(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def outstanding(self) -> int: ...
    @property
    def pending_tokens(self) -> int: ...
    def tokens(self) -> Iterator[_T]: ...
    def is_outstanding(self, value: int) -> bool: ...
    def record_send(self, token: _T, nbytes: int) -> int: ...
    def record_uncertain(self, token: _T) -> int: ...
    def record_single(self, token: _T, nbytes: int) -> int: ...
    def record_batch(self, tokens: Sequence[_T], sizes: Sequence[int]) -> int: ...
    def seal(self, token: _T) -> bool | None: ...
    def complete(self, lo: int, hi: int, copied: bool) -> Completion[_T]: ...

# -- txfast.c ---------------------------------------------------------------------------------
REAP_EVERY: int
REAP_SHIFT: int

class TicketBase:
    """The data of a zcnet.sender.Ticket and its completion (its base class)."""

    nbytes: int
    done: bool
    zerocopy: bool
    copied: bool | None
    error: Any
    _sender: Any
    _view: memoryview | None
    _callbacks: list[Any] | None
    _lease: Any
    def _finish(self, copied: bool) -> None: ...

class TxCounters:
    """The counters of zcnet._core.txpolicy.TxController (its base class)."""

    threshold: int
    bytes_zerocopy: int
    bytes_copied: int
    bytes_plain: int
    bytes_pending: int
    sends_zerocopy: int
    sends_plain: int
    completions: int
    notifications: int
    enobufs: int
    enobufs_round: int
    enobufs_copies: int
    other_errors: int
    copied_calls: int
    reap_units: int
    handed: int
    zerocopy: bool

class TxCore:
    """The compiled send fast path and completion reaping of one zcnet.sender.Sender."""

    def __init__(
        self, sender: Any, fd: int, single_max: int, engine: Any, ticket_type: type[TicketBase],
        ring: Ring | None = None, waitall: bool = False, lease_type: type[Any] | None = None,
        register_lease: Any = None,
    ) -> None: ...
    def send(self, buf: Buffer, /) -> Any: ...
    def reap(self) -> tuple[int, int]: ...
    def send_batch(self, bufs: Any, /) -> list[Any] | None: ...
    def batch(self, bufs: Any, /) -> list[Any]: ...
class Ring:
    """An io_uring for SEND_ZC sends, emulating MSG_ZEROCOPY's completion counter (uring.c)."""

    fd: int
    took: int | None
    awaiting: int
    counter: int
    batch_max: int
    sends_registered: int
    def __init__(self, entries: int = 64) -> None: ...
    def send(self, fd: int, buffer: Buffer, fixed_index: int, waitall: bool, /) -> int: ...
    def send_many(self, fd: int, buffers: list[Any], fixed_indexes: list[int] | None,
                  start: int, stop: int, /) -> int: ...
    def wait(self, timeout: float | None, /) -> None: ...
    def register_table(self, n: int, /) -> None: ...
    def register_buffer(self, index: int, address: int, length: int, /) -> None: ...
    def register_eventfd(self, fd: int, /) -> None: ...
    def close(self) -> None: ...

class ChunkBase(BufferBase):
    """Received bytes, read-only, as a buffer whose exports are counted (rx.c)."""

    def __new__(cls, source: Buffer, mapped: bool = False) -> ChunkBase: ...
    @property
    def view(self) -> memoryview: ...
    @property
    def mapped(self) -> bool: ...
    def tobytes(self) -> bytes: ...
    def release(self) -> None: ...
    def __bool__(self) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...

class ZerocopyReceive:
    """One connection's TCP_ZEROCOPY_RECEIVE and copy-mode receive calls (rx.c)."""

    def __new__(cls, fd: int, copybuf_len: int, chunk_type: type[ChunkBase]) -> ZerocopyReceive: ...
    @property
    def copybuf(self) -> bytearray: ...
    def receive(
        self, window: _Region, length: int, copybuf: bool, /,
    ) -> tuple[ChunkBase | None, int, ChunkBase | None, int, int, int]: ...
    def recv_copy(self, buffer: _Region, nbytes: int, /) -> ChunkBase | None: ...

class RxCore:
    """The compiled receive fast path of one zcnet.receiver.Receiver (rxfast.c)."""

    def __new__(
        cls, receiver: Any, fd: int, window_bytes: int, rcvlowat: int, page_size: int,
    ) -> RxCore: ...
    def recv(self, max_bytes: int, timeout: float | None = None) -> Any: ...

class _Region(Protocol):
    """A window or copy buffer of zcnet.lowlevel.zerocopy_rx: its memory and its PinGroup."""

    @property
    def memory(self) -> mmap | bytearray: ...
    @property
    def group(self) -> PinGroup: ...
