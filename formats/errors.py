"""The error every layer raises for a failure the user can fix, and the one way it reaches them.

Each layer has its own subclasses (ExportError, ModelsError, ConfigError, ...); all of them derive from
`UserError`, whose `str()` is one line saying what went wrong and what to do. The CLI prints it once, in
cli/main.py (`resnet-serve COMMAND: error: MESSAGE`, argparse's shape for a usage error); the server answers
INVALID_ARGUMENT for `InvalidInput`.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix (bad input, a missing file, a failed check); `str()` is one line."""


class Failure(UserError):
    """The command ran and what it did failed (every benchmark request failed, ...): exit status 1, where a
    command's bad input may be a usage error (2)."""


class InvalidInput(UserError, ValueError):
    """Data that breaks a contract: an undecodable image, a tensor of the wrong datatype or shape."""


class MetadataError(InvalidInput):
    """A model file whose `resnet_serve.*` metadata is missing or malformed, or that cannot be read at all."""


class ImageError(InvalidInput):
    """An image that cannot be used: empty, undecodable, corrupt, or over the size limits."""


class SidecarError(UserError):
    """A TensorRT engine without a usable sidecar, or one built for another TensorRT or GPU: rebuild it."""
