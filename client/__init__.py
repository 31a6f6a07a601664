"""Python client for resnet-serve's image API (sync and asyncio), usable without torch or onnxruntime.

    from client import Client
    with Client("localhost:8001") as c:
        print(c.classify("cat.jpg").top.label)

Names are imported on first use, so `import client` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.aio import AsyncClient
    from client.channel import RetryPolicy, TLSConfig
    from client.images import ImageLike, encode_image
    from client.results import Classification, ClassifyError, ModelInfo, ModelVersion, Prediction, Timing
    from client.sync import Client

_WHERE = {
    "Client": "client.sync",
    "AsyncClient": "client.aio",
    "RetryPolicy": "client.channel",
    "TLSConfig": "client.channel",
    "ImageLike": "client.images",
    "encode_image": "client.images",
    "ClassifyError": "client.results",
    "Classification": "client.results",
    "ModelInfo": "client.results",
    "ModelVersion": "client.results",
    "Prediction": "client.results",
    "Timing": "client.results",
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
    raise AttributeError(f"module 'client' has no attribute {name!r}")
