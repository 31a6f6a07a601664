"""Which backend runs a model file, and building one instance of it.

ONNX Runtime is imported here; the TensorRT and PyTorch backends are imported only when a model asks for
them, because their imports are heavy (and absent on CPU-only installs). Each of those modules exposes
`create_backend(path: Path, device: str) -> Backend`. OpenVINO (an optional extra) is imported only for a
model served with it; its instances share one compiled model (`create_backends`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from resnet_serve.formats.repository import ONNXRUNTIME, OPENVINO, TENSORRT, TORCH
from resnet_serve.runtime.base import Backend, BackendError

# backend name → the module implementing it (lazily imported)
# (the names are formats/repository.py's BACKENDS: the repository schema accepts exactly these)
BACKENDS: dict[str, str] = {
    ONNXRUNTIME: "resnet_serve.runtime.onnxruntime",
    TENSORRT: "resnet_serve.runtime.tensorrt",
    TORCH: "resnet_serve.runtime.torch_cuda",
    OPENVINO: "resnet_serve.runtime.openvino",
}
EXTENSIONS: dict[str, str] = {
    ".onnx": ONNXRUNTIME,
    ".plan": TENSORRT,
    ".engine": TENSORRT,
    ".pt": TORCH,
    ".pt2": TORCH,
}


def backend_for(path: Path, requested: str) -> str:
    """The backend name for a model file: the requested one, or by extension when it is "auto"."""
    if requested != "auto":
        if requested not in BACKENDS:
            raise BackendError(f"unknown backend {requested!r}; choose auto, {', '.join(BACKENDS)}")
        return requested
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise BackendError(
            f"cannot tell the backend of {path} from its extension; expected one of "
            f"{', '.join(EXTENSIONS)} or an explicit backend"
        )
    return found


def create_backend(
    path: Path, backend: str, device: str, intra_op_threads: int, spinning: bool = False
) -> Backend:
    """Build one execution instance of the model at `path`."""
    if backend == ONNXRUNTIME:
        from resnet_serve.runtime.onnxruntime import OrtBackend, OrtOptions

        options = OrtOptions(device=device, intra_op_threads=intra_op_threads, spinning=spinning)
        return OrtBackend(path, options)
    try:
        module = importlib.import_module(BACKENDS[backend])
    except ImportError as exc:
        raise BackendError(f"the {backend} backend is not available here: {exc}") from None
    factory = getattr(module, "create_backend", None)
    if factory is None:
        raise BackendError(f"{BACKENDS[backend]} does not provide create_backend(path, device)")
    try:
        made = factory(path, device)
    except ImportError as exc:  # a GPU runtime the backend imports only when it builds an instance
        raise BackendError(f"the {backend} backend is not available here: {exc}") from None
    if not isinstance(made, Backend):
        raise BackendError(
            f"{BACKENDS[backend]}.create_backend returned {type(made).__name__}, not a Backend"
        )
    return made


@dataclass(frozen=True)
class InstanceOptions:
    """How each execution instance of a model runs (the model's settings, server/config.py)."""

    device: str = "cpu"
    intra_op_threads: int = 1  # per instance
    spinning: bool = False  # ONNX Runtime only
    inference_precision: str = "fp32"  # bf16: OpenVINO only (formats.repository.INFERENCE_PRECISIONS)
    performance_mode: str = "latency"  # OpenVINO only (formats.repository.PERFORMANCE_MODES)
    cache_dir: str = ""  # OpenVINO's compiled-model cache ("": none)


def create_backends(path: Path, backend: str, count: int, options: InstanceOptions) -> list[Backend]:
    """Build `count` execution instances of the model at `path`.

    ONNX Runtime, TensorRT and PyTorch instances are independent sessions; OpenVINO's share one compiled
    model with one stream per instance and one InferRequest each, so the model is compiled (or imported from
    its cache) once. A precision other than fp32 is refused for a backend that cannot honour it."""
    if backend == OPENVINO:
        try:
            openvino = importlib.import_module(BACKENDS[OPENVINO])
        except ImportError as exc:
            raise BackendError(
                f"the openvino backend is not available here: {exc} (pip install 'resnet-serve[openvino]')"
            ) from None
        ov_options = openvino.OpenVinoOptions(
            precision=options.inference_precision,
            performance_mode=options.performance_mode,
            streams=count,
            threads=options.intra_op_threads * count,
            cache_dir=options.cache_dir,
            device=options.device,
        )
        instances: list[Backend] = openvino.create_backends(path, ov_options, count)
        return instances
    if options.inference_precision != "fp32":
        raise BackendError(
            f"inference precision {options.inference_precision} needs the openvino backend, not {backend} "
            "(the file's own precision, e.g. an FP16 or INT8 export, needs no setting)"
        )
    built: list[Backend] = []
    try:
        for _ in range(count):
            built.append(
                create_backend(path, backend, options.device, options.intra_op_threads, options.spinning)
            )
    except Exception:
        for made in built:
            made.close()
        raise
    return built
