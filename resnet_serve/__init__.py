"""resnet-serve: from a trained ResNet to a production inference service.

Installed, everything lives under this one name. In the repository each layer is a top-level folder
(formats/, models/, training/, runtime/, export/, server/, client/, bench/, cli/, protos/), and this package
links them in: docs/architecture.md gives the layers and what each may import.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnet-serve")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "unknown"
