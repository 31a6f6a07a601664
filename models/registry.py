"""Architecture names → model constructors: the one place that turns a checkpoint's ``arch`` into a model.

``build(arch, **model_config)`` is how ``models.checkpoint``, ``export/`` and training make models, so a
checkpoint's ``arch`` and ``model_config`` are all that is needed to rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from resnet_serve.models import cifar, resnet
from resnet_serve.models.errors import ModelConfigError, UnknownArchitectureError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": cifar.resnet20,
    "resnet32": cifar.resnet32,
    "resnet44": cifar.resnet44,
    "resnet56": cifar.resnet56,
    "resnet110": cifar.resnet110,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
    "wide_resnet50_2": resnet.wide_resnet50_2,
    "resnext50_32x4d": resnet.resnext50_32x4d,
}

#: Architectures designed for 32×32 inputs (CIFAR-style stem, no max pool).
SMALL_INPUT: frozenset[str] = frozenset({"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"})


def names() -> list[str]:
    """All known architecture names: CIFAR-style first, then torchvision's."""
    return list(_BUILDERS)


def check(name: str) -> str:
    """Return ``name`` if it is known, else raise :class:`UnknownArchitectureError` listing the known ones."""
    if name not in _BUILDERS:
        raise UnknownArchitectureError(f"unknown architecture {name!r}; known: {', '.join(names())}")
    return name


def build(name: str, **config: Any) -> nn.Module:
    """Construct architecture ``name`` with keyword ``config`` (``num_classes``, ``in_chans``, ...).

    Raises :class:`UnknownArchitectureError` for an unknown name and :class:`ModelConfigError` for a
    config key the architecture does not take (both are ``ValueError``).
    """
    builder = _BUILDERS[check(name)]
    try:
        return builder(**config)
    except TypeError as err:
        raise ModelConfigError(f"bad model config for {name}: {err}") from None
