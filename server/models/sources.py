"""Where a model's versions come from: a model source on disk, its numbered versions, the version policy.

A model's source is an .onnx file (served as version "1"), a model directory packaged by `resnet-serve
package` (config.json + numbered versions), a Triton model directory (config.pbtxt + numbered versions), or a
bare directory of numbered versions (`NAME/1/model.onnx`, ...). Precedence, lowest first (docs/server.md,
"Model configuration"): the server-wide model defaults < config.json < config.pbtxt < the server config's own
[models.NAME] keys. A directory with both files takes its versions, labels and preprocessing from config.json
and its serving settings from config.pbtxt (`package --format triton` writes both, from the same values).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.formats.datatypes import numpy_to_kserve
from resnet_serve.formats.repository import (
    CONFIG_NAME,
    TRITON_CONFIG_NAME,
    PackagedModel,
    RepositoryError,
    read_model,
)
from resnet_serve.runtime.base import BackendError, BackendInfo, TensorSpec
from resnet_serve.server.config import ConfigError, ModelSettings, with_values
from resnet_serve.server.models.triton_config import TensorDecl, TritonModelConfig, read_config

log = logging.getLogger(__name__)

MODEL_FILES = ("model.onnx", "model.plan", "model.engine", "model.pt")


def numbered(text: str) -> bool:
    """Whether a version string or version directory's name is a number: ASCII digits only (str.isdigit also
    takes "１" and "١", which int() reads as 1)."""
    return text.isascii() and text.isdigit()


def version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if numbered(version) else (-1, version)


def discover_versions(path: Path, file_names: tuple[str, ...] = MODEL_FILES) -> dict[str, Path]:
    """The numbered versions under a model source: a file is version "1"; a directory has NAME/<n>/model.*."""
    if path.is_file():
        return {"1": path}
    if not path.is_dir():
        raise BackendError(f"model path does not exist: {path}")
    found: dict[str, Path] = {}
    for child in path.iterdir():
        if child.is_dir() and numbered(child.name):
            for file_name in file_names:
                if (child / file_name).is_file():
                    found[str(int(child.name))] = child / file_name
                    break
    if not found:
        raise BackendError(
            f"{path} holds no numbered version directories with a model file ({file_names[0]})"
        )
    return found


@dataclass(frozen=True)
class ModelSource:
    """What a model's path holds: its version files, and settings from a packaged config.json if any."""

    versions: dict[str, Path]
    settings: ModelSettings  # the server's settings merged with config.json's
    labels: list[str] = field(default_factory=list)
    preprocess: dict[str, Any] | None = None
    triton: TritonModelConfig | None = None  # the config.pbtxt, whose tensors are checked against the model
    no_batch_dim: bool = (
        False  # the config.pbtxt, on its own, says max_batch_size 0 (server/models/configured.py)
    )


def read_source(settings: ModelSettings) -> ModelSource:
    """Read a model's path: a file, a packaged or Triton model directory, or a directory of numbered
    versions."""
    path = Path(settings.path)
    packaged_file = path.is_dir() and (path / CONFIG_NAME).is_file()
    triton_file = path.is_dir() and (path / TRITON_CONFIG_NAME).is_file()
    if not (packaged_file or triton_file):
        return ModelSource(discover_versions(path), settings)
    try:
        packaged = read_model(path) if packaged_file else None
        triton = read_config(path) if triton_file else None
        values = {**_packaged_values(packaged), **_triton_values(triton, alone=packaged is None)}
        merged = with_values(settings, {k: v for k, v in values.items() if k not in settings.explicit})
    except (RepositoryError, ConfigError) as exc:
        raise BackendError(str(exc)) from None
    if triton is not None:
        warn_ignored(settings.name, triton)
    if packaged is not None:
        versions = {str(v.version): packaged.version_path(v) for v in packaged.versions}
        labels, preprocess = list(packaged.labels), dict(packaged.preprocess)
    else:
        names = (triton.model_filename,) if triton and triton.model_filename else MODEL_FILES
        versions, labels, preprocess = discover_versions(path, names), [], None
    if triton is not None and triton.labels:
        labels = list(triton.labels)
    no_batch_dim = triton is not None and packaged is None and triton.max_batch_size == 0
    return ModelSource(versions, merged, labels, preprocess, triton, no_batch_dim)


def _packaged_values(packaged: PackagedModel | None) -> dict[str, Any]:
    if packaged is None:
        return {}
    values: dict[str, Any] = {
        "backend": packaged.backend,
        "instances": packaged.instance_count,
        "max_batch_size": max(1, packaged.max_batch_size),
        "preferred_batch_sizes": tuple(packaged.dynamic_batching.preferred_batch_sizes),
        "max_queue_delay_us": packaged.dynamic_batching.max_queue_delay_us,
    }
    for key in ("inference_precision", "performance_mode", "intra_op_threads"):  # optional keys
        if getattr(packaged, key) is not None:
            values[key] = getattr(packaged, key)
    return values


def _triton_values(triton: TritonModelConfig | None, alone: bool) -> dict[str, Any]:
    """The settings a config.pbtxt states, as model option keys. `alone` (no config.json beside it): what it
    leaves out means what it means to Triton, so no max_batch_size is batches of 1, and no `dynamic_batching`
    runs requests as they come (the closest here: no queue delay, no preferred sizes); beside a config.json,
    what it leaves out is config.json's."""
    if triton is None:
        return {}
    values: dict[str, Any] = {}
    if triton.max_batch_size or alone:
        values["max_batch_size"] = max(1, triton.max_batch_size)
    if triton.dynamic_batching or alone:
        values["preferred_batch_sizes"] = triton.preferred_batch_sizes
        values["max_queue_delay_us"] = triton.max_queue_delay_us
    if triton.version_policy:
        values |= {
            "version_policy": triton.version_policy,
            "latest_versions": triton.latest_versions,
            "versions": triton.versions,
        }
    stated = {
        "backend": triton.backend,
        "instances": triton.instances,
        "device": triton.device,
        "max_queue_size": triton.max_queue_size,
        "timeout_ms": triton.timeout_us / 1000.0,
    }
    return values | {k: v for k, v in stated.items() if v}


_warned: set[tuple[Path, str]] = set()


def warn_ignored(name: str, triton: TritonModelConfig) -> None:
    """One warning per config.pbtxt field that is present and ignored, once per file for the process (a
    reload of the same model does not repeat them)."""
    for path in triton.ignored:
        if (triton.path, path) not in _warned:
            _warned.add((triton.path, path))
            log.warning("model %s: %s sets %s, which resnet-serve ignores", name, triton.path, path)


def check_tensors(triton: TritonModelConfig, info: BackendInfo) -> None:
    """The config.pbtxt's input and output entries against the model's own tensors: each named tensor must
    exist, with the stated datatype and dims — or, with a `reshape`, reshape.shape — (-1 on either side
    matches any size). ValueError names the field."""
    batched = triton.max_batch_size > 0
    for decls, specs, kind in (
        (triton.inputs, info.inputs, "input"),
        (triton.outputs, info.outputs, "output"),
    ):
        by_name = {s.name: s for s in specs}
        for decl in decls:
            spec = by_name.get(decl.name)
            if spec is None:
                raise ValueError(
                    f"{triton.path}: {decl.field}.name {decl.name!r} is not an {kind} of the model "
                    f"(its {kind}s: {', '.join(by_name)})"
                )
            _check_tensor(triton, decl, spec, batched)


def _check_tensor(triton: TritonModelConfig, decl: TensorDecl, spec: TensorSpec, batched: bool) -> None:
    actual = numpy_to_kserve(spec.dtype)
    if decl.datatype and decl.datatype != actual:
        raise ValueError(
            f"{triton.path}: {decl.field}.data_type TYPE_{decl.datatype} does not match the model's "
            f"{spec.name!r} ({actual})"
        )
    shape = tuple(spec.shape[1:]) if batched else tuple(spec.shape)
    stated, what = (decl.reshape, "reshape.shape") if decl.reshape is not None else (decl.dims, "dims")
    fits = len(shape) == len(stated) and all(
        -1 in (a, d) or a == d for a, d in zip(shape, stated, strict=False)
    )
    if (stated or decl.reshape is not None) and not fits:
        raise ValueError(
            f"{triton.path}: {decl.field}.{what} {list(stated)} do not match the model's {spec.name!r} "
            f"{list(shape)}" + (" (without the batch dimension: max_batch_size > 0)" if batched else "")
        )


def select_versions(available: dict[str, Path], settings: ModelSettings) -> dict[str, Path]:
    """Apply the version policy: latest (the highest number), all, or the specific versions listed."""
    ordered = sorted(available, key=version_key)
    if settings.version_policy == "all":
        chosen = ordered
    elif settings.version_policy == "specific":
        wanted = [str(v) for v in settings.versions]
        missing = [v for v in wanted if v not in available]
        if missing:
            raise BackendError(f"version(s) {', '.join(missing)} not found (available: {', '.join(ordered)})")
        chosen = wanted
    else:
        chosen = ordered[-settings.latest_versions :]
    return {v: available[v] for v in chosen}
