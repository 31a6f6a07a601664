"""Each model version's queue depth at the engine, in shared memory that every worker maps: the engine's
batchers write it as it changes, and a worker reads it before it decodes a request, so that a request which
would find the queue full is refused where it arrived, before any work (the engine's admission, at the
batcher, stays the rule: this is the early answer, not the decision). One int64 per version, by the slot the
engine gives each version in the catalog (server/models/catalog.py)."""

from __future__ import annotations

import mmap
import os
from typing import Final

import numpy as np

SLOTS: Final = 4096
_BYTES: Final = SLOTS * 8


def new_depths_fd() -> int:
    """The memfd the engine creates once and passes to every worker (pass_fds)."""
    fd = os.memfd_create("resnet-serve-queue-depths", 0)
    os.ftruncate(fd, _BYTES)
    return fd


class QueueDepths:
    """A view of the table: the engine's with `writable`, a worker's read-only."""

    def __init__(self, fd: int, writable: bool = False) -> None:
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self._map = mmap.mmap(fd, _BYTES, access=access)
        self._depths = np.frombuffer(self._map, dtype=np.int64, count=SLOTS)

    def set(self, slot: int, depth: int) -> None:
        self._depths[slot] = depth

    def get(self, slot: int) -> int:
        return int(self._depths[slot]) if 0 <= slot < SLOTS else 0
