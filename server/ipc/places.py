"""Each model version's queue places, granted across every process of `serve --workers N`: a worker refuses a
request that would find the queue full before it decodes it, counting what the other workers have claimed
and what is still on its way to the engine, not only what the engine has queued.

One row of int64 per version, at the slot the engine gives the version in the catalog (server/models/
catalog.py), in a memfd the engine creates and every worker maps:

    depth                        requests in the engine's batcher queue (its batcher writes it as it changes)
    claimed[w], one per worker   places worker w holds: those its requests hold while they are decoded (a
                                 `Ticket`), plus every request it has sent to the engine (a running count)
    received[w], one per worker  the requests of worker w the engine has taken off its socket (a running
                                 count)

A request sent and not yet received is in the socket; once received it is in the queue (depth), running, or
refused. So the places taken, as any process sees them, are depth + Σ claimed − Σ received: one process's
`len(queue) + reserved`, for the whole server. Each cell has one writer (the engine's batcher, worker w, or
the engine's reader thread for worker w), and an aligned 8-byte store is atomic, so no lock: a reader may see
a count a moment old, and two workers may both take the last place. The engine's batcher still decides, as
it did: this is the early answer, before the work. When a worker's place is started again, the engine zeroes
that worker's cells first (what the dead one claimed or sent is gone with it).
"""

from __future__ import annotations

import mmap
import os
from typing import Final

import numpy as np

SLOTS: Final = 4096
_CELL: Final = 8


def row_cells(workers: int) -> int:
    return 1 + 2 * workers


def new_places_fd(workers: int) -> int:
    """The memfd the engine creates once and passes to every worker (pass_fds)."""
    fd = os.memfd_create("resnet-serve-queue-places", 0)
    os.ftruncate(fd, SLOTS * row_cells(workers) * _CELL)
    return fd


class QueuePlaces:
    """A process's view of the table. `worker`: this process is that worker (it claims places); None: the
    engine (it writes the depths and what it received)."""

    def __init__(self, fd: int, workers: int, worker: int | None = None) -> None:
        if workers < 1 or (worker is not None and not 0 <= worker < workers):
            raise ValueError(f"worker {worker} of {workers}")
        self.workers = workers
        self._map = mmap.mmap(fd, SLOTS * row_cells(workers) * _CELL)
        self._table = np.frombuffer(self._map, dtype=np.int64).reshape(SLOTS, row_cells(workers))
        self._claimed = 1 + (worker if worker is not None else 0)
        # taken = row · signs: +1 for the depth and every claimed count, −1 for every received count
        self._signs = np.array([1] * (1 + workers) + [-1] * workers, dtype=np.int64)

    # --------------------------------------------------------------------------------- anyone

    def taken(self, slot: int) -> int:
        """The places of `slot`'s queue that are taken, server-wide."""
        return int(self._table[slot] @ self._signs)

    # --------------------------------------------------------------------------------- a worker

    def claim(self, slot: int, places: int) -> None:
        """This worker holds `places` more places of `slot` (fewer when negative: given back unused)."""
        self._table[slot, self._claimed] += places

    # --------------------------------------------------------------------------------- the engine

    def set_depth(self, slot: int, depth: int) -> None:
        self._table[slot, 0] = depth

    def received(self, worker: int, slot: int) -> None:
        """The engine took one of `worker`'s requests for `slot` off its socket."""
        self._table[slot, 1 + self.workers + worker] += 1

    def reset(self, worker: int) -> None:
        """Before a worker is started in place `worker`: nothing of its predecessor is held any more."""
        self._table[:, 1 + worker] = 0
        self._table[:, 1 + self.workers + worker] = 0
