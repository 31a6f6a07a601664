"""The arguments of a command as a documentation page shows it, so that a test runs what the docs say."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def documented_arguments(page: str, section: str, module: str) -> list[str]:
    """The arguments of the first `python -m MODULE ...` line in `section` of docs/`page`: from that heading
    to the next one of its level or above (its subsections are part of it; a `#` line in a code block is no
    heading)."""
    text = (ROOT / "docs" / page).read_text()
    assert section in text, f"docs/{page} lost its section {section!r}"
    level = len(section) - len(section.lstrip("#"))
    prefix = f"python -m {module} "
    fenced = False
    for line in text.split(section, 1)[1].splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        elif line.startswith(prefix):
            return shlex.split(line)[3:]
    raise AssertionError(f"docs/{page}'s section {section!r} shows no {prefix.strip()} command")
