"""Compile an ONNX model to a serialized TensorRT engine, with its sidecar (formats/sidecar.py).

Precision follows TensorRT's strongly typed model (the only one TensorRT 11 has): the network runs in the
types the ONNX graph declares. FP32 is the exported model as is; FP16 is an FP16 ONNX (`export.fp16`, made
on the fly from an FP32 model when asked); INT8 is our symmetric QDQ ONNX (explicit quantization). Builder
precision flags (weak typing) are used only on TensorRT 10 when asked for, or when the installed TensorRT
has no strongly typed networks; implicit INT8 calibration is never used (TensorRT 11 removed it).

An engine only runs on the TensorRT version and GPU architecture it was built with; the sidecar records both,
so the server refuses a mismatched engine with a "rebuild" message before TensorRT ever sees it. Everything
except `build()` is pure Python and tested without TensorRT. The command: cli/commands/build_engine.py
(`resnet-serve build-engine`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from resnet_serve.formats.errors import UserError
from resnet_serve.formats.files import write_bytes_atomic
from resnet_serve.formats.metadata import PRECISION_KEY, props_of
from resnet_serve.formats.sidecar import ENGINE_PRECISIONS, EngineSidecar, sidecar_path
from resnet_serve.runtime.tensorrt import require_tensorrt

# What each requested precision needs the ONNX to be, by its `resnet_serve.precision` metadata.
_SOURCE_FOR = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-qdq-trt"}
MIN_TRT_MAJOR = 10


class EngineError(UserError, ValueError):
    """A build cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile's batch sizes: the engine accepts min..max, and is tuned for opt."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 1:
            raise EngineError(f"--min-batch must be at least 1, got {self.min}")
        if not self.min <= self.opt <= self.max:
            raise EngineError(
                "batch sizes must satisfy min <= opt <= max, "
                f"got min={self.min} opt={self.opt} max={self.max}"
            )

    def shapes(self, sample_shape: tuple[int, ...]) -> dict[str, list[int]]:
        """Full input shapes (N, C, H, W) for each of min/opt/max."""
        sizes = {"min": self.min, "opt": self.opt, "max": self.max}
        return {name: [n, *sample_shape] for name, n in sizes.items()}


@dataclass(frozen=True)
class ModelInput:
    name: str
    sample_shape: tuple[int, ...]  # the shape of one sample: every dim after the batch dim


@dataclass(frozen=True)
class NetworkPlan:
    """How to create the network and configure the builder for one precision on one TensorRT version."""

    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()  # names of trt.BuilderFlag members to set
    clear_flags: tuple[str, ...] = ()  # names of trt.BuilderFlag members to clear


def parse_version(text: str) -> tuple[int, ...]:
    """'10.13.0.35' -> (10, 13, 0, 35); anything unparsable is an EngineError."""
    match = re.match(r"^(\d+(?:\.\d+)*)", text.strip())
    if not match:
        raise EngineError(f"cannot parse TensorRT version {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def network_plan(
    trt_version: str,
    precision: str,
    *,
    has_strongly_typed: bool,
    weak_typing: bool = False,
    tf32: bool = False,
) -> NetworkPlan:
    """Strongly typed wherever TensorRT offers it; builder precision flags only on TensorRT 10, when the
    caller asks for weak typing or the installed TensorRT lacks strongly typed networks."""
    major = parse_version(trt_version)[0]
    if major < MIN_TRT_MAJOR:
        raise EngineError(f"TensorRT {MIN_TRT_MAJOR} or newer is required, found {trt_version}")
    if precision not in _SOURCE_FOR:
        raise EngineError(f"unknown precision {precision!r}; choose one of: {', '.join(_SOURCE_FOR)}")
    # TF32 is a math mode, not a type: it stays on (TensorRT's default) unless the engine is meant to be
    # FP32 to the bit-level tolerance the parity check holds it to.
    clear = () if tf32 or precision != "fp32" else ("TF32",)
    strongly_typed = has_strongly_typed and not weak_typing
    if strongly_typed:
        return NetworkPlan(strongly_typed=True, clear_flags=clear)
    if major >= 11:
        raise EngineError(
            f"TensorRT {trt_version} builds strongly typed networks only (it removed the precision flags): "
            "drop --weak-typing and build from an FP16 or QDQ ONNX"
        )
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
    return NetworkPlan(strongly_typed=False, builder_flags=flags, clear_flags=clear)


def resolve_precision(requested: str, source_precision: str, *, strongly_typed: bool) -> tuple[str, bool]:
    """(engine precision, whether to convert the ONNX to FP16 first) for a requested precision and the
    precision the ONNX was exported in."""
    if requested not in ENGINE_PRECISIONS:
        raise EngineError(f"unknown precision {requested!r}; choose one of: {', '.join(ENGINE_PRECISIONS)}")
    by_source = {v: k for k, v in _SOURCE_FOR.items()}
    if source_precision == "int8-qdq-ort":
        raise EngineError(
            "this ONNX is quantized for ONNX Runtime (int8-qdq-ort); TensorRT needs the symmetric variant: "
            "run `resnet-serve quantize --variant trt`"
        )
    if source_precision not in by_source:
        raise EngineError(f"unknown model precision {source_precision!r} in the ONNX metadata")
    engine = by_source[source_precision] if requested == "auto" else requested
    if engine == by_source[source_precision]:
        return engine, False
    if engine == "fp16" and source_precision == "fp32":
        # Strongly typed: make the FP16 graph. Weakly typed: the FP16 builder flag does the job.
        return engine, strongly_typed
    if engine == "int8":
        raise EngineError(
            "an INT8 engine is built from a QDQ ONNX (explicit quantization): run `resnet-serve quantize` "
            "and build from its output; TensorRT's implicit calibration is not supported"
        )
    raise EngineError(f"cannot build a {engine} engine from a {source_precision} ONNX; export it again")


def model_input(model: onnx.ModelProto) -> ModelInput:
    """The single image input, with a dynamic batch dim and a static sample shape."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise EngineError(f"expected one model input, found {len(inputs)}: {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    sample: list[int] = []
    for d in dims[1:]:
        if not d.HasField("dim_value"):
            raise EngineError(f"input {inputs[0].name!r} has a dynamic dim other than the batch dim")
        sample.append(d.dim_value)
    if len(dims) < 2:
        raise EngineError(f"input {inputs[0].name!r} has no sample dims")
    return ModelInput(inputs[0].name, tuple(sample))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "9.0"


def gpu_identity(device: int = 0) -> GpuIdentity:
    """The GPU an engine is built on, as CUDA numbers devices: through torch when the export stage has
    it, else nvidia-smi (whose numbering ignores CUDA_VISIBLE_DEVICES, hence second choice)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return GpuIdentity(torch.cuda.get_device_name(device), f"{major}.{minor}")
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        problem = "cannot identify the GPU: no CUDA device visible to torch and no nvidia-smi"
        raise EngineError(problem) from None
    name, _, cc = out.strip().partition(",")
    return GpuIdentity(name.strip(), cc.strip())


def engine_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Logits of a serialized engine for a float32 NCHW batch: the parity report's TensorRT stage.

    Runs through the server's TensorRT backend, so the report checks exactly what would be served
    (sidecar checks, profile splitting and all).
    """
    from resnet_serve.runtime.tensorrt import create_backend

    backend = create_backend(path, "cuda:0")
    try:
        spec = backend.info.inputs[0]
        outputs = backend.infer({spec.name: np.ascontiguousarray(inputs, dtype=spec.dtype)})
        return np.asarray(outputs[backend.info.outputs[0].name], dtype=np.float32)
    finally:
        backend.close()


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    engine_path: Path
    profile: BatchProfile
    precision: str = "auto"
    workspace_mib: int = 4096
    timing_cache: Path | None = None
    weak_typing: bool = False
    tf32: bool = False
    device: int = 0


def build(req: BuildRequest, *, progress: bool = True) -> EngineSidecar:
    """Build, serialize and write the engine and its sidecar. Needs TensorRT and a GPU."""
    require_tensorrt()
    # tensorrt-stubs 10.13 cannot be read by mypy as installed (no py.typed, syntax errors); docs/gpu.md
    # shows how to type-check this module against a patched copy.
    import tensorrt as trt  # type: ignore[import-untyped]

    try:
        source_bytes = req.onnx_path.read_bytes()
        model = onnx.load_from_string(source_bytes)
    except (OSError, DecodeError, ValueError) as err:
        raise EngineError(f"cannot read ONNX model {req.onnx_path}: {err}") from None
    metadata = props_of(model)
    inp = model_input(model)
    has_st = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    precision, convert = resolve_precision(
        req.precision, metadata.get(PRECISION_KEY, "fp32"), strongly_typed=has_st and not req.weak_typing
    )
    plan = network_plan(
        trt.__version__, precision, has_strongly_typed=has_st, weak_typing=req.weak_typing, tf32=req.tf32
    )
    if convert:
        from resnet_serve.export.fp16 import to_fp16

        model = to_fp16(model)
        metadata = props_of(model)
    if plan.builder_flags:  # weakly typed: the graph stays FP32 and the flags lower it
        metadata[PRECISION_KEY] = precision
    gpu = gpu_identity(req.device)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # The path lets the parser find external weights stored next to a large model.
    if not parser.parse(model.SerializeToString(), str(req.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {req.onnx_path}: {errors or 'no detail given'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, req.workspace_mib << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    shapes = req.profile.shapes(inp.sample_shape)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if req.timing_cache is not None and req.timing_cache.is_file():
        cache_bytes = req.timing_cache.read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is dropped rather than trusted.
    config.set_timing_cache(cache, False)

    if progress:
        print(
            f"building {precision} engine from {req.onnx_path} (batch {req.profile.min}..{req.profile.max})"
            f" on {gpu.name}; this takes a few minutes",
            file=sys.stderr,
        )
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise EngineError("TensorRT failed to build the engine; its log above says why")
    engine_bytes = bytes(serialized)

    if req.timing_cache is not None:
        write_bytes_atomic(req.timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        input_name=inp.name,
        profile=shapes,
        source_onnx=str(req.onnx_path),
        source_sha256=sha256_of(source_bytes),
        engine_sha256=sha256_of(engine_bytes),
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        build_seconds=round(seconds, 2),
        strongly_typed=plan.strongly_typed,
        builder_flags=list(plan.builder_flags),
        workspace_bytes=req.workspace_mib << 20,
        metadata=metadata,
    )
    # Engine first, sidecar second: a crash in between leaves a sidecar whose engine_sha256 no longer
    # matches, which the server refuses, rather than a new sidecar vouching for an old engine.
    write_bytes_atomic(req.engine_path, engine_bytes)
    write_bytes_atomic(sidecar_path(req.engine_path), sidecar.to_json().encode())
    return sidecar
