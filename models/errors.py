"""Errors that reach the user as one-line messages (the CLI prints ``str(err)`` and exits non-zero)."""

from __future__ import annotations


class ModelsError(Exception):
    """Base class: every subclass message is a single line that says what went wrong and what to do."""


class UnknownArchitectureError(ModelsError, ValueError):
    """An architecture name that the registry does not know."""


class ModelConfigError(ModelsError, ValueError):
    """Keyword arguments that an architecture does not take."""


class DatasetError(ModelsError):
    """A data set that cannot be used: missing, empty, or holding unreadable files."""


class CheckpointError(ModelsError):
    """A checkpoint that cannot be read, or one made for a different architecture."""
