"""Atomic file writes and content hashes for export/: the one implementation lives in :mod:`models.files`."""

from __future__ import annotations

from models.files import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic

__all__ = ["atomic_path", "sha256_file", "write_bytes_atomic", "write_json_atomic"]
