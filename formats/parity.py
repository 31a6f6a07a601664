"""The release tolerances: how close a model's logits must stay to its FP32 reference, per precision.

One home for the numbers `resnet-serve verify` holds every exported stage to and `resnet-serve tune` holds
every candidate runtime × precision to before measuring it. Errors are relative to the reference's scale
(max |x − ref| / max |ref|), so they mean the same for 10 logits and for 1,000.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Tolerances:
    fp32_rel: float = 1e-4
    fp16_rel: float = 1e-2
    int8_agreement: float = 0.99
    int8_acc_drop: float = 0.005  # as a fraction: 0.5 percentage points
    # bf16 keeps 8 bits of mantissa: ResNet-50's logits move by ~5e-3 of their scale (4.6e-3 measured with
    # torchvision weights on an AVX512_BF16 CPU, issue #17), so 1e-2 with top-1 agreement ≥ 99 %.
    bf16_rel: float = 1e-2
    bf16_agreement: float = 0.99


def relative_error(actual: NDArray[np.floating], reference: NDArray[np.floating]) -> float:
    """max |actual − reference| / max |reference|: scale-aware, and defined when single logits are ~0."""
    scale = float(np.max(np.abs(reference)))
    diff = float(np.max(np.abs(actual.astype(np.float64) - reference.astype(np.float64))))
    return diff / scale if scale > 0 else diff


def top1_agreement(actual: NDArray[np.floating], reference: NDArray[np.floating]) -> float:
    return float(np.mean(actual.argmax(1) == reference.argmax(1)))


def within(
    precision: str, actual: NDArray[np.floating], reference: NDArray[np.floating], tol: Tolerances
) -> tuple[bool, str]:
    """Whether logits of `precision` pass against the FP32 reference, and the measured figures in words."""
    rel = relative_error(actual, reference)
    agreement = top1_agreement(actual, reference)
    figures = f"relative error {rel:.1e}, top-1 agreement {agreement:.1%}"
    if precision.startswith("int8"):
        return agreement >= tol.int8_agreement, f"{figures} (needs agreement ≥ {tol.int8_agreement:.0%})"
    if precision == "bf16":
        ok = agreement >= tol.bf16_agreement and rel <= tol.bf16_rel
        return ok, f"{figures} (needs ≤ {tol.bf16_rel:.0e} and agreement ≥ {tol.bf16_agreement:.0%})"
    limit = tol.fp16_rel if precision == "fp16" else tol.fp32_rel
    return rel <= limit, f"{figures} (needs relative error ≤ {limit:.0e})"
