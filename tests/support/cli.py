"""How a command's failure must look to its user."""

from __future__ import annotations

from pathlib import Path

import pytest


def assert_one_line_error(capsys: pytest.CaptureFixture[str], rc: int, out: Path, needle: str) -> None:
    """A command failed the way users should see failures: non-zero exit, one line on stderr naming the
    problem, and no output file (nor a temporary one) left behind."""
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert needle in err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))
