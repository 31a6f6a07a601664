"""BatchNorm folding: an inference-time rewrite that removes every BatchNorm module from a network.

A BatchNorm in eval mode is a per-channel affine map y = (x − μ)·γ/√(σ²+ε) + β. When it reads the output of
a convolution (or linear layer) that nothing else reads, the affine map can be absorbed into that layer's
weights and bias:  W' = W·s,  b' = (b − μ)·s + β  with  s = γ/√(σ²+ε).  A BatchNorm with no such producer
(e.g. one that normalises the network input) becomes a plain per-channel scale-and-shift, so the result holds
no BatchNorm at all and exports to ONNX without BatchNormalization nodes.

Pairs are found on the torch.fx graph, not by module names or registration order, so the rewrite is correct
for any traceable network: it folds exactly the BatchNorms that consume a conv output used nowhere else.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FoldError(ValueError):
    """The model cannot be folded; the message says why."""


class ChannelAffine(nn.Module):
    """y = x·scale + shift per channel (dim 1): an eval-mode BatchNorm with its statistics frozen."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (-1,) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(view) + self.shift.reshape(view)


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The BatchNorm as (s, t) with y = x·s + t, in float64 so folding adds no rounding of its own."""
    if bn.running_mean is None or bn.running_var is None:
        raise FoldError(
            "a BatchNorm without running statistics (track_running_stats=False) normalises with batch "
            "statistics even in eval mode and cannot be folded"
        )
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    n = mean.numel()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(n, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(n, dtype=torch.float64)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of `layer` (Conv1d/2d/3d or Linear) that computes bn(layer(x)); the inputs are not modified."""
    if not isinstance(layer, _FOLDABLE):
        raise FoldError(f"cannot fold a BatchNorm into {type(layer).__name__}")
    out_features = layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features
    if bn.num_features != out_features:
        raise FoldError(
            f"BatchNorm has {bn.num_features} channels but the layer before it produces {out_features}"
        )
    scale, shift = _bn_scale_shift(bn)
    weight = layer.weight.detach()
    bias = (
        layer.bias.detach().double()
        if layer.bias is not None
        else torch.zeros(out_features, dtype=torch.float64)
    )
    # Output channels are the leading weight dimension for Conv (also grouped) and Linear alike.
    w_scale = scale.reshape((-1,) + (1,) * (weight.dim() - 1))
    folded = copy.deepcopy(layer)
    folded.weight = nn.Parameter((weight.double() * w_scale).to(weight.dtype), requires_grad=False)
    folded.bias = nn.Parameter((bias * scale + shift).to(weight.dtype), requires_grad=False)
    return folded


def _as_affine(bn: nn.modules.batchnorm._BatchNorm) -> ChannelAffine:
    scale, shift = _bn_scale_shift(bn)
    dtype = bn.running_mean.dtype if bn.running_mean is not None else torch.float32
    return ChannelAffine(scale.to(dtype), shift.to(dtype))


def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """A new module computing the same function as `model` (in eval mode) with no BatchNorm module in it.

    `model` must be in eval mode (folding freezes the running statistics; a training-mode model would compute
    something else) and traceable by torch.fx. It is not modified.
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise FoldError(
            f"BatchNorm folding needs a model in eval mode, but {training[0]!r} is in training mode; "
            "call model.eval() first"
        )
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # fx raises many types; the user needs to know tracing is the obstacle
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FoldError(f"cannot trace {type(model).__name__} with torch.fx: {first_line}") from exc

    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCHNORMS):
            continue
        bn = modules[node.target]
        producer = node.args[0] if node.args else None
        foldable = (
            isinstance(producer, torch.fx.Node)
            and producer.op == "call_module"
            and isinstance(modules[producer.target], _FOLDABLE)
            and len(producer.users) == 1
            # A module called twice shares weights between calls; folding one call would change the other.
            and sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == producer.target) == 1
        )
        if foldable:
            assert isinstance(producer, torch.fx.Node)
            _set_submodule(gm, str(producer.target), fold_pair(modules[producer.target], bn))
            node.replace_all_uses_with(producer)
            gm.graph.erase_node(node)
        else:
            _set_submodule(gm, str(node.target), _as_affine(bn))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.eval()
    leftover = [name for name, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        # e.g. a BatchNorm reached through torch.nn.functional.batch_norm or a non-standard subclass.
        raise FoldError(f"could not fold BatchNorm {leftover[0]!r}")
    return gm


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)
