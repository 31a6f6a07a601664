"""Reading the operator's security files (certificates, keys, token files), with one error for all of them.

The checks themselves are formats/tlsfiles.py's, which the client runs on its own TLS files too. The messages
name the option and the path, never a file's contents.
"""

from __future__ import annotations

import logging

from resnet_serve.formats.tlsfiles import MAX_FILE_BYTES, SecurityError, read_small_file

__all__ = ["MAX_FILE_BYTES", "SecurityError", "read_secret_file"]

log = logging.getLogger(__name__)


def read_secret_file(path: str, option: str, *, private: bool = False) -> bytes:
    """The bytes of `path` (given as `option`). `private` files (keys, tokens) that others may read are
    served, with a warning: refusing would break deployments whose secret mounts are 0644."""
    data, mode = read_small_file(path, option)
    if private and mode & 0o077:
        log.warning("%s %s can be read by other users (mode %o); chmod 600 it", option, path, mode & 0o777)
    return data
