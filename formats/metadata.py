"""The `resnet_serve.*` metadata_props that travel inside every ONNX model we write (docs/architecture.md).

Torch-free on purpose, and onnx-free: the keys and their parsing need only the standard library, so whoever
names a key (the server, the PyTorch backend, the benchmarks) needs nothing more installed. Reading them from
an ONNX file is `export.onnx_export.read_metadata`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

from resnet_serve.formats.errors import MetadataError
from resnet_serve.formats.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import onnx

PREFIX = "resnet_serve."
LABELS_KEY = PREFIX + "labels"  # JSON list of class names, index = logit position
PREPROCESS_KEY = PREFIX + "preprocess"  # JSON object, formats/preprocess.py
ARCH_KEY = PREFIX + "arch"
SOURCE_KEY = PREFIX + "source_sha256"  # of the checkpoint or weights file the model came from
VERSIONS_KEY = PREFIX + "versions"  # JSON object: tool -> version
PRECISION_KEY = PREFIX + "precision"  # one of PRECISIONS
PRECISIONS = ("fp32", "fp16", "int8-qdq-trt", "int8-qdq-ort")
REQUIRED_KEYS = (LABELS_KEY, PREPROCESS_KEY, ARCH_KEY, SOURCE_KEY, VERSIONS_KEY, PRECISION_KEY)
# How a runtime runs a model, read back from it (never in a file): a backend adds these to its
# BackendInfo.metadata and the server shows them as KServe ModelConfig parameters (runtime/openvino.py).
INFERENCE_PRECISION_KEY = PREFIX + "inference_precision"  # what it computes in: "fp32" or "bf16"
EXECUTION_DEVICES_KEY = PREFIX + "execution_devices"
PERFORMANCE_MODE_KEY = PREFIX + "performance_mode"
NUM_STREAMS_KEY = PREFIX + "num_streams"
NUM_THREADS_KEY = PREFIX + "inference_num_threads"
LOADED_FROM_CACHE_KEY = PREFIX + "loaded_from_cache"  # "true" when a compiled model came from a cache


@dataclass(frozen=True)
class ModelMetadata:
    """What a model needs beyond its graph: how to prepare its input and how to name its outputs."""

    arch: str
    labels: list[str]
    preprocess: dict[str, Any]
    source_sha256: str
    versions: dict[str, str]
    precision: str = "fp32"

    def to_props(self) -> dict[str, str]:
        return {
            LABELS_KEY: json.dumps(self.labels),
            PREPROCESS_KEY: json.dumps(self.preprocess, sort_keys=True),
            ARCH_KEY: self.arch,
            SOURCE_KEY: self.source_sha256,
            VERSIONS_KEY: json.dumps(self.versions, sort_keys=True),
            PRECISION_KEY: self.precision,
        }


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped a model file, looked up without importing torch or onnxruntime."""
    out: dict[str, str] = {}
    for dist, key in (
        ("torch", "torch"),
        ("onnx", "onnx"),
        ("onnxruntime", "onnxruntime"),
        ("resnet-serve", "resnet-serve"),
    ):
        try:
            out[key] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[key] = "unknown"
    return out


def validate_preprocess(pre: dict[str, Any]) -> dict[str, Any]:
    """`pre` unchanged, once it passes the preprocessing contract's own checks (a MetadataError if not)."""
    PreprocessSpec.from_dict(pre)
    return pre


def write(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Set our keys on `model` in place, keeping any other metadata_props it already has."""
    props = meta.to_props()
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def props_of(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def labels_of(props: dict[str, str], source: str = "model") -> list[str]:
    """The class names a model's metadata lists (LABELS_KEY), [] when it has none; a value that is not a JSON
    list is a MetadataError."""
    raw = props.get(LABELS_KEY)
    if not raw:
        return []
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{source}: {LABELS_KEY} is not a JSON list ({exc})") from None
    if not isinstance(labels, list):
        raise MetadataError(f"{source}: {LABELS_KEY} is not a JSON list")
    return [str(x) for x in labels]


def from_props(props: dict[str, str], source: str = "model") -> ModelMetadata:
    """Parse our keys; a model without them (made by another tool) gets a one-line MetadataError."""
    missing = [k for k in REQUIRED_KEYS if k not in props]
    if len(missing) == len(REQUIRED_KEYS):
        raise MetadataError(
            f"{source} has no resnet_serve metadata: it was not written by `resnet-serve export` "
            "(export the checkpoint with resnet-serve, or add the metadata_props of docs/export.md)"
        )
    if missing:
        raise MetadataError(f"{source} lacks metadata {', '.join(missing)}")
    labels = labels_of(props, source)
    try:
        preprocess = json.loads(props[PREPROCESS_KEY])
        versions = json.loads(props[VERSIONS_KEY])
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{source} has malformed resnet_serve metadata: {exc}") from None
    if not isinstance(preprocess, dict) or not isinstance(versions, dict):
        raise MetadataError(f"{source} has malformed resnet_serve metadata (labels/preprocess/versions)")
    precision = props[PRECISION_KEY]
    if precision not in PRECISIONS:
        raise MetadataError(f"{source} has unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return ModelMetadata(
        arch=props[ARCH_KEY],
        labels=[str(x) for x in labels],
        preprocess=validate_preprocess(preprocess),
        source_sha256=props[SOURCE_KEY],
        versions={str(k): str(v) for k, v in versions.items()},
        precision=precision,
    )
