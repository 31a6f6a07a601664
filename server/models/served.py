"""A served model version: its backends behind a batcher, and what the APIs need to know about it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnet_serve.formats.preprocess import Preprocessor
from resnet_serve.runtime.base import Backend, BackendInfo, TensorSpec
from resnet_serve.server.batching.batcher import BatchResult, Ticket
from resnet_serve.server.batching.queue import BatchQueue
from resnet_serve.server.config import ModelSettings
from resnet_serve.server.models.triton_config import TritonModelConfig
from resnet_serve.server.observability.model_metrics import ModelMetrics


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ServedModel:
    """One loaded version of a model: its backends behind a batcher, and what the APIs need to know."""

    name: str
    version: str
    path: Path
    settings: ModelSettings
    info: BackendInfo
    labels: list[str]
    preprocessor: Preprocessor | None  # None: the model has no preprocess metadata (tensor API only)
    batcher: BatchQueue
    metrics: ModelMetrics
    backends: list[Backend]
    state: ModelState = ModelState.READY
    load_s: float = 0.0
    triton: TritonModelConfig | None = None  # its config.pbtxt, for what ModelConfig reports as stated
    # Execution instances: len(backends) where the backends are here; a worker process's copy of an engine's
    # model (server/remote/) has none and is told the count.
    instances: int = 0
    # `info`'s inputs by name and its output names, made once: every request's decoding looks them up.
    input_specs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.instances:
            self.instances = len(self.backends)
        self.input_specs = {spec.name: spec for spec in self.info.inputs}
        self.output_names = tuple(spec.name for spec in self.info.outputs)

    async def infer(
        self, inputs: dict[str, np.ndarray], timeout_s: float | None = None, ticket: Ticket | None = None
    ) -> BatchResult:
        """Queue a request on this version's batcher (see DynamicBatcher.submit for the errors)."""
        return await self.batcher.submit(inputs, timeout_s, ticket)

    def image_input(self, rows: np.ndarray) -> np.ndarray:
        """Preprocessed images, (N, C, H, W), as the model's image input takes them: a model without a batch
        dimension whose input is [C, H, W] takes its one image whole."""
        if self.info.max_batch_size == 0 and self.info.inputs and len(self.info.inputs[0].shape) == 3:
            one: np.ndarray = rows[0]
            return one
        return rows

    @staticmethod
    def output_rows(output: np.ndarray, rows: int) -> np.ndarray:
        """An output as one row of scores per image (a model without a batch dimension answers [classes]
        for its one image, Triton's densenet [1, classes, 1, 1])."""
        return output.reshape(rows, -1)


@dataclass(frozen=True)
class VersionStatus:
    name: str
    version: str
    state: ModelState
    reason: str = ""
