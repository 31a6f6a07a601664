"""The TensorRT engine sidecar (`ENGINE.json`): what an engine was built from and for.

`resnet-serve build-engine` (export/engine.py) writes it next to every engine; the TensorRT backend
(runtime/tensorrt.py) reads it and refuses, with a "rebuild" message, an engine built for another TensorRT
version or GPU architecture before TensorRT ever sees it (a mismatch inside TensorRT is an opaque error at
best). Pure Python: no tensorrt import, so the check runs and is tested on machines without a GPU.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.formats.errors import SidecarError

SIDECAR_FORMAT = "resnet-serve-engine/1"

# The precision an engine is built at (`resnet-serve build-engine --precision`, the entrypoint's
# --engine-precision); auto: the ONNX file's own. The sidecar's `precision` is the one it was built at.
ENGINE_PRECISIONS = ("auto", "fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineSidecar:
    """One engine's sidecar. The fields after `engine_sha256` record how it was built; a reader needs only the
    ones before it (and `source_onnx` to name the rebuild command), so the rest have defaults."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_name: str
    profile: dict[str, list[int]]  # "min", "opt", "max": full input shapes (N, C, H, W)
    engine_sha256: str
    source_onnx: str = "MODEL.onnx"
    source_sha256: str = ""
    built_at: str = ""
    build_seconds: float = 0.0
    strongly_typed: bool = True
    builder_flags: list[str] = field(default_factory=list)
    workspace_bytes: int = 0
    metadata: dict[str, str] = field(default_factory=dict)  # the source ONNX's metadata_props
    format: str = SIDECAR_FORMAT

    @property
    def min_shape(self) -> tuple[int, ...]:
        return tuple(self.profile["min"])

    @property
    def max_shape(self) -> tuple[int, ...]:
        return tuple(self.profile["max"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def _parse(raw: dict[str, Any]) -> EngineSidecar:
    profile = {str(k): [int(d) for d in v] for k, v in raw["profile"].items()}
    for needed in ("min", "max"):
        if needed not in profile:
            raise KeyError(f"profile.{needed}")
    return EngineSidecar(
        tensorrt_version=str(raw["tensorrt_version"]),
        gpu_name=str(raw["gpu_name"]),
        compute_capability=str(raw["compute_capability"]),
        precision=str(raw["precision"]),
        input_name=str(raw["input_name"]),
        profile=profile,
        engine_sha256=str(raw["engine_sha256"]),
        source_onnx=str(raw.get("source_onnx") or "MODEL.onnx"),
        source_sha256=str(raw.get("source_sha256", "")),
        built_at=str(raw.get("built_at", "")),
        build_seconds=float(raw.get("build_seconds", 0.0)),
        strongly_typed=bool(raw.get("strongly_typed", True)),
        builder_flags=[str(f) for f in raw.get("builder_flags", [])],
        workspace_bytes=int(raw.get("workspace_bytes", 0)),
        metadata={str(k): str(v) for k, v in raw.get("metadata", {}).items()},
    )


def read_sidecar(engine: Path) -> EngineSidecar:
    path = sidecar_path(engine)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SidecarError(
            f"{engine} has no sidecar {path.name}: rebuild it with `resnet-serve build-engine`, which "
            "records the TensorRT version and GPU the engine needs"
        ) from None
    except (OSError, ValueError) as err:
        raise SidecarError(f"cannot read {path}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != SIDECAR_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise SidecarError(f"{path} is not a {SIDECAR_FORMAT} sidecar (format {found!r}); rebuild the engine")
    try:
        return _parse(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        problem = f"{path} is incomplete ({err!r} missing or malformed); rebuild the engine"
        raise SidecarError(problem) from None


def check_compatible(
    sidecar: EngineSidecar, *, engine: Path, tensorrt_version: str, compute_capability: str, gpu_name: str
) -> None:
    """Refuse an engine built for another TensorRT or GPU architecture, with the command that fixes it.

    TensorRT plans are tied to the exact TensorRT build and to the compute capability; a different GPU
    model of the same architecture runs them (TensorRT only warns), so the name alone is not refused."""
    rebuild = f"rebuild it on this node with `resnet-serve build-engine {sidecar.source_onnx} --out {engine}`"
    if sidecar.tensorrt_version != tensorrt_version:
        raise SidecarError(
            f"{engine} was built with TensorRT {sidecar.tensorrt_version} but this server has "
            f"TensorRT {tensorrt_version}; {rebuild}"
        )
    if sidecar.compute_capability != compute_capability:
        raise SidecarError(
            f"{engine} was built for {sidecar.gpu_name} (compute capability "
            f"{sidecar.compute_capability}) but this GPU is {gpu_name} (compute capability "
            f"{compute_capability}); {rebuild}"
        )


def load_checked(
    engine: Path, *, tensorrt_version: str, compute_capability: str, gpu_name: str
) -> tuple[EngineSidecar, bytes]:
    """The sidecar and the engine bytes, once both are known to belong together and to fit this node."""
    sidecar = read_sidecar(engine)
    check_compatible(
        sidecar,
        engine=engine,
        tensorrt_version=tensorrt_version,
        compute_capability=compute_capability,
        gpu_name=gpu_name,
    )
    try:
        data = engine.read_bytes()
    except OSError as err:
        raise SidecarError(f"cannot read engine {engine}: {err.strerror or err}") from None
    if hashlib.sha256(data).hexdigest() != sidecar.engine_sha256:
        name = sidecar_path(engine).name
        raise SidecarError(f"{name} does not describe {engine} (its engine hash differs); rebuild it")
    return sidecar, data
