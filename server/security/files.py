"""Reading the operator's security files (certificates, keys, token files), with one error for all of them.

The messages name the option and the path, never a file's contents.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from resnet_serve.formats.errors import UserError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1024 * 1024  # a certificate bundle or token list; anything bigger is the wrong file


class SecurityError(UserError):
    """A certificate, key or token file that cannot be used; the message names the option and path."""


def read_secret_file(path: str, option: str, *, private: bool = False) -> bytes:
    """The bytes of `path` (given as `option`). `private` files (keys, tokens) that others may read are
    served, with a warning: refusing would break deployments whose secret mounts are 0644."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise SecurityError(f"{option} {path}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise SecurityError(f"{option} {path}: {info.st_size} bytes; expected at most {MAX_FILE_BYTES}")
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SecurityError(f"{option} {path}: no such file") from None
    except PermissionError:
        raise SecurityError(f"{option} {path}: permission denied") from None
    except OSError as exc:
        raise SecurityError(f"{option} {path}: {exc.strerror or exc}") from None
    if private and info.st_mode & 0o077:
        log.warning(
            "%s %s can be read by other users (mode %o); chmod 600 it", option, path, info.st_mode & 0o777
        )
    return data
