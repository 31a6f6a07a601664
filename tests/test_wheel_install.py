"""The wheel, installed as a user installs it: one top-level name, and it works inside someone else's project.

A wheel is built from the checkout's files, installed with the `[serve]` extra into a fresh venv (PyPI, the
versions of constraints.txt, pip's cache reused), and everything runs with a user's project as the working
directory: a project that has its own `client/`, `server/`, `models/` and `cli/` packages, which would shadow
ours if anything we ship or spawn used a generic top-level name. Those folders raise when imported, so a
shadowing shows up as a failure instead of a silent mix-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from support.checkout import REPO, checkout_copy
from support.tiny_model import TINY_LABELS, TINY_PREPROCESS, write_tiny_onnx

from resnet_serve.formats.preprocess import eval_pixels, normalize_array
from resnet_serve.server.launch import stop, wait_ready

pytestmark = pytest.mark.slow

SHADOWS = ("client", "server", "models", "cli")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    project: Path  # the user's project: the working directory of every command
    env: dict[str, str]
    seconds: dict[str, float]

    def run(self, *argv: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=timeout_s
        )

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def script(self) -> str:
        return str(self.venv / "bin" / "resnet-serve")


def _timed(seconds: dict[str, float], step: str, argv: list[str]) -> None:
    start = time.monotonic()
    # Without PYTHONPATH: a checkout on it (with the .egg-info an editable install leaves there) would make
    # pip find resnet-serve "already installed" and skip the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds[step] = time.monotonic() - start
    assert done.returncode == 0, f"{step} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    seconds: dict[str, float] = {}
    base = tmp_path_factory.mktemp("wheel")
    source = checkout_copy(base / "source")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _timed(seconds, "build", [*pip, "wheel", "--no-deps", "--quiet", "-w", str(base / "dist"), str(source)])
    (wheel,) = (base / "dist").glob("resnet_serve-*.whl")

    # No pip inside the venv (ensurepip costs seconds): this pip installs into it with --python.
    venv = base / "venv"
    _timed(seconds, "venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python, constraints = str(venv / "bin" / "python"), str(REPO / "constraints.txt")
    install = [*pip, "--python", python, "install", "--quiet", "-c", constraints, f"{wheel}[serve]"]
    _timed(seconds, "install", install)

    project = base / "project"
    for name in SHADOWS:
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(
            f"raise ImportError('the project\\'s own {name}/ was imported, not resnet_serve.{name}')\n"
        )
    # Only the venv: neither the checkout (PYTHONPATH, which the tests' own runs set) nor the test's venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    yield Installed(wheel, venv, project, env, seconds)
    print("wheel install timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


def test_wheel_installs_one_top_level_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        tops = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1, tops
    assert tops - dist_info == {"resnet_serve"}, tops


def test_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    done = installed.run(installed.python, "-c", "import resnet_serve.server.app as m; print(m.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(installed.venv), done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ("{script}", "--help"),
        ("{python}", "-m", "resnet_serve", "serve", "--help"),
        ("{python}", "-c", "from resnet_serve.client import Client; print(Client.__module__)"),
    ],
)
def test_entry_points_work_inside_a_project_with_generic_folders(
    installed: Installed, argv: tuple[str]
) -> None:
    done = installed.run(*(a.format(script=installed.script, python=installed.python) for a in argv))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip(), "nothing printed"


def _expected_label(model: Path, image: Image.Image) -> str:
    """What the server must answer: the contract's preprocessing and a bare ONNX Runtime session."""
    x = normalize_array(eval_pixels(image, TINY_PREPROCESS)[None], TINY_PREPROCESS)
    logits = ort.InferenceSession(str(model)).run(None, {"input": x})[0][0]
    return TINY_LABELS[int(np.argmax(logits))]


def test_serve_then_classify_round_trip(installed: Installed) -> None:
    model = write_tiny_onnx(installed.project / "models" / "tiny.onnx")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8), mode="L")
    image.save(installed.project / "digit.png")

    start = time.monotonic()
    ready_file, log = installed.project / "ready.json", installed.project / "server.log"
    serve = ["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]
    with log.open("w") as out:
        server = subprocess.Popen(
            [installed.script, *serve, "--model", f"tiny={model}", "--ready-file", str(ready_file)],
            cwd=installed.project,
            env=installed.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = wait_ready(server, ready_file, 60, log=log)
        classify = ["classify", "--server", ready.grpc_target, "--format", "json", "--top-k", "1"]
        done = installed.run(installed.script, *classify, "digit.png")
        assert done.returncode == 0, done.stdout + done.stderr
        (record,) = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        assert record["predictions"][0]["label"] == _expected_label(model, image), record
    finally:
        rc = stop(server, 30)
    installed.seconds["serve+classify"] = time.monotonic() - start
    assert rc == 0, log.read_text()
