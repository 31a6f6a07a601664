"""`resnet-serve package`: copy an ONNX model into a Triton-like model repository as a new version.

The repository's layout, config.json schema and reader live in formats/repository.py (docs/export.md
documents every key); this module writes what that reader accepts. With the Triton format it also writes the
model's config.pbtxt (Triton's ModelConfig message from protos/, in protobuf text format) and labels.txt, so
Triton itself can serve the directory; server/models/triton_config.py reads it back.

examples:
  resnet-serve package artifacts/digits/model.onnx --repo model_repository --name digits
  resnet-serve package artifacts/digits/model.int8-ort.onnx --repo model_repository --name digits \\
      --max-batch-size 64 --preferred-batch-sizes 16 32 64 --max-queue-delay-us 1000
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf import text_format

from resnet_serve.formats.datatypes import config_type, numpy_to_kserve
from resnet_serve.formats.errors import MetadataError
from resnet_serve.formats.files import sha256_file, write_bytes_atomic, write_json_atomic
from resnet_serve.formats.metadata import from_props, props_of
from resnet_serve.formats.repository import (
    BACKENDS,
    CONFIG_NAME,
    PLATFORMS,
    TRITON_CONFIG_NAME,
    DynamicBatching,
    PackagedModel,
    RepositoryError,
    TensorConfig,
    VersionConfig,
    parse_config,
    read_model,
)
from resnet_serve.protos import model_config_pb2 as mc

FORMATS = ("resnet-serve", "triton")
LABELS_NAME = "labels.txt"  # Triton's output label_filename: its classification extension reads it

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _io_from_onnx(path: Path) -> tuple[TensorConfig, TensorConfig, Any]:
    """Input/output specs and metadata of an ONNX file."""
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


# No queue delay unless asked for, as Triton's default and `serve`'s: a request alone in the queue runs at
# once instead of waiting for company that may not come (a delay buys throughput only under load).
DEFAULT_MAX_QUEUE_DELAY_US = 0


@dataclass(frozen=True)
class ServingSettings:
    """Model-level settings; None keeps the model's current value (or the default for a new model)."""

    max_batch_size: int | None = None
    preferred_batch_sizes: list[int] | None = None
    max_queue_delay_us: int | None = None
    backend: str | None = None
    instance_count: int | None = None


def _resolve(s: ServingSettings, existing: PackagedModel | None) -> tuple[int, list[int], int, str, int]:
    # `is not None`, not `or`: an explicit 0 must reach the range check below, not become the default.
    max_batch = (
        s.max_batch_size if s.max_batch_size is not None else (existing.max_batch_size if existing else 32)
    )
    delay = (
        s.max_queue_delay_us
        if s.max_queue_delay_us is not None
        else (existing.dynamic_batching.max_queue_delay_us if existing else DEFAULT_MAX_QUEUE_DELAY_US)
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


def triton_config(model: PackagedModel) -> mc.ModelConfig:
    """A packaged model's config.pbtxt: only fields the server acts on, so it reads back without warnings;
    the instance kind is left to the server (KIND_AUTO) because a package does not know the device."""

    def dtype(name: str) -> str:
        return config_type(numpy_to_kserve(np.dtype(name)))  # the enum value's name: "TYPE_FP32"

    batching = mc.ModelDynamicBatching(
        preferred_batch_size=model.dynamic_batching.preferred_batch_sizes,
        max_queue_delay_microseconds=model.dynamic_batching.max_queue_delay_us,
    )
    inp, out = model.input, model.output
    return mc.ModelConfig(
        name=model.name,
        platform=model.platform,
        max_batch_size=model.max_batch_size,
        input=[mc.ModelInput(name=inp.name, data_type=dtype(inp.dtype), dims=inp.shape)],
        output=[
            mc.ModelOutput(
                name=out.name,
                data_type=dtype(out.dtype),
                dims=out.shape,
                label_filename=LABELS_NAME if model.labels else "",
            )
        ],
        instance_group=[mc.ModelInstanceGroup(count=model.instance_count)],
        dynamic_batching=batching,
    )


def _write_triton_config(model_dir: Path, model: PackagedModel) -> None:
    if model.labels:
        write_bytes_atomic(model_dir / LABELS_NAME, ("\n".join(model.labels) + "\n").encode())
    text = text_format.MessageToString(triton_config(model))
    header = "# Triton's model configuration, written by `resnet-serve package --format triton`.\n"
    write_bytes_atomic(model_dir / TRITON_CONFIG_NAME, (header + text).encode())


def package(
    model_file: Path,
    repo: Path,
    name: str,
    version: int | None = None,
    settings: ServingSettings | None = None,
    repository_format: str | None = None,
) -> tuple[PackagedModel, VersionConfig]:
    """Copy `model_file` in as a new version of model `name` and (re)write its config.json atomically; with
    `repository_format` "triton" also its config.pbtxt and labels.txt. None: "triton" when the model already
    has a config.pbtxt (so the two files keep agreeing), else "resnet-serve"."""
    if not _NAME_RE.match(name):
        raise RepositoryError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
    if not model_file.is_file():
        raise RepositoryError(f"no such model file: {model_file}")
    model_dir = repo / name
    has_pbtxt = (model_dir / TRITON_CONFIG_NAME).exists()
    if repository_format is None:
        repository_format = "triton" if has_pbtxt else "resnet-serve"
    if repository_format not in FORMATS:
        raise RepositoryError(f"format {repository_format!r} is not one of {', '.join(FORMATS)}")
    if repository_format == "resnet-serve" and has_pbtxt:
        raise RepositoryError(
            f"{model_dir / TRITON_CONFIG_NAME} exists and its settings win over config.json when served: "
            "package with --format triton to rewrite it, or remove it"
        )
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
        if version not in taken and not any((model_dir / str(version)).glob("model.*")):
            raise RepositoryError(
                f"{model_dir / str(version)} exists but holds no model file (an interrupted package?): "
                "remove it, or choose another --version"
            )
        raise RepositoryError(f"{model_dir / str(version)} already exists: choose another --version")
    entry = VersionConfig(
        version, "model.onnx", meta.precision, sha256_file(model_file), meta.arch, meta.source_sha256
    )
    cfg = PackagedModel(
        name=name,
        backend=backend,
        platform=PLATFORMS[backend],
        max_batch_size=max_batch_size,
        input=inp,
        output=out,
        labels=meta.labels,
        preprocess=meta.preprocess,
        dynamic_batching=DynamicBatching(preferred, max_queue_delay_us),
        instance_count=instance_count,
        versions=[*(existing.versions if existing else []), entry],
        # runtime settings a config.json already holds (written by hand or by tune) stay as they are
        inference_precision=existing.inference_precision if existing else None,
        performance_mode=existing.performance_mode if existing else None,
        intra_op_threads=existing.intra_op_threads if existing else None,
    )
    parse_config(cfg.to_json(), "new config")  # the writer never produces what the reader would reject
    # The version is built in a hidden folder and renamed into place whole: a package killed mid-copy leaves
    # no numbered folder behind (which a server would try to load, and the next package would refuse).
    version_dir = model_dir / str(version)
    model_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
    try:
        shutil.copyfile(model_file, partial / entry.file)
        partial.chmod(0o777 & ~_umask())
        partial.rename(version_dir)
        if repository_format == "triton":
            _write_triton_config(model_dir, cfg)
        write_json_atomic(model_dir / CONFIG_NAME, cfg.to_json())
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(version_dir, ignore_errors=True)
        raise
    return read_model(model_dir), entry


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
