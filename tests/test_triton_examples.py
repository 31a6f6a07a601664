"""Triton's own Python example clients, copied unchanged into tests/triton_example_clients/, pass against
resnet-serve (issue #23). lab/triton_examples/ builds the models they expect, starts the servers and runs
them; this test asserts each run's outcome. `python -m lab.triton_examples` prints the same as a table."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from lab.triton_examples.harness import CLIENTS, Result, namespace_available, run_all
from lab.triton_examples.runs import DEFAULT_PORTS, RUNS, Run

SOURCE = CLIENTS / "SOURCE.md"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[Run, Result]:
    return {r.run: r for r in run_all(tmp_path_factory.mktemp("triton-examples"))}


def _param(run: Run) -> object:
    marks = []
    if run.server == DEFAULT_PORTS and not namespace_available():
        marks.append(pytest.mark.skip(reason="needs `unshare -n` (root): the example dials ports 8000/8001"))
    return pytest.param(run, id=run.id, marks=marks)


@pytest.mark.parametrize("run", [_param(r) for r in RUNS])
def test_triton_example_client_passes_unchanged(run: Run, results: dict[Run, Result]) -> None:
    result = results[run]
    assert result.passed, f"{run.id} failed:\n{result.output}"


def test_example_clients_are_the_recorded_upstream_files() -> None:
    """Every script the runs use is in the copy, and the copy records where it came from (its commit)."""
    text = SOURCE.read_text()
    assert "22e11c47da3c7db34932e5de3b5b3c5cf05369c4" in text
    for run in RUNS:
        script = CLIENTS / run.script
        assert script.is_file(), script
        assert "NVIDIA CORPORATION" in script.read_text().splitlines()[1], f"{script}: license header missing"
    copied = {p.name for p in Path(CLIENTS).glob("*.py")}
    assert copied == {r.script for r in RUNS}, "copied examples that no run uses, or the reverse"
    recorded = dict(reversed(line.split()) for line in re.findall(r"^[0-9a-f]{64}  \S+\.py$", text, re.M))
    actual = {name: hashlib.sha256((CLIENTS / name).read_bytes()).hexdigest() for name in copied}
    assert recorded == actual, "an example differs from the upstream copy SOURCE.md records"
