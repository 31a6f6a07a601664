"""Expands the `classify` command's arguments (files, folders, globs) into a list of image files."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

# What a folder walk picks up; files named explicitly are sent whatever their extension.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Input:
    """One thing to classify: a file to read, or an argument that matched nothing (with the reason)."""

    name: str
    problem: str = ""


def expand(arguments: list[str]) -> list[Input]:
    """Files in argument order; folders are walked recursively in sorted order; globs are sorted.

    An argument that names nothing becomes one Input with a `problem`, so it is reported as a failure
    alongside the others rather than stopping the run.
    """
    found: list[Input] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            files = _walk(path)
            found += [Input(f) for f in files] or [Input(arg, "the folder holds no image files")]
        elif not path.exists() and _GLOB_CHARS & set(arg):
            matches = sorted(m for m in glob.glob(arg, recursive=True) if not Path(m).is_dir())
            found += [Input(m) for m in matches] or [Input(arg, "the pattern matches no files")]
        else:
            found.append(Input(arg))
    return found


def _walk(folder: Path) -> list[str]:
    files: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [
            os.path.join(root, n)
            for n in sorted(names)
            if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES
        ]
    return files
