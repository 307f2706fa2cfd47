# Type stub of the compiled extension zcnet._speedups (sources: src/zcnet/_ext/*.c).
from typing import TypeVar

from typing_extensions import Buffer

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
