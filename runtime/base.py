"""The one interface every inference backend implements.

The batcher owns queuing and batching; a backend only runs a ready batch. Keeping this small is what lets
ONNX Runtime, TensorRT and PyTorch slot in without the batcher changing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

from resnet_serve.formats.errors import UserError


class BackendError(UserError, RuntimeError):
    """A backend failed to load or to run a batch; the message is shown to the user as is (one line from the
    CLI; INTERNAL from the server when a batch fails)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: the batch dimension is the leading -1 when the model batches. A BYTES (string)
    tensor has dtype object and holds `bytes` elements (formats/bytes_tensor.py)."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]


@dataclass
class BackendInfo:
    """What a backend tells the server about the model it loaded."""

    platform: str  # e.g. "onnxruntime_onnx", "tensorrt_plan", "pytorch_libtorch" (Triton's names)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int  # largest batch `infer` accepts; 0 means the model does not batch
    metadata: dict[str, str] = field(default_factory=dict)  # the model file's metadata_props
    device: str = "cpu"


class Backend(abc.ABC):
    """Runs whole batches of one model. `infer` is called from a worker thread, never on the event loop."""

    info: BackendInfo

    @abc.abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Every input has the same leading batch size; every output has it too (a model with
        max_batch_size 0 has no batch dimension: one request's inputs, whole).

        The input arrays belong to the caller again once `infer` returns (the batcher reuses their memory
        for its next batch): keep nothing that refers to them."""

    def input_refusal(self, name: str, shape: tuple[int, ...]) -> str | None:
        """Why an input of `shape`, already checked against `info`, still cannot run (None: it can); asked
        before a request is queued. Only a backend that transforms its inputs has more to say."""
        return None

    def close(self) -> None:  # noqa: B027 - most backends have nothing to release
        """Release device memory and sessions."""
