"""NumPy oracles for the layers a ResNet is made of: slow, obvious, float64, and independent of PyTorch.

They define what the layers compute so tests can hold PyTorch (and ONNX Runtime, and BatchNorm folding)
to it. Padding is given per side, ``((top, bottom), (left, right))``, so asymmetric "same" padding works too.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

from resnet_serve.models.shapes import effective_kernel, output_size

Pair = tuple[int, int]
Padding = int | Pair | tuple[Pair, Pair]
F64 = NDArray[np.float64]


def _pair(v: int | Pair) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _sides(padding: Padding) -> tuple[Pair, Pair]:
    """int p → ((p, p), (p, p)); (ph, pw) → ((ph, ph), (pw, pw)); per-side pairs pass through."""
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    a, b = padding
    if isinstance(a, int) and isinstance(b, int):
        return (a, a), (b, b)
    return _pair(a), _pair(b)


def _windows(x: F64, kernel: Pair, stride: Pair, dilation: Pair, pad: tuple[Pair, Pair], fill: float) -> F64:
    """(N, C, H, W) → (N, C, OH, OW, kh, kw): every window the layer sees, padding filled with ``fill``."""
    if min(p for side in pad for p in side) < 0:
        raise ValueError(f"padding must be >= 0, got {pad}")
    xp = np.pad(x, ((0, 0), (0, 0), pad[0], pad[1]), constant_values=fill)
    span = (effective_kernel(kernel[0], dilation[0]), effective_kernel(kernel[1], dilation[1]))
    oh = output_size(x.shape[2], kernel[0], stride[0], sum(pad[0]), dilation[0])
    ow = output_size(x.shape[3], kernel[1], stride[1], sum(pad[1]), dilation[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"input {x.shape[2:]} with padding {pad} is smaller than the kernel span {span}")
    win = sliding_window_view(xp, span, axis=(2, 3))
    return win[:, :, : (oh - 1) * stride[0] + 1 : stride[0], : (ow - 1) * stride[1] + 1 : stride[1],
               :: dilation[0], :: dilation[1]]  # fmt: skip


def conv2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: int | Pair = 1,
           padding: Padding = 0, dilation: int | Pair = 1, groups: int = 1) -> F64:  # fmt: skip
    """2-D cross-correlation (what deep learning calls convolution), multi-channel and grouped.

    ``x`` (N, C, H, W), ``weight`` (O, C/groups, kh, kw), ``bias`` (O,) → (N, O, OH, OW).
    """
    x64, w64 = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    c = x64.shape[1]
    o, cg, kh, kw = w64.shape
    if c % groups or o % groups or cg != c // groups:
        raise ValueError(f"{c} input and {o} output channels do not split into {groups} groups of {cg}")
    win = _windows(x64, (kh, kw), _pair(stride), _pair(dilation), _sides(padding), 0.0)
    og = o // groups
    out = np.concatenate([
        np.einsum("nchwij,ocij->nohw", win[:, g * cg:(g + 1) * cg], w64[g * og:(g + 1) * og])
        for g in range(groups)
    ], axis=1)  # fmt: skip
    if bias is not None:
        out += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return out


def max_pool2d(x: ArrayLike, kernel: int | Pair, stride: int | Pair | None = None, padding: Padding = 0,
               dilation: int | Pair = 1) -> F64:  # fmt: skip
    """Max over each window; padding never wins (it is −∞). ``stride`` defaults to the kernel."""
    k = _pair(kernel)
    win = _windows(
        np.asarray(x, np.float64), k, _pair(stride or kernel), _pair(dilation), _sides(padding), -np.inf
    )
    out: F64 = win.max(axis=(4, 5))
    return out


def avg_pool2d(x: ArrayLike, kernel: int | Pair, stride: int | Pair | None = None, padding: Padding = 0,
               count_include_pad: bool = True) -> F64:  # fmt: skip
    """Mean over each window. With ``count_include_pad`` (PyTorch's default) padded zeros count in the
    divisor, so border windows are darker; without it only real pixels are averaged."""
    k, s, pad = _pair(kernel), _pair(stride or kernel), _sides(padding)
    x64 = np.asarray(x, np.float64)
    total: F64 = _windows(x64, k, s, (1, 1), pad, 0.0).sum(axis=(4, 5))
    if count_include_pad:
        return total / (k[0] * k[1])
    ones = np.ones((1, 1, *x64.shape[2:]))
    count: F64 = _windows(ones, k, s, (1, 1), pad, 0.0).sum(axis=(4, 5))
    return total / count


def batch_norm_eval(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, mean: ArrayLike, var: ArrayLike,
                    eps: float = 1e-5) -> F64:  # fmt: skip
    """Inference BatchNorm: γ·(x − μ_running)/√(σ²_running + ε) + β per channel of (N, C, H, W)."""

    def ch(v: ArrayLike) -> F64:
        return np.asarray(v, np.float64).reshape(1, -1, 1, 1)

    return ch(gamma) * (np.asarray(x, np.float64) - ch(mean)) / np.sqrt(ch(var) + eps) + ch(beta)


def batch_norm_train(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, running_mean: ArrayLike,
                     running_var: ArrayLike, momentum: float = 0.1, eps: float = 1e-5,
                     ) -> tuple[F64, F64, F64]:  # fmt: skip
    """Training BatchNorm: normalise with the batch's statistics (biased variance) and return
    ``(y, new_running_mean, new_running_var)``; the running variance is updated with the unbiased one."""
    x64 = np.asarray(x, np.float64)
    count = x64.shape[0] * x64.shape[2] * x64.shape[3]
    if count < 2:
        raise ValueError("training BatchNorm needs more than one value per channel")
    mean = x64.mean(axis=(0, 2, 3))
    var = x64.var(axis=(0, 2, 3))
    y = batch_norm_eval(x64, gamma, beta, mean, var, eps)
    new_mean = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean
    new_var = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var * count / (count - 1)
    return y, new_mean, new_var
