"""A POSIX (system) shared-memory region a client registered: the client's `shm_open` object, mapped once.

Triton clients (`tritonclient.utils.shared_memory`) create a region with `shm_open(key)` and register its key,
an offset and a byte size. On Linux `shm_open(key)` is the file `/dev/shm/<key without its leading slash>`
(glibc's implementation), so the server opens that file and maps it with the standard library's `mmap`.

Why not `multiprocessing.shared_memory.SharedMemory(name)`: before Python 3.13 (no `track=False`) opening an
existing segment registers it with the resource tracker, which *unlinks the client's segment* when the server
exits and warns about a "leak" it does not own; and `SharedMemory` offers nothing beyond `shm_open` + `mmap`.
Opening the file directly also lets us refuse symlinks (`O_NOFOLLOW`) and anything but a regular file.

The mapping covers the object from byte 0 to `offset + byte_size` (mmap offsets must be page-aligned; the
region's own offset need not be). The file descriptor stays open so that every use re-checks the object's
size: a client that shrinks the object under a registered region would otherwise make the server's next read
a SIGBUS, which kills the process.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import weakref
from pathlib import Path
from typing import Final

import grpc

from resnet_serve.server.errors import ServeError, invalid_argument, not_found

log = logging.getLogger(__name__)

SHM_DIR: Final = Path("/dev/shm")
_NAME_MAX: Final = 255


def key_path(key: str, root: Path = SHM_DIR) -> Path:
    """The file that `shm_open(key)` opens: one name under /dev/shm, optional leading slashes (as glibc)."""
    name = key.lstrip("/")
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > _NAME_MAX:
        raise invalid_argument(
            f"shared memory key {key!r} is not a valid shm_open name: one name of at most {_NAME_MAX} "
            "characters with an optional leading '/', like '/input_simple'"
        )
    return root / name


class SystemRegion:
    """`byte_size` bytes at `offset` of the shared-memory object `key`; read and written by region offset."""

    kind: Final = "system"

    def __init__(self, name: str, key: str, offset: int, byte_size: int, root: Path = SHM_DIR) -> None:
        if offset < 0 or byte_size <= 0:
            raise invalid_argument(
                f"shared memory region '{name}': byte_size must be positive and offset non-negative, "
                f"got offset {offset}, byte_size {byte_size}"
            )
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self._end = offset + byte_size
        path = key_path(key, root)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise not_found(f"shared memory key {key!r} does not exist (no {path})") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise invalid_argument(f"shared memory key {key!r} is a symbolic link; refused") from None
            raise invalid_argument(
                f"shared memory key {key!r} cannot be opened for reading and writing: {exc.strerror}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise invalid_argument(f"shared memory key {key!r} is not a shared-memory object")
            self._check_size(info.st_size)
            mapped = mmap.mmap(fd, self._end)
        except BaseException:
            os.close(fd)
            raise
        self._mmap = mapped
        self._fd = fd
        # Unmapped by `close()`, or when the last reference goes: an unregistered region that a request in
        # flight still holds stays mapped until that request is done with it.
        self._release = weakref.finalize(self, _unmap, name, mapped, fd)

    def _check_size(self, size: int) -> None:
        if self._end > size:
            raise invalid_argument(
                f"shared memory region '{self.name}': offset {self.offset} + byte_size {self.byte_size} runs "
                f"past the end of key {self.key!r} ({size} bytes)"
            )

    def _mapping(self) -> mmap.mmap:
        if not self._release.alive:
            raise ServeError(grpc.StatusCode.UNAVAILABLE, f"shared memory region '{self.name}' was released")
        self._check_size(os.fstat(self._fd).st_size)  # shrunk since registration: refuse, never SIGBUS
        return self._mmap

    def view(self, offset: int, nbytes: int) -> memoryview:
        """The region's bytes [offset, offset + nbytes) without a copy (bounds checked by the registry)."""
        start = self.offset + offset
        return memoryview(self._mapping())[start : start + nbytes]

    def write(self, offset: int, data: memoryview) -> None:
        """Copy `data` into the region at `offset` (bounds checked by the registry)."""
        start = self.offset + offset
        self._mapping()[start : start + data.nbytes] = data

    @property
    def mapped(self) -> bool:
        return bool(self._release.alive)

    def close(self) -> None:
        """Unmap and close now (server shutdown)."""
        self._release()


def _unmap(name: str, mapped: mmap.mmap, fd: int) -> None:
    # A NumPy view still alive keeps the pages: mmap refuses to close under an exported buffer, and unmaps
    # itself when the last view is freed. Either way nothing can touch unmapped memory.
    try:
        mapped.close()
    except BufferError:
        log.debug("shared memory region '%s' unmaps when its last view is freed", name)
    os.close(fd)
