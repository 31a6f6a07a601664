"""Warming a model version up before it is marked ready, so the first real request pays no lazy setup.

Two sources of warmup requests:

* `model_warmup` in config.pbtxt, as Triton defines it: each sample gives every input's datatype, dims
  (no variable dimension) and data — `zero_data` (zeros; empty strings for BYTES), `random_data` (random
  bytes; BYTES gets empty strings, as in Triton) or `input_data_file` (a file in `<model>/warmup/`: raw
  little-endian bytes in row-major order, at least one sample's worth, or, for BYTES, length-prefixed
  elements). A sample of `batch_size` N runs N rows (the same data repeated) `count` times on each
  instance. A sample that does not fit the model is refused at load with a message naming it, and so is
  one that fails to run: the user asked for it.
* otherwise the default warmup: zeros at each batch size the batcher will form (1, the preferred sizes and
  the maximum), or one run of the model's own shape when it has no batch dimension. A variable dimension
  besides the batch gets size 1 (the smallest any model accepts), and BYTES inputs get empty strings. Made-up
  sizes or strings may not suit a model, so when they are used a failure is a warning and the model is served
  unwarmed; with every size known, zeros are valid input and a failure fails the load, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from resnet_serve.formats import bytes_tensor
from resnet_serve.formats.datatypes import numpy_to_kserve
from resnet_serve.runtime.base import Backend, BackendError, BackendInfo, TensorSpec
from resnet_serve.server.models.triton_config import WarmupInput, WarmupSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One warmup request: its feeds, run `count` times on each instance."""

    name: str
    feeds: dict[str, np.ndarray]
    count: int = 1


def default_runs(info: BackendInfo, batch_sizes: list[int]) -> tuple[list[Run], bool]:
    """The default warmup's requests, and whether every size and value in them is known to suit the model
    (no variable dimension besides the batch, no BYTES input)."""
    batched = info.max_batch_size > 0
    exact = all(
        not spec.dtype.hasobject and all(d >= 0 for d in (spec.shape[1:] if batched else spec.shape))
        for spec in info.inputs
    )
    sizes = batch_sizes if batched else [1]
    runs = []
    for n in sizes:
        feeds = {spec.name: _zeros(_default_shape(spec, batched, n), spec) for spec in info.inputs}
        runs.append(Run(f"batch {n}" if batched else "default", feeds))
    return runs, exact


def _default_shape(spec: TensorSpec, batched: bool, rows: int) -> tuple[int, ...]:
    dims = tuple(d if d >= 0 else 1 for d in (spec.shape[1:] if batched else spec.shape))
    return (rows, *dims) if batched else dims


def configured_runs(samples: tuple[WarmupSample, ...], info: BackendInfo, model: str) -> list[Run]:
    """The requests of config.pbtxt's model_warmup samples; ValueError names a sample that does not fit."""
    specs = {spec.name: spec for spec in info.inputs}
    batched = info.max_batch_size > 0
    runs = []
    for sample in samples:
        where = f"model {model!r}: {sample.field} ({sample.name!r})"
        given = {i.name for i in sample.inputs}
        unknown = sorted(given - set(specs))
        missing = [name for name in specs if name not in given]
        if unknown or missing:
            raise ValueError(
                f"{where} must give exactly the model's inputs {list(specs)}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {missing}" if missing else "")
            )
        feeds = {
            i.name: _sample_input(i, specs[i.name], sample.batch_size, batched, where) for i in sample.inputs
        }
        runs.append(Run(sample.name or sample.field, feeds, sample.count))
    return runs


def _sample_input(given: WarmupInput, spec: TensorSpec, rows: int, batched: bool, where: str) -> np.ndarray:
    datatype = numpy_to_kserve(spec.dtype)
    if given.datatype != datatype:
        raise ValueError(f"{where}: input '{given.name}' is {datatype} in the model, not {given.datatype}")
    model_dims = spec.shape[1:] if batched else spec.shape
    fits = len(model_dims) == len(given.dims) and all(
        m < 0 or m == g for m, g in zip(model_dims, given.dims, strict=True)
    )
    if not fits:
        raise ValueError(
            f"{where}: input '{given.name}' dims {list(given.dims)} do not fit the model's {list(model_dims)}"
        )
    one = _one_sample(given, spec, where)
    if not batched:
        return one
    return np.repeat(one[np.newaxis], rows, axis=0)


def _one_sample(given: WarmupInput, spec: TensorSpec, where: str) -> np.ndarray:
    count = int(np.prod(given.dims, dtype=np.int64))
    if spec.dtype.hasobject:  # BYTES: zero and random data are empty strings (Triton's)
        if given.file is None:
            return bytes_tensor.zeros(given.dims)
        elements = bytes_tensor.deserialize(_read(given, where), count, f"{where}: {given.file}")
        return bytes_tensor.object_array(elements, given.dims)
    if given.kind == "zero_data":
        return np.zeros(given.dims, dtype=spec.dtype)
    size = count * spec.dtype.itemsize
    if given.kind == "random_data":
        data = np.random.default_rng().integers(0, 256, size, dtype=np.uint8).tobytes()
        if spec.dtype.kind == "b":
            flags: np.ndarray = np.frombuffer(data, dtype=np.uint8).reshape(given.dims) % 2 == 1
            return flags
    else:
        data = _read(given, where)
        if len(data) < size:
            raise ValueError(
                f"{where}: warmup setting expects {size} bytes, but the data provided from {given.file} "
                f"only has {len(data)} bytes"
            )
    values: np.ndarray = np.frombuffer(data[:size], dtype=spec.dtype.newbyteorder("<"))
    return values.astype(spec.dtype).reshape(given.dims)


def _read(given: WarmupInput, where: str) -> bytes:
    assert given.file is not None
    try:
        return given.file.read_bytes()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read {given.file} ({exc})") from None


def _zeros(shape: tuple[int, ...], spec: TensorSpec) -> np.ndarray:
    return bytes_tensor.zeros(shape) if spec.dtype.hasobject else np.zeros(shape, dtype=spec.dtype)


def run(backends: list[Backend], runs: list[Run], model: str, required: bool) -> None:
    """Run every warmup request on every instance. A failure raises BackendError when `required`, else it is
    one warning and the rest of the warmup is skipped."""
    for backend in backends:
        for item in runs:
            for _ in range(item.count):
                try:
                    backend.infer(item.feeds)
                except Exception as exc:  # the backend's own error types
                    message = f"model {model!r}: warmup {item.name!r} failed: {exc}"
                    if required:
                        raise BackendError(message) from None
                    log.warning(
                        "%s; serving it without warmup (the default warmup made up its inputs)", message
                    )
                    return
    log.info(
        "model %s: warmed up with %s on %d instance(s)",
        model,
        ", ".join(f"{item.name!r} x{item.count}" for item in runs),
        len(backends),
    )
