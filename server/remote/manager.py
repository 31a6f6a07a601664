"""The model manager of a worker process: the engine's models, mirrored from the CATALOG messages the engine
sends after every change (server/models/catalog.py), behind the `ModelManager` interface the services use.

Lookups, readiness, metadata and the repository index run here, on the mirror, with `ModelManager`'s own code
and wording. Each mirrored version's batcher is a `RemoteBatcher`: a request goes to the engine's batcher of
that version over the worker's link, and a full queue there refuses it (the engine's admission is the
server's). Loads and unloads are forwarded to the engine, and return once the engine has loaded and this
worker has the new catalog; the others get it at the same moment.
"""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np

from resnet_serve.formats.preprocess import Preprocessor
from resnet_serve.server.batching.batcher import BatchResult, Ticket, check_rows, full_queue
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.errors import unavailable
from resnet_serve.server.ipc import messages as m
from resnet_serve.server.ipc.places import QueuePlaces
from resnet_serve.server.models.catalog import Catalog, VersionView
from resnet_serve.server.models.manager import ModelManager, _Entry
from resnet_serve.server.models.overrides import LoadOverride
from resnet_serve.server.models.served import ModelState, ServedModel
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.observability.model_metrics import ModelStatistics
from resnet_serve.server.remote.link import EngineLink

log = logging.getLogger(__name__)

_ALIGN = 64  # the engine starts each output in the out block at a multiple of this


class RemoteBatcher:
    """A worker's handle on the engine's batcher of one model version."""

    def __init__(self, link: EngineLink, view: VersionView, places: QueuePlaces | None = None) -> None:
        self._link = link
        self._slot = view.slot
        self._places = places if view.slot >= 0 else None
        self.name = view.name
        self.version = view.version
        self.config = view.settings.batching
        self.max_batch_size = view.max_batch_size
        self.batched = view.info.max_batch_size > 0
        self._reserved = 0
        self._waiting = 0
        # Bytes of one request row's outputs, when every output's shape is known: the engine writes them
        # into a block of the arena set aside with the request; otherwise they come back in the message.
        first = 1 if self.batched else 0
        row = 0
        for spec in view.info.outputs:
            dims = spec.shape[first:]
            if spec.dtype.hasobject or any(d < 0 for d in dims):
                row = 0
                break
            row += math.prod(dims) * spec.dtype.itemsize
        self._row_bytes = row
        self._slack = _ALIGN * len(view.info.outputs)

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def idle(self) -> bool:
        return self._waiting == 0

    def reserve(self, places: int = 1) -> Ticket:
        """A place per request about to be decoded, refused (UNAVAILABLE) before any decoding when the
        engine's queue has no room for it: counting what every worker has claimed or sent and the engine has
        not queued yet (server/ipc/places.py). The engine's batcher still decides."""
        shared = self._places
        taken = shared.taken(self._slot) if shared is not None else self._waiting + self._reserved
        if taken + places > self.config.max_queue_size:
            raise full_queue(self.name, self.config.max_queue_size)
        if shared is not None:
            shared.claim(self._slot, places)
        self._reserved += places
        return Ticket(self._release, places)

    def _release(self, ticket: Ticket) -> None:
        """The places a call claimed and did not fill, given back."""
        if self._places is not None:
            self._places.claim(self._slot, -ticket.places)
        self._reserved -= ticket.places
        ticket.places = 0

    async def submit(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, ticket: Ticket | None = None
    ) -> BatchResult:
        shared = self._places
        if ticket is not None and ticket.places > 0:  # the place it claimed goes with it to the engine
            ticket.places -= 1
            self._reserved -= 1
        elif shared is not None:
            shared.claim(self._slot, 1)
        rows = 1
        if self.batched and inputs:
            rows = next(iter(inputs.values())).shape[0]
        out_bytes = rows * self._row_bytes + self._slack if self._row_bytes else 0
        link = self._link
        try:
            sent = link.send_infer(self.name, self.version, inputs, timeout_s, out_bytes, self._slot)
        except BaseException:
            if shared is not None:  # never sent: the engine will not count it received
                shared.claim(self._slot, -1)
            raise
        self._waiting += 1
        # The deadline is the engine's rule too, but it looks only when a batch takes the request: told here
        # when it passes, the engine answers a request still queued at once, as one process does.
        timeout_ms = self.config.timeout_ms
        if timeout_ms > 0:
            timeout_s = timeout_ms / 1000 if timeout_s is None else min(timeout_s, timeout_ms / 1000)
        timer = (
            None
            if timeout_s is None
            else asyncio.get_running_loop().call_later(timeout_s, link.expire, sent[0])
        )
        try:
            return await link.answer(*sent)
        finally:
            self._waiting -= 1
            if timer is not None:
                timer.cancel()

    def check_rows(self, rows: int) -> None:
        check_rows(self.name, rows, self.max_batch_size)

    def close(self) -> None:
        return None

    def abandon(self, message: str) -> int:
        return 0  # the worker's requests at the engine end through `RemoteManager.abandon`

    def join(self, timeout_s: float | None = None) -> bool:
        return True


class RemoteManager(ModelManager):
    """`ModelManager` over the engine's models (see the module's docstring)."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics,
        link: EngineLink,
        places: QueuePlaces | None = None,
    ) -> None:
        super().__init__(config, metrics)
        self._link = link
        self._places = places
        self._serials: dict[tuple[str, str], tuple[int, ServedModel]] = {}
        self._catalog_seen = asyncio.Event()
        link.on(m.CATALOG, self.apply)
        link.on_lost(self._engine_lost)

    def apply(self, catalog: Catalog) -> None:
        """Mirror the engine's models (a CATALOG message)."""
        entries: dict[str, _Entry] = {}
        serials: dict[tuple[str, str], tuple[int, ServedModel]] = {}
        for entry in catalog.entries:
            versions: dict[str, ServedModel] = {}
            for view in entry.versions:
                key = (view.name, view.version)
                known = self._serials.get(key)
                model = known[1] if known is not None and known[0] == view.serial else self._served(view)
                model.state = ModelState(view.state)
                versions[view.version] = model
                serials[key] = (view.serial, model)
            entries[entry.name] = _Entry(
                entry.settings, versions, {s.version: s for s in entry.statuses}, entry.unloaded
            )
        self._entries = entries
        self._serials = serials
        self._catalog_seen.set()
        self._notify()

    def _served(self, view: VersionView) -> ServedModel:
        preprocessor = None
        if view.preprocess is not None:
            preprocessor = Preprocessor(view.preprocess, self._builder.limits, self._builder.decode_budget)
        return ServedModel(
            name=view.name,
            version=view.version,
            path=view.path,
            settings=view.settings,
            info=view.info,
            labels=list(view.labels),
            preprocessor=preprocessor,
            batcher=RemoteBatcher(self._link, view, self._places),
            metrics=self.metrics.model(view.name, view.version),
            backends=[],
            load_s=view.load_s,
            triton=view.triton,
            instances=view.instances,
        )

    def _engine_lost(self) -> None:
        self._notify()  # readiness: all_ready is false from now on

    # -------------------------------------------------------------------------------------- the interface

    def all_ready(self, strict: bool = True) -> bool:
        return self._link.alive and super().all_ready(strict)

    def idle(self) -> bool:
        return self._link.idle

    async def start(self) -> None:
        """Wait for the engine's first catalog (it sends one as soon as the worker connects)."""
        await self._catalog_seen.wait()

    async def load(
        self, name: str, settings: ModelSettings | None = None, override: LoadOverride | None = None
    ) -> None:
        if not self._accepting:
            raise unavailable("server is shutting down")
        await self._link.call(m.LOAD, name, override)

    async def unload(self, name: str) -> None:
        await self._link.call(m.UNLOAD, name)

    async def statistics(self, models: list[ServedModel]) -> list[ModelStatistics]:
        """The server's totals (every worker's requests, the engine's batches), from the engine."""
        keys = [(model.name, model.version) for model in models]
        stats: list[ModelStatistics] = await self._link.call(m.STATISTICS, keys)
        return stats

    def abandon(self, message: str) -> int:
        """Every request and call of this worker still waiting on the engine ends UNAVAILABLE."""
        self._accepting = False
        return self._link.abandon(message)

    async def close(self, grace_s: float) -> None:
        """Nothing to release here: the backends are the engine's."""
        self._accepting = False
