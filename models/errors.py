"""Errors of the models layer; each is a `UserError`, so the CLI prints ``str(err)`` as one line."""

from __future__ import annotations

from resnet_serve.formats.errors import UserError


class ModelsError(UserError):
    """Base class: every subclass message is a single line that says what went wrong and what to do."""


class UnknownArchitectureError(ModelsError, ValueError):
    """An architecture name that the registry does not know."""


class ModelConfigError(ModelsError, ValueError):
    """Keyword arguments that an architecture does not take."""


class DatasetError(ModelsError):
    """A data set that cannot be used: missing, empty, or holding unreadable files."""


class CheckpointError(ModelsError):
    """A checkpoint that cannot be read, or one made for a different architecture."""
