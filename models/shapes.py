"""Output-size arithmetic for convolution and pooling windows, and "same" padding.

One rule covers every case (stride larger than the kernel, even kernels, padding larger than the kernel)::

    k_eff = d·(k − 1) + 1
    out   = ⌊(n − k_eff + p_total + s) / s⌋          (= ⌊(n + p_total − k_eff)/s⌋ + 1)

where ``p_total`` is the padding summed over both sides of the axis.
"""

from __future__ import annotations

from typing import Literal


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Span of a dilated kernel: d·(k − 1) + 1."""
    if kernel < 1 or dilation < 1:
        raise ValueError(f"kernel and dilation must be >= 1, got kernel={kernel}, dilation={dilation}")
    return dilation * (kernel - 1) + 1


def output_size(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Number of window positions along an axis of length ``n`` with ``padding`` in total (both sides).

    Returns 0 or less when the padded input is shorter than the kernel (no valid position).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return (n - effective_kernel(kernel, dilation) + padding + stride) // stride


def same_padding(
    n: int, kernel: int, stride: int = 1, dilation: int = 1, extra: Literal["before", "after"] = "before"
) -> tuple[int, int]:
    """(before, after) padding that makes the output ⌈n/s⌉ long, for odd and even kernels.

    ``p = max((⌈n/s⌉ − 1)·s + k_eff − n, 0)``. With ``extra="before"`` (the default) the odd pixel goes first:
    ⌈p/2⌉ top/left and ⌊p/2⌋ bottom/right, like ONNX ``auto_pad=SAME_LOWER``; ``"after"`` is ⌊p/2⌋ / ⌈p/2⌉,
    like ONNX ``SAME_UPPER``, TensorFlow's "SAME" and PyTorch's ``padding="same"`` (stride 1 only there).
    """
    out = -(-n // stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - n, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if extra == "before" else (small, big)
