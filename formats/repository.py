"""The model repository's schema and reader: what `resnet-serve package` writes and the server reads.

    <repo>/<model>/config.json          model-level settings, and the list of versions
    <repo>/<model>/<version>/model.onnx one directory per integer version (1, 2, ...)

The layout and every config.json key are documented in docs/export.md. The standard library only (no torch,
no onnx), so the server reads repositories without either; the writer is export/package.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from resnet_serve.formats.errors import UserError

FORMAT = "resnet-serve-repository/1"
CONFIG_NAME = "config.json"
TRITON_CONFIG_NAME = "config.pbtxt"  # Triton's model configuration (server/models/triton_config.py reads it)
# The backend names (config.json's and the server's `backend`; runtime/factory.py maps each to its module).
ONNXRUNTIME, TENSORRT, TORCH, OPENVINO = "onnxruntime", "tensorrt", "torch", "openvino"
BACKENDS = (ONNXRUNTIME, TENSORRT, TORCH, OPENVINO)
PLATFORMS = {  # Triton's platform name of each
    ONNXRUNTIME: "onnxruntime_onnx",
    TENSORRT: "tensorrt_plan",
    TORCH: "pytorch_libtorch",
    OPENVINO: "openvino",
}
# How a runtime computes, whatever the file's own precision: bf16 only where the runtime and CPU run it
# (OpenVINO on AVX512_BF16/AMX; runtime/openvino.py), never chosen silently.
INFERENCE_PRECISIONS = ("fp32", "bf16")
PERFORMANCE_MODES = ("latency", "throughput")  # OpenVINO's PERFORMANCE_HINT


class RepositoryError(UserError, ValueError):
    """A repository, model config or package request that cannot be used; the message is one line."""


@dataclass(frozen=True)
class TensorConfig:
    name: str
    dtype: str
    shape: list[int]  # without the batch dimension (which is implied by max_batch_size > 0, as in Triton)


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: list[int]
    max_queue_delay_us: int


@dataclass(frozen=True)
class VersionConfig:
    version: int
    file: str  # relative to the version directory
    precision: str
    sha256: str
    arch: str
    source_sha256: str


@dataclass(frozen=True)
class PackagedModel:
    """One model's config.json, plus (after reading) where its directory is."""

    name: str
    backend: str
    platform: str
    max_batch_size: int
    input: TensorConfig
    output: TensorConfig
    labels: list[str]
    preprocess: dict[str, Any]
    dynamic_batching: DynamicBatching
    instance_count: int
    versions: list[VersionConfig]
    # Optional runtime settings; None (the key absent) leaves the server's model defaults in force.
    inference_precision: str | None = None  # INFERENCE_PRECISIONS
    performance_mode: str | None = None  # PERFORMANCE_MODES
    intra_op_threads: int | None = None  # per instance; 0: cores / instances
    format: str = FORMAT
    path: Path | None = field(default=None, compare=False)

    def version_path(self, version: VersionConfig) -> Path:
        if self.path is None:
            raise RepositoryError(f"model {self.name} was not read from a repository")
        return self.path / str(version.version) / version.file

    def latest(self) -> VersionConfig:
        return max(self.versions, key=lambda v: v.version)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return {key: value for key, value in out.items() if value is not None}


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise RepositoryError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RepositoryError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _tensor(obj: Any, where: str) -> TensorConfig:
    if not isinstance(obj, dict):
        raise RepositoryError(f"{where}: expected an object")
    shape = _get(obj, "shape", list, where)
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise RepositoryError(f"{where}: shape must list positive integers, got {shape}")
    return TensorConfig(_get(obj, "name", str, where), _get(obj, "dtype", str, where), shape)


def parse_config(data: dict[str, Any], where: str) -> PackagedModel:
    """Validate a config.json payload; every problem is one RepositoryError line naming the file."""
    fmt = data.get("format")
    if fmt != FORMAT:
        raise RepositoryError(f"{where}: format {fmt!r} is not {FORMAT!r}")
    backend = _get(data, "backend", str, where)
    if backend not in BACKENDS:
        raise RepositoryError(f"{where}: backend {backend!r} is not one of {', '.join(BACKENDS)}")
    db = _get(data, "dynamic_batching", dict, where)
    versions = []
    for i, v in enumerate(_get(data, "versions", list, where)):
        vw = f"{where} versions[{i}]"
        if not isinstance(v, dict):
            raise RepositoryError(f"{vw}: expected an object")
        versions.append(
            VersionConfig(
                _get(v, "version", int, vw),
                _get(v, "file", str, vw),
                _get(v, "precision", str, vw),
                _get(v, "sha256", str, vw),
                _get(v, "arch", str, vw),
                _get(v, "source_sha256", str, vw),
            )
        )
    if not versions:
        raise RepositoryError(f"{where}: no versions")
    max_batch = _get(data, "max_batch_size", int, where)
    preferred = _get(db, "preferred_batch_sizes", list, f"{where} dynamic_batching")
    if any(not isinstance(b, int) or b < 1 or b > max(max_batch, 1) for b in preferred):
        raise RepositoryError(f"{where}: preferred_batch_sizes {preferred} must lie in 1..{max_batch}")
    runtime = _runtime_settings(data, where)
    return PackagedModel(
        name=_get(data, "name", str, where),
        backend=backend,
        platform=_get(data, "platform", str, where),
        max_batch_size=max_batch,
        input=_tensor(data.get("input"), f"{where} input"),
        output=_tensor(data.get("output"), f"{where} output"),
        labels=[str(x) for x in _get(data, "labels", list, where)],
        preprocess=_get(data, "preprocess", dict, where),
        dynamic_batching=DynamicBatching(
            preferred, _get(db, "max_queue_delay_us", int, f"{where} dynamic_batching")
        ),
        instance_count=_get(data, "instance_count", int, where),
        versions=sorted(versions, key=lambda v: v.version),
        **runtime,
    )


def _runtime_settings(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The optional keys inference_precision, performance_mode and intra_op_threads, checked."""
    out: dict[str, Any] = {}
    for key, kind, allowed in (
        ("inference_precision", str, INFERENCE_PRECISIONS),
        ("performance_mode", str, PERFORMANCE_MODES),
        ("intra_op_threads", int, None),
    ):
        if key not in data:
            continue
        value = _get(data, key, kind, where)
        if allowed is not None and value not in allowed:
            raise RepositoryError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")
        if kind is int and value < 0:
            raise RepositoryError(f"{where}: {key} must be ≥ 0, got {value}")
        out[key] = value
    return out


def read_model(model_dir: str | Path) -> PackagedModel:
    """One model directory: its config.json, checked, with every listed version's file present."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise RepositoryError(f"{model_dir}: no {CONFIG_NAME} (package models with `resnet-serve package`)")
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RepositoryError(f"{cfg_path}: expected a JSON object")
    cfg = parse_config(data, str(cfg_path))
    if cfg.name != model_dir.name:
        raise RepositoryError(f"{cfg_path}: name {cfg.name!r} differs from its directory {model_dir.name!r}")
    cfg = replace(cfg, path=model_dir)
    for v in cfg.versions:
        if not cfg.version_path(v).is_file():
            raise RepositoryError(f"{cfg.version_path(v)}: listed in {cfg_path} but missing")
    return cfg


def read_repository(repo: str | Path) -> list[PackagedModel]:
    """Every model under `repo` (sub-directories holding a config.json), sorted by name."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist")
    models = [
        read_model(d)
        for d in sorted(repo.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / CONFIG_NAME).exists()
    ]
    if not models:
        raise RepositoryError(f"model repository {repo} holds no models (no <model>/{CONFIG_NAME})")
    return models
