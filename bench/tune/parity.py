"""The parity gate: a variant is measured only if its logits match ONNX Runtime FP32 within the release
tolerance of its precision (formats/parity.py, the numbers `resnet-serve verify` uses).

The images are real: scikit-learn's digits for a one-channel model, crops of its two sample photos for an
RGB one (bench's own workload), put through the model's preprocessing contract (formats/preprocess.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from resnet_serve.bench.tune.candidates import Variant
from resnet_serve.formats.metadata import from_props
from resnet_serve.formats.parity import Tolerances, within
from resnet_serve.runtime.base import Backend, BackendError

BATCH = 8
IMAGES = 32


@dataclass(frozen=True)
class ParityResult:
    variant: Variant
    ok: bool
    detail: str  # the measured figures and the tolerance, or why the variant could not run


def _backend(variant: Variant, threads: int) -> Backend:
    from resnet_serve.runtime.factory import InstanceOptions, create_backends

    precision = "bf16" if variant.precision == "bf16" else "fp32"
    options = InstanceOptions(intra_op_threads=threads, inference_precision=precision)
    return create_backends(variant.file, variant.runtime, 1, options)[0]


def _logits(backend: Backend, x: NDArray[np.float32]) -> NDArray[np.float32]:
    name = backend.info.inputs[0].name
    rows = [next(iter(backend.infer({name: x[i : i + BATCH]}).values())) for i in range(0, len(x), BATCH)]
    return np.concatenate(rows).astype(np.float32)


def evaluation_images(backend: Backend, images: str = "auto") -> tuple[str, NDArray[np.float32]]:
    """(a description, the model's input rows) for real images, preprocessed by the model's own contract."""
    from PIL import Image

    from resnet_serve.bench.workload import load_images
    from resnet_serve.formats.preprocess import eval_pixels, normalize_array

    meta = from_props(backend.info.metadata, "model")
    channels = backend.info.inputs[0].shape[1]
    description, encoded = load_images(images, channels, limit=IMAGES)
    pixels = np.stack([eval_pixels(Image.open(io.BytesIO(data)), meta.preprocess) for data in encoded])
    return description, normalize_array(pixels, meta.preprocess)


def check(variants: list[Variant], reference: Path, threads: int, tol: Tolerances) -> list[ParityResult]:
    """Hold every variant to its tolerance against ONNX Runtime FP32 on `reference`."""
    ref_backend = _backend(Variant("onnxruntime", "fp32", reference), threads)
    try:
        description, x = evaluation_images(ref_backend)
        expected = _logits(ref_backend, x)
    finally:
        ref_backend.close()
    results = []
    for variant in variants:
        try:
            backend = _backend(variant, threads)
        except BackendError as exc:
            results.append(ParityResult(variant, False, f"cannot load: {exc}"))
            continue
        try:
            ok, figures = within(variant.precision, _logits(backend, x), expected, tol)
        except BackendError as exc:
            results.append(ParityResult(variant, False, f"cannot run: {exc}"))
            continue
        finally:
            backend.close()
        results.append(ParityResult(variant, ok, f"{figures} on {len(x)} {description}"))
    return results
