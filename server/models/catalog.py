"""What a worker process knows of the engine's models (`serve --workers N`): a picklable copy of the model
manager's state, sent by the engine whenever readiness may have changed and mirrored by each worker's
`RemoteManager` (server/remote/), so that lookups, metadata, readiness and the repository index are answered
in the worker, against the same state, with the same code and wording as in one process.

Each loaded version carries what the front end needs to accept, decode and encode a request for it: its
tensors (BackendInfo), labels, preprocessing spec, batch limit, instance count and config.pbtxt; its
backends, batcher and counters stay in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resnet_serve.formats.preprocess import PreprocessSpec
from resnet_serve.runtime.base import BackendInfo
from resnet_serve.server.config import ModelSettings
from resnet_serve.server.models.served import ServedModel, VersionStatus
from resnet_serve.server.models.triton_config import TritonModelConfig


@dataclass(frozen=True)
class VersionView:
    """One loaded version, as a worker serves it."""

    name: str
    version: str
    path: Path
    settings: ModelSettings
    info: BackendInfo
    labels: tuple[str, ...]
    preprocess: PreprocessSpec | None
    max_batch_size: int  # the batcher's (min of the setting and the model's)
    instances: int
    state: str
    load_s: float
    triton: TritonModelConfig | None
    serial: int  # the engine's id of this build: a reload gives a new one
    slot: int  # its row in the shared table of queue places (server/ipc/places.py); -1: none

    @classmethod
    def of(cls, model: ServedModel, slot: int = -1) -> VersionView:
        return cls(
            name=model.name,
            version=model.version,
            path=model.path,
            settings=model.settings,
            info=model.info,
            labels=tuple(model.labels),
            preprocess=model.preprocessor.spec if model.preprocessor is not None else None,
            max_batch_size=model.batcher.max_batch_size,
            instances=model.instances,
            state=str(model.state),
            load_s=model.load_s,
            triton=model.triton,
            serial=id(model),
            slot=slot,
        )


@dataclass(frozen=True)
class EntryView:
    """One model name: its settings, loaded versions, every version's status, and whether it was unloaded."""

    name: str
    settings: ModelSettings
    versions: tuple[VersionView, ...]
    statuses: tuple[VersionStatus, ...]
    unloaded: bool


@dataclass(frozen=True)
class Catalog:
    """The engine's models, in the manager's order."""

    entries: tuple[EntryView, ...]
    accepting: bool
