"""Atomic file writes and content hashes: an interrupted command never leaves a half-written model behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error it is removed.
    A `path` that is a folder is refused (OSError, EISDIR) before the block runs.

    The temporary file lives in the destination directory so that the final os.replace is an atomic rename
    on the same file system.
    """
    dest = Path(path)
    if dest.is_dir():  # refused before anything is written: several atomic_paths together stay all-or-nothing
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as err:
        raise _cannot_write(dest, err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the final file the permissions a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
        try:
            os.replace(tmp, dest)
        except OSError as err:
            raise _cannot_write(dest, err) from None
    finally:
        tmp.unlink(missing_ok=True)


def _cannot_write(dest: Path, err: OSError) -> OSError:
    # The raw error names the temporary file (or only the parent folder); the user needs the path they gave.
    return OSError(err.errno, err.strerror, str(dest))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], value: object) -> None:
    """`value` as indented JSON with a final newline, written atomically."""
    write_bytes_atomic(path, (json.dumps(value, indent=2) + "\n").encode())


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
