"""The checkout's files as git would commit them, copied elsewhere: the source a wheel is built from."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tracked_files() -> list[str]:
    """Paths relative to the root: tracked files plus new files git does not ignore (not build/ or .egg-info
    left by an earlier build), without the ones deleted in the working tree and not yet committed."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    paths = filter(None, listed.split("\0"))
    return [rel for rel in paths if (REPO / rel).exists() or (REPO / rel).is_symlink()]


def checkout_copy(dest: Path, symlinks: bool = True) -> Path:
    """Copy the files of `tracked_files` to `dest`. With `symlinks=False` a link becomes what a clone with
    `git -c core.symlinks=false` checks out: a small file holding the link's target."""
    for rel in tracked_files():
        src, target = REPO / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            if symlinks:
                target.symlink_to(os.readlink(src))
            else:
                target.write_text(os.readlink(src))
        else:
            shutil.copy2(src, target)
    return dest
