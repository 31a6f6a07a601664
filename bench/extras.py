"""The optional packages a bench run will import, checked before it starts.

bench imports some packages only when it reaches the step that needs them: scikit-learn for the built-in
images, tritonclient for `--protocol kserve`, matplotlib for the plots (written after the whole sweep), the
model's runtime for `--baseline` (after the sweep too). A missing one would be a traceback minutes into a run;
`check` finds it first and names, in one line, the extra that installs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from resnet_serve.formats.errors import UserError


class MissingPackage(UserError):
    """A package the requested run will import is not installed."""


@dataclass(frozen=True)
class Need:
    module: str  # the top-level import name
    package: str  # what pip installs
    extra: str  # the resnet-serve extra that installs it
    why: str  # what in the run imports it


SKLEARN = Need("sklearn", "scikit-learn", "bench", "--images digits/photos/auto (scikit-learn's images)")
TRITONCLIENT = Need("tritonclient", "tritonclient", "bench", "--protocol kserve")
MATPLOTLIB = Need("matplotlib", "matplotlib", "bench", "the plots")
# --baseline runs the model with the server's own backend, so it needs what serving that model needs.
BASELINE: dict[str, tuple[Need, ...]] = {
    "onnxruntime": (Need("onnxruntime", "onnxruntime", "serve", "--baseline with an ONNX model"),),
    "tensorrt": (
        Need("tensorrt", "tensorrt", "gpu", "--baseline with a TensorRT engine"),
        Need("cuda", "cuda-python", "gpu", "--baseline with a TensorRT engine"),
    ),
    "torch": (Need("torch", "torch", "train", "--baseline with a PyTorch checkpoint"),),
    "openvino": (Need("openvino", "openvino", "openvino", "--baseline with the OpenVINO backend"),),
}


def needs(protocol: str, images: str, baseline: Path | None) -> list[Need]:
    """What a run with these options will import, beyond the base install."""
    from resnet_serve.bench.workload import BUILTIN
    from resnet_serve.runtime.base import BackendError
    from resnet_serve.runtime.factory import backend_for

    found = [TRITONCLIENT] if protocol == "kserve" else [SKLEARN] if images in BUILTIN else []
    found.append(MATPLOTLIB)
    if baseline is not None:
        try:
            backend = backend_for(baseline, "auto")
        except BackendError as exc:  # the message baseline.measure would give, but before the sweep
            raise ValueError(f"--baseline {baseline}: {exc}") from None
        found += BASELINE.get(backend, ())
    return found


def check(required: list[Need]) -> None:
    """Raise MissingPackage for the first of `required` that is not installed (without importing any)."""
    for need in required:
        if find_spec(need.module) is None:
            raise MissingPackage(
                f"{need.why} needs {need.package}, which is not installed: "
                f"pip install 'resnet-serve[{need.extra}]'"
            )
