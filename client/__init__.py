"""Python client for resnet-serve's image API (sync and asyncio), usable without torch or onnxruntime.

    from resnet_serve.client import Client
    with Client("localhost:8001") as c:
        print(c.classify("cat.jpg").top.label)

Names are imported on first use, so `import resnet_serve.client` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resnet_serve.client.aio import AsyncClient
    from resnet_serve.client.channel import RetryPolicy, TLSConfig
    from resnet_serve.client.images import ImageLike, encode_image
    from resnet_serve.client.results import (
        Classification,
        ClassifyError,
        ModelInfo,
        ModelVersion,
        Prediction,
        Timing,
    )
    from resnet_serve.client.sync import Client

_WHERE = {
    "Client": "resnet_serve.client.sync",
    "AsyncClient": "resnet_serve.client.aio",
    "RetryPolicy": "resnet_serve.client.channel",
    "TLSConfig": "resnet_serve.client.channel",
    "ImageLike": "resnet_serve.client.images",
    "encode_image": "resnet_serve.client.images",
    "ClassifyError": "resnet_serve.client.results",
    "Classification": "resnet_serve.client.results",
    "ModelInfo": "resnet_serve.client.results",
    "ModelVersion": "resnet_serve.client.results",
    "Prediction": "resnet_serve.client.results",
    "Timing": "resnet_serve.client.results",
}

__all__ = [
    "AsyncClient",
    "Classification",
    "ClassifyError",
    "Client",
    "ImageLike",
    "ModelInfo",
    "ModelVersion",
    "Prediction",
    "RetryPolicy",
    "TLSConfig",
    "Timing",
    "encode_image",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazily imported names too, so `dir()`, help() and completion show `Client` and the rest."""
    return sorted({*globals(), *__all__})
