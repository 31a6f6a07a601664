"""A worker's tensor arena: one memfd that the worker and the engine both map, so that a request's rows cross
into the engine without being copied through a socket.

The worker owns the arena and allocates in it (`Arena`, on the worker's event loop thread only): it writes a
request's input rows into blocks it allocates and sends the engine only their offsets; the engine
(`MappedArena`) reads the rows from there into its batch and writes the outputs into a block the worker set
aside for them. A block is given back when the engine's answer arrives, never earlier, so the engine never
reads memory that has been reused.

Allocation is by size class (powers of two from 4 KiB): a free list per class, and a bump pointer that carves
new blocks while the arena has room. Both are O(1) and the mapping is created once, so a request costs two
dict/list operations and a `memcpy`. The memfd is sparse: pages the arena never touched cost no memory. When
the arena is full `alloc` returns None and the caller sends the tensor inline instead: correctness never
depends on room in the arena.

A block's pages stay in memory when it is freed (a freed block is reused at once under load, and giving its
pages back would fault them in again on every request, as glibc's malloc did: docs/benchmarking.md). So after
a burst the arena would keep its peak in memory for good, and shared memory counts against a container's
memory limit. `trim` gives the pages of the free blocks back to the kernel (MADV_REMOVE); the worker's link
calls it once it has been idle for a while (server/remote/link.py), when enough freed memory is held.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

import numpy as np

MIN_BLOCK: Final = 4096
DEFAULT_ARENA_BYTES: Final = 1 << 30  # virtual: a sparse memfd costs only the pages written


def new_memfd(size: int = DEFAULT_ARENA_BYTES, name: str = "resnet-serve-arena") -> int:
    """A sparse memfd of `size` bytes, inheritable by a child process (pass_fds)."""
    fd = os.memfd_create(name, 0)
    os.ftruncate(fd, size)
    return fd


def _size_class(nbytes: int) -> int:
    """The smallest power of two >= nbytes, at least MIN_BLOCK."""
    return max(MIN_BLOCK, 1 << (max(nbytes, 1) - 1).bit_length())


class Arena:
    """The worker's side: a memfd of `size` bytes, mapped read-write, with a block allocator."""

    def __init__(self, fd: int, size: int) -> None:
        """The arena `new_memfd` made (the engine makes one per worker and passes it on)."""
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, size)
        self._view = memoryview(self._map)
        self._free: dict[int, list[int]] = {}
        self._class_of: dict[int, int] = {}  # offset → size class of the block allocated there
        self._top = 0
        self._trimmed: set[int] = set()  # free blocks whose pages were given back
        self.held_free_bytes = 0  # bytes of free blocks whose pages may still be in memory

    def alloc(self, nbytes: int) -> int | None:
        """The offset of a block of at least `nbytes`, or None when the arena has no room."""
        size = _size_class(nbytes)
        free = self._free.get(size)
        if free:
            offset = free.pop()
            if offset in self._trimmed:
                self._trimmed.discard(offset)
            else:
                self.held_free_bytes -= size
        elif self._top + size <= self.size:
            offset = self._top
            self._top += size
        else:
            return None
        self._class_of[offset] = size
        return offset

    def free(self, offset: int) -> None:
        size = self._class_of.pop(offset)
        self._free.setdefault(size, []).append(offset)
        self.held_free_bytes += size

    def trim(self) -> int:
        """Give the pages of every free block back to the kernel (they read as zeros when reused); returns
        the bytes given back. Allocated blocks are untouched."""
        advice = getattr(mmap, "MADV_REMOVE", None)
        if advice is None:  # not Linux: nothing to give back this way
            return 0
        released = 0
        for size, offsets in self._free.items():
            for offset in offsets:
                if offset not in self._trimmed:
                    self._map.madvise(advice, offset, size)
                    self._trimmed.add(offset)
                    released += size
        self.held_free_bytes = 0
        return released

    def write(self, offset: int, array: np.ndarray) -> None:
        """Copy `array`'s bytes to `offset` (a block at least that large)."""
        source = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        self._view[offset : offset + source.nbytes] = source

    def array(self, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """A view of the block at `offset` as an array (valid until the block is freed)."""
        return _array(self._map, offset, dtype, shape)

    @property
    def blocks_in_use(self) -> int:
        return len(self._class_of)


class MappedArena:
    """The engine's side of a worker's arena: reads inputs from it and writes outputs into it."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(fd, size)
        self._view = memoryview(self._map)

    def array(self, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        return _array(self._map, offset, dtype, shape)

    def write(self, offset: int, capacity: int, array: np.ndarray) -> bool:
        """Copy `array` to the block at `offset` when it fits in `capacity` bytes; False when it does not."""
        if array.nbytes > capacity or array.dtype.hasobject:
            return False
        source = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        self._view[offset : offset + source.nbytes] = source
        return True


def _array(buffer: mmap.mmap, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    kind = np.dtype(dtype)
    count = 1
    for dim in shape:
        count *= dim
    return np.frombuffer(buffer, dtype=kind, count=count, offset=offset).reshape(shape)
