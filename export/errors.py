"""The one error type of the export stage: its message is shown to the user as a single line."""

from __future__ import annotations

from resnet_serve.formats.errors import UserError


class ExportError(UserError):
    """Bad input or a failed check in export/quantize/verify/package; `str()` is a one-line message."""


def os_error_line(err: OSError) -> str:
    """One line for a file that cannot be read or written (atomic writes name the destination path)."""
    return f"{err.strerror or err}: {err.filename}" if err.filename else str(err)
