"""Expands the `classify` command's arguments (files, folders, globs) into a list of image files."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

# What a folder walk picks up; files named explicitly are sent whatever their extension.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
_GLOB_CHARS = frozenset("*?[")
SHOWN = 3  # names a summary shows of each kind of skipped path


@dataclass(frozen=True)
class Input:
    """One thing to classify: a file to read, or an argument that matched nothing (with the reason)."""

    name: str
    problem: str = ""


@dataclass
class Expansion:
    """The inputs, and what the expansion left out: files of a walked folder that are not images by their
    extension, subfolders that could not be read ("path (reason)"), and paths met again (as first named)."""

    inputs: list[Input] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line saying what was skipped, with counts and the first few names ("" when nothing was)."""
        parts = [
            _counted(self.not_images, "file", "files", "without an image extension"),
            _counted(self.unreadable, "folder", "folders", "that cannot be read"),
            _counted(self.repeated, "path", "paths", "given more than once (classified once)"),
        ]
        said = [p for p in parts if p]
        return f"skipped {'; '.join(said)}" if said else ""


def _counted(names: list[str], one: str, many: str, what: str) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
    return f"{len(names)} {one if len(names) == 1 else many} {what}: {shown}"


def expand(arguments: list[str]) -> Expansion:
    """Files in argument order; folders are walked recursively in sorted order; globs are sorted. A path met
    more than once (named twice, or by overlapping folders and globs) is kept where it first appears.

    An argument that names nothing becomes one Input with a `problem`, so it is reported as a failure
    alongside the others rather than stopping the run.
    """
    found = Expansion()
    inputs: list[Input] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            files, top_error = _walk(path, found)
            if files:
                inputs += [Input(f) for f in files]
            elif top_error:
                inputs.append(Input(arg, f"the folder cannot be read ({top_error})"))
            else:
                inputs.append(Input(arg, "the folder holds no image files"))
        elif not path.exists() and _GLOB_CHARS & set(arg):
            matches = sorted(m for m in glob.glob(arg, recursive=True) if not Path(m).is_dir())
            inputs += [Input(m) for m in matches] or [Input(arg, "the pattern matches no files")]
        else:
            inputs.append(Input(arg))
    first: dict[str, Input] = {}  # by absolute path: "a.png", "./a.png" and "dir/../a.png" are one file
    for item in inputs:
        key = os.path.abspath(item.name)
        if key not in first:
            first[key] = item
            found.inputs.append(item)
        elif first[key].name not in found.repeated:
            found.repeated.append(first[key].name)
    found.not_images = _once(found.not_images)  # overlapping folders meet a file twice
    found.unreadable = _once(found.unreadable)
    return found


def _once(paths: list[str]) -> list[str]:
    first: dict[str, str] = {}
    for path in paths:
        first.setdefault(os.path.abspath(path), path)
    return list(first.values())


def _walk(folder: Path, found: Expansion) -> tuple[list[str], str]:
    """The image files under `folder`, and why `folder` itself cannot be read ("" when it can); skipped files
    and unreadable subfolders are added to `found`. Hidden files and folders are left out, unreported."""
    top_error = ""

    def unreadable(exc: OSError) -> None:
        nonlocal top_error
        reason = exc.strerror or str(exc)
        if os.path.abspath(exc.filename or folder) == os.path.abspath(folder):
            top_error = reason
        else:
            found.unreadable.append(f"{exc.filename} ({reason})")

    files: list[str] = []
    for root, dirs, names in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                files.append(os.path.join(root, name))
            else:
                found.not_images.append(os.path.join(root, name))
    return files, top_error
