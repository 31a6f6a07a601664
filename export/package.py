"""A Triton-like model repository: what `resnet-serve package` writes and what the server reads.

    <repo>/<model>/config.json          model-level settings, and the list of versions
    <repo>/<model>/<version>/model.onnx one directory per integer version (1, 2, ...)

The layout and every config.json key are documented in docs/export.md. The reader (`read_repository`,
`read_model`) uses the standard library only, so the server imports this module without torch or onnx.

examples:
  resnet-serve package artifacts/digits/model.onnx --repo model_repository --name digits
  resnet-serve package artifacts/digits/model.int8-ort.onnx --repo model_repository --name digits \\
      --max-batch-size 64 --preferred-batch-sizes 16 32 64 --max-queue-delay-us 1000
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from resnet_serve.cli.helpformat import HelpFormatter
from resnet_serve.export.errors import os_error_line

FORMAT = "resnet-serve-repository/1"
CONFIG_NAME = "config.json"
BACKENDS = ("onnxruntime", "tensorrt", "torch")
_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "torch": "pytorch_libtorch"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class RepositoryError(ValueError):
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
class ModelConfig:
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
        return out


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


def parse_config(data: dict[str, Any], where: str) -> ModelConfig:
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
    return ModelConfig(
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
    )


def read_model(model_dir: str | Path) -> ModelConfig:
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


def read_repository(repo: str | Path) -> list[ModelConfig]:
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


# --- writing (`resnet-serve package`) ----------------------------------------------------------------------


def _io_from_onnx(path: Path) -> tuple[TensorConfig, TensorConfig, Any]:
    """Input/output specs and metadata of an ONNX file (onnx imported here only: the reader stays light)."""
    import onnx

    from resnet_serve.formats.errors import MetadataError
    from resnet_serve.formats.metadata import from_props, props_of

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise RepositoryError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    try:
        meta = from_props(props_of(model), str(path))
    except MetadataError as exc:
        raise RepositoryError(str(exc)) from None
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise RepositoryError(f"{path}: expected one input and one output")

    def spec(vi: Any) -> TensorConfig:
        dims = vi.type.tensor_type.shape.dim
        shape = [d.dim_value for d in dims[1:]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        if not shape or not all(d > 0 for d in shape):
            raise RepositoryError(f"{path}: {vi.name} needs fixed non-batch dimensions, got {shape}")
        return TensorConfig(vi.name, dtype, shape)

    return spec(model.graph.input[0]), spec(model.graph.output[0]), meta


@dataclass(frozen=True)
class ServingSettings:
    """Model-level settings; None keeps the model's current value (or the default for a new model)."""

    max_batch_size: int | None = None
    preferred_batch_sizes: list[int] | None = None
    max_queue_delay_us: int | None = None
    backend: str | None = None
    instance_count: int | None = None


def _resolve(s: ServingSettings, existing: ModelConfig | None) -> tuple[int, list[int], int, str, int]:
    # `is not None`, not `or`: an explicit 0 must reach the range check below, not become the default.
    max_batch = (
        s.max_batch_size if s.max_batch_size is not None else (existing.max_batch_size if existing else 32)
    )
    delay = (
        s.max_queue_delay_us
        if s.max_queue_delay_us is not None
        else (existing.dynamic_batching.max_queue_delay_us if existing else 2000)
    )
    backend = s.backend or (existing.backend if existing else "onnxruntime")
    instances = (
        s.instance_count if s.instance_count is not None else (existing.instance_count if existing else 1)
    )
    if s.preferred_batch_sizes:
        preferred = sorted(set(s.preferred_batch_sizes))
    elif existing and s.max_batch_size is None:
        preferred = existing.dynamic_batching.preferred_batch_sizes
    else:
        preferred = [b for b in (8, 16, 32, 64) if b <= max_batch] or [max_batch]
    if backend not in BACKENDS:
        raise RepositoryError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if max_batch < 1 or instances < 1 or delay < 0:
        raise RepositoryError("max batch size and instance count must be ≥ 1, the queue delay ≥ 0")
    return max_batch, preferred, delay, backend, instances


def package(
    model_file: Path,
    repo: Path,
    name: str,
    version: int | None = None,
    settings: ServingSettings | None = None,
) -> tuple[ModelConfig, VersionConfig]:
    """Copy `model_file` in as a new version of model `name` and (re)write its config.json atomically."""
    from resnet_serve.formats.files import atomic_path, sha256_file, write_json_atomic

    if not _NAME_RE.match(name):
        raise RepositoryError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
    if not model_file.is_file():
        raise RepositoryError(f"no such model file: {model_file}")
    model_dir = repo / name
    existing = read_model(model_dir) if (model_dir / CONFIG_NAME).exists() else None
    max_batch_size, preferred, max_queue_delay_us, backend, instance_count = _resolve(
        settings or ServingSettings(), existing
    )
    inp, out, meta = _io_from_onnx(model_file)
    if existing is not None and (existing.input != inp or existing.labels != meta.labels):
        raise RepositoryError(
            f"{model_file} does not fit model {name}: its input or labels differ from the "
            "versions already there (package it under another --name)"
        )
    taken = {v.version for v in existing.versions} if existing else set()
    version = version if version is not None else max(taken, default=0) + 1
    if version < 1:
        raise RepositoryError(f"version must be ≥ 1, got {version}")
    if version in taken or (model_dir / str(version)).exists():
        raise RepositoryError(f"{model_dir / str(version)} already exists: choose another --version")
    entry = VersionConfig(
        version, "model.onnx", meta.precision, sha256_file(model_file), meta.arch, meta.source_sha256
    )
    cfg = ModelConfig(
        name=name,
        backend=backend,
        platform=_PLATFORM[backend],
        max_batch_size=max_batch_size,
        input=inp,
        output=out,
        labels=meta.labels,
        preprocess=meta.preprocess,
        dynamic_batching=DynamicBatching(preferred, max_queue_delay_us),
        instance_count=instance_count,
        versions=[*(existing.versions if existing else []), entry],
    )
    parse_config(cfg.to_json(), "new config")  # the writer never produces what the reader would reject
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    try:
        with atomic_path(version_dir / entry.file) as tmp:
            shutil.copyfile(model_file, tmp)
        write_json_atomic(model_dir / CONFIG_NAME, cfg.to_json())
    except BaseException:
        shutil.rmtree(version_dir, ignore_errors=True)
        raise
    return read_model(model_dir), entry


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    parser.add_argument("model", type=Path, help="ONNX model from `resnet-serve export` or `quantize`")
    parser.add_argument("--repo", type=Path, required=True, help="model repository directory")
    parser.add_argument("--name", required=True, help="model name (the directory under --repo)")
    parser.add_argument("--version", type=int, help="version number (default: one above the latest)")
    settings = parser.add_argument_group(
        "serving settings (model-level; when adding a version, omitted ones keep the model's current values)"
    )
    settings.add_argument("--max-batch-size", type=int, help="largest batch the server may form [32]")
    settings.add_argument(
        "--preferred-batch-sizes",
        type=int,
        nargs="+",
        help="batch sizes the batcher aims for [8 16 32 64, up to the max]",
    )
    settings.add_argument(
        "--max-queue-delay-us",
        type=int,
        help="longest a request waits for a batch to fill, microseconds [2000]",
    )
    settings.add_argument("--backend", choices=BACKENDS, help="preferred backend [onnxruntime]")
    settings.add_argument("--instances", type=int, help="model instances (sessions) to run [1]")


def run(args: argparse.Namespace) -> int:
    try:
        settings = ServingSettings(
            args.max_batch_size,
            args.preferred_batch_sizes,
            args.max_queue_delay_us,
            args.backend,
            args.instances,
        )
        cfg, entry = package(args.model, args.repo, args.name, args.version, settings)
    except RepositoryError as exc:
        print(f"resnet-serve package: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an output path that cannot be written (a folder, no permission, disk full)
        print(f"resnet-serve package: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    print(
        f"packaged {args.model} as {cfg.name} version {entry.version} ({entry.precision}, {entry.arch}) "
        f"in {args.repo}; versions now {[v.version for v in cfg.versions]}; "
        f"max batch {cfg.max_batch_size}, "
        f"preferred {cfg.dynamic_batching.preferred_batch_sizes}, queue delay "
        f"{cfg.dynamic_batching.max_queue_delay_us} µs, backend {cfg.backend}"
    )
    return 0
