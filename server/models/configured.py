"""A model as its config.pbtxt presents it: `max_batch_size: 0` and `reshape` applied around a backend.

Triton's semantics (docs/server.md, "Model configuration"):

* `max_batch_size: 0` (a config.pbtxt on its own, without a config.json) — the model has no batch dimension:
  its shapes are its own, whole, even when its first dimension is variable, and every request runs on its
  own. The served `BackendInfo` then says `max_batch_size` 0, which the batcher, the codec and the
  metadata answers all read.
* `reshape { shape: [...] }` on an input or output: clients see the entry's `dims` (metadata, ModelConfig,
  the shapes requests send and responses carry); the model sees `reshape.shape`. With a batch dimension
  neither includes it, and the request's rows are kept in front.

`configure` wraps each backend only when the config changes something, so a model served as it is pays
nothing; a reshape is a NumPy view, never a copy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from resnet_serve.runtime.base import Backend, BackendInfo, TensorSpec
from resnet_serve.server.models.triton_config import TensorDecl, TritonModelConfig


def batching_off(triton: TritonModelConfig | None, alone: bool) -> bool:
    """Whether a config.pbtxt declares the model without a batch dimension: max_batch_size 0 in a
    config.pbtxt that stands alone (beside a config.json, an unstated field is config.json's)."""
    return triton is not None and alone and triton.max_batch_size == 0


def configure(backends: list[Backend], triton: TritonModelConfig, no_batch: bool) -> list[Backend]:
    """The backends as the config presents them (the same objects when it changes nothing)."""
    info = backends[0].info
    batched = info.max_batch_size > 0 and not no_batch
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # name → (client shape, model shape)
    for decl in (*triton.inputs, *triton.outputs):
        if decl.reshape is not None:
            shapes[decl.name] = _shapes(decl, batched)
    if batched == (info.max_batch_size > 0) and not shapes:
        return backends
    view = dataclasses.replace(
        info,
        max_batch_size=info.max_batch_size if batched else 0,
        inputs=[_client_spec(spec, shapes) for spec in info.inputs],
        outputs=[_client_spec(spec, shapes) for spec in info.outputs],
    )
    return [ConfiguredBackend(backend, view, shapes, batched) for backend in backends]


def _shapes(decl: TensorDecl, batched: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lead = (-1,) if batched else ()
    return (*lead, *decl.dims), (*lead, *(decl.reshape or ()))


def _client_spec(spec: TensorSpec, shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> TensorSpec:
    if spec.name not in shapes:
        return spec
    return dataclasses.replace(spec, shape=shapes[spec.name][0])


class ConfiguredBackend(Backend):
    """A backend seen through its config.pbtxt (module doc); runs in the batcher's worker like any other."""

    def __init__(
        self,
        inner: Backend,
        info: BackendInfo,
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]],
        batched: bool,
    ) -> None:
        self.inner = inner
        self.info = info
        self._shapes = shapes
        self._batched = batched

    def input_refusal(self, name: str, shape: tuple[int, ...]) -> str | None:
        """Why an input of `shape` cannot take the input's `reshape` (None: it can), said before it is queued:
        a `reshape` with a -1 takes only element counts its other dimensions divide."""
        shapes = self._shapes.get(name)
        if shapes is None:
            return None
        target = shapes[1][1:] if self._batched else shapes[1]
        elements = math.prod(shape[1:] if self._batched else shape)
        fixed = math.prod(d for d in target if d >= 0)
        fits = (fixed > 0 and elements % fixed == 0) if -1 in target else elements == fixed
        if fits:
            return None
        rows = "each row of " if self._batched else ""
        return (
            f"{rows}input '{name}' has {elements} elements, which config.pbtxt's reshape {list(target)} "
            f"cannot hold"
        )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: self._reshape(name, array, to_model=True) for name, array in inputs.items()}
        outputs = self.inner.infer(feeds)
        return {name: self._reshape(name, array, to_model=False) for name, array in outputs.items()}

    def _reshape(self, name: str, array: np.ndarray, to_model: bool) -> np.ndarray:
        shapes = self._shapes.get(name)
        if shapes is None:
            return array
        target = shapes[1] if to_model else shapes[0]
        if self._batched:  # the rows stay in front; reshape's own -1 (at most one) is NumPy's
            target = (array.shape[0], *target[1:])
        return array.reshape(target)

    def close(self) -> None:
        self.inner.close()
