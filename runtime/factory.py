"""Which backend runs a model file, and building one instance of it.

ONNX Runtime is imported here; the TensorRT and PyTorch backends are imported only when a model asks for
them, because their imports are heavy (and absent on CPU-only installs). Each of those modules exposes
`create_backend(path: Path, device: str) -> Backend`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from resnet_serve.runtime.base import Backend, BackendError

# backend name → the module implementing it (lazily imported)
BACKENDS: dict[str, str] = {
    "onnxruntime": "resnet_serve.runtime.onnxruntime",
    "tensorrt": "resnet_serve.runtime.tensorrt",
    "torch": "resnet_serve.runtime.torch_cuda",
}
EXTENSIONS: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
    ".pt": "torch",
    ".pt2": "torch",
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
    if backend == "onnxruntime":
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
