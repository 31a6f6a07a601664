"""Parity against the reference: FP32 within relative error 1e-3; reduced precisions on top-1 agreement and
held-out accuracy (digits), or reported without a verdict where accuracy means nothing (random ResNet-50)."""

from __future__ import annotations

import numpy as np

from lab.gpu_check.model import Model
from lab.gpu_check.row import Row

FP32_TOLERANCE = 1e-3


def parity(row: Row, model: Model, logits: np.ndarray) -> None:
    ref = model.reference
    assert ref is not None
    row.reference = model.reference_name
    row.rel_error = float(np.abs(logits - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    row.top1_agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    if model.labels is not None:
        row.accuracy = float((logits.argmax(1) == model.labels).mean())
        row.reference_accuracy = float((ref.argmax(1) == model.labels).mean())
    if row.precision == "fp32":
        row.parity = "pass" if row.rel_error <= FP32_TOLERANCE else "FAIL"
    elif model.labels is not None and row.accuracy is not None and row.reference_accuracy is not None:
        ok = row.top1_agreement >= 0.99 and row.accuracy >= row.reference_accuracy - 0.01
        row.parity = "pass" if ok else "FAIL"
    else:
        row.parity = "info"  # random-weight ResNet-50: agreement is reported, accuracy has no meaning
