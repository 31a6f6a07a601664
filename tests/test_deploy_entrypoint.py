"""The images' entrypoint (`resnet-serve entrypoint`) and health probe (`resnet-serve health`).

The engine cache is tested with a stand-in builder (TensorRT needs a GPU); the last tests run the CPU image's
ENTRYPOINT, ENV and HEALTHCHECK, read from the Dockerfile, in a fresh venv that has the wheel installed with
the image's extras, as the container would run them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfiles import DOCKERFILES, env, exec_form, healthcheck, installed_extras, stages
from support.tiny_model import write_tiny_onnx
from test_wheel_install import Installed, installed

from resnet_serve.cli.main import main
from resnet_serve.export import engine_cache
from resnet_serve.export.package import package
from resnet_serve.formats.repository import read_repository
from resnet_serve.formats.sidecar import EngineSidecar, sidecar_path
from resnet_serve.server.launch import free_port, stop

__all__ = ["installed"]  # the fixture, imported so pytest finds it
NODE = engine_cache.NodeGpu("11.4.0.106", "9.0", "NVIDIA H100")


def _repository(tmp: Path) -> Path:
    repo = tmp / "model_repository"
    package(write_tiny_onnx(tmp / "tiny.onnx"), repo, "tiny")
    package(write_tiny_onnx(tmp / "tiny2.onnx", seed=1), repo, "tiny")
    return repo


class FakeBuilder:
    """Writes what `resnet-serve build-engine` writes: an engine and its sidecar."""

    def __init__(self) -> None:
        self.jobs: list[engine_cache.EngineJob] = []

    def __call__(self, job: engine_cache.EngineJob) -> None:
        self.jobs.append(job)
        data = f"engine of {job.onnx} at {job.precision}".encode()
        job.engine.write_bytes(data)
        sidecar = EngineSidecar(
            tensorrt_version=NODE.tensorrt_version,
            gpu_name=NODE.gpu_name,
            compute_capability=NODE.compute_capability,
            precision="fp32" if job.precision == "auto" else job.precision,
            input_name="input",
            profile={"min": [job.profile.min, 1, 8, 8], "max": [job.profile.max, 1, 8, 8]},
            engine_sha256=hashlib.sha256(data).hexdigest(),
            source_sha256=hashlib.sha256(job.onnx.read_bytes()).hexdigest(),
        )
        sidecar_path(job.engine).write_text(sidecar.to_json())
        job.timing_cache.write_bytes(b"timings")


def test_engines_are_built_once_per_node_and_served_from_a_derived_repository(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    builder = FakeBuilder()
    root, built = engine_cache.prepare(repo, tmp_path / "engines", NODE, builder)

    assert root == tmp_path / "engines" / "trt11.4.0.106-sm90"
    (job,) = built
    assert (job.model, job.version) == ("tiny", 2)  # the latest version only
    assert (job.profile.min, job.profile.opt, job.profile.max) == (1, 32, 32)  # from config.json
    assert job.timing_cache == root / "timing.cache"
    (model,) = read_repository(root)
    assert (model.backend, model.platform) == ("tensorrt", "tensorrt_plan")
    assert [(v.version, v.file) for v in model.versions] == [(2, "model.plan")]
    assert model.labels == read_repository(repo)[0].labels
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before, "the source is only read"

    # A restart on the same node reuses the engine; another GPU architecture gets its own.
    assert engine_cache.prepare(repo, tmp_path / "engines", NODE, builder)[1] == []
    other = engine_cache.NodeGpu("11.4.0.106", "8.0", "NVIDIA A100")
    other_root, rebuilt = engine_cache.prepare(repo, tmp_path / "engines", other, builder)
    assert other_root.name == "trt11.4.0.106-sm80" and len(rebuilt) == 1
    # Another precision, or a new version of the model, is built again.
    assert len(engine_cache.prepare(repo, tmp_path / "engines", NODE, builder, "fp16")[1]) == 1
    package(write_tiny_onnx(tmp_path / "tiny3.onnx", seed=2), repo, "tiny")
    (job3,) = engine_cache.prepare(repo, tmp_path / "engines", NODE, builder)[1]
    assert job3.version == 3


def test_a_model_whose_latest_version_is_not_onnx_is_served_as_it_is(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    config_path = repo / "tiny" / "config.json"
    config = json.loads(config_path.read_text())
    config["versions"][-1]["file"] = "model.plan"  # a prebuilt engine, as version 2
    config_path.write_text(json.dumps(config))
    (repo / "tiny" / "2" / "model.plan").write_bytes(b"prebuilt")
    root, built = engine_cache.prepare(repo, tmp_path / "engines", NODE, FakeBuilder())
    assert built == []
    link = root / "tiny" / "2" / "model.plan"
    assert link.is_symlink() and link.read_bytes() == b"prebuilt"
    (model,) = read_repository(root)
    assert model.backend == "onnxruntime" and [v.file for v in model.versions] == ["model.plan"]


def test_an_engine_whose_sidecar_no_longer_matches_is_rebuilt(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    root, _ = engine_cache.prepare(repo, tmp_path / "engines", NODE, FakeBuilder())
    (root / "tiny" / "2" / "model.plan").write_bytes(b"truncated")
    assert len(engine_cache.prepare(repo, tmp_path / "engines", NODE, FakeBuilder())[1]) == 1


def test_build_engines_without_tensorrt_logs_why_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _repository(tmp_path)
    argv = ["entrypoint", "--build-engines", "--model-repository", str(repo)]
    rc = main([*argv, "--engine-cache", str(tmp_path / "engines")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot build TensorRT engines" in err and "TensorRT is not installed" in err


def test_build_engines_needs_a_model_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    rc = main(["entrypoint", "--build-engines", "--model", f"tiny={model}"])
    assert rc == 2
    assert "--build-engines needs --model-repository" in capsys.readouterr().err


BUILD_FOREVER = """
import subprocess, sys
from resnet_serve.cli.main import main
from resnet_serve.export import engine_cache

engine_cache.node_gpu = lambda device=0: engine_cache.NodeGpu("11.4.0.106", "9.0", "stand-in")
real_run = subprocess.run
# The build: a child that says it started, then takes a minute (a ResNet-50 engine takes minutes).
child = [sys.executable, "-c", "import time; print('child building', flush=True); time.sleep(60)"]
subprocess.run = lambda command, check=False: real_run(child, check=check)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_during_the_engine_build_stops_the_build_and_the_container_at_once(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    argv = ["entrypoint", "--build-engines", "--model-repository", str(repo)]
    process = subprocess.Popen(
        [sys.executable, "-c", BUILD_FOREVER, *argv, "--engine-cache", str(tmp_path / "engines")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(DOCKERFILES["Dockerfile"].parent)},
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "child building" in line:
            break
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    rc = process.wait(timeout=20)
    rest = process.stdout.read()
    assert rc == 128 + signal.SIGTERM, "".join(lines) + rest
    assert time.monotonic() - started < 10  # not the minute the build would have taken
    assert "received SIGTERM while building engines" in rest


def test_health_says_unavailable_when_no_server_answers(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["health", "--server", f"127.0.0.1:{free_port()}", "--timeout", "1"])
    assert rc == 1
    assert capsys.readouterr().out.startswith("UNAVAILABLE: health check of 127.0.0.1:")


# ----------------------------------------------------------------- the images' entrypoints, in a fresh venv


@dataclass(frozen=True)
class ImageRun:
    """What an image runs, translated to the venv: its entrypoint, health probe, environment and extras."""

    entrypoint: list[str]
    probe: list[str]
    env: dict[str, str]
    extras: set[str]


def _as_the_image_runs(installed: Installed, dockerfile: Path, volumes: dict[str, Path]) -> ImageRun:
    """The runtime stage's ENTRYPOINT, HEALTHCHECK and ENV, with the volumes mounted at tmp paths and the
    ports moved off the fixed ones (other tests share this machine): what `docker run -e -v` would do."""
    runtime = stages(dockerfile)[-1]
    image_env = env(runtime)
    for key, value in list(image_env.items()):
        if value in volumes:
            image_env[key] = str(volumes[value])
    image_env.pop("PATH", None)  # the image's venv is this venv (installed.env's PATH)
    ports = {f"RESNET_SERVE_{p}_PORT": str(free_port()) for p in ("GRPC", "METRICS", "HTTP")}

    def argv(command: list[str]) -> list[str]:
        assert command[0] == "resnet-serve"  # on the image's PATH, as it is on the venv's
        return [installed.script, *command[1:]]

    return ImageRun(
        argv(exec_form(runtime.last("ENTRYPOINT"))),
        argv(healthcheck(runtime)),
        {**installed.env, **image_env, **ports, "RESNET_SERVE_HOST": "127.0.0.1"},
        installed_extras(runtime),
    )


@pytest.mark.slow
def test_the_cpu_images_entrypoint_serves_passes_its_healthcheck_and_drains_on_sigterm(
    installed: Installed, tmp_path: Path
) -> None:
    image = _as_the_image_runs(installed, DOCKERFILES["Dockerfile"], {"/models": _repository(tmp_path)})
    assert image.extras == {"serve"}  # the extras the venv's wheel was installed with
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            image.entrypoint, cwd=installed.project, env=image.env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(image.probe, env=image.env, capture_output=True, text=True, timeout=30)
            if done.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.5)
        assert done.returncode == 0, done.stdout + done.stderr + log.read_text()
        assert done.stdout.strip() == "SERVING"
        assert '"msg": "ready: grpc=127.0.0.1:' in log.read_text()  # RESNET_SERVE_LOG_FORMAT=json
    finally:
        rc = stop(server, 30)
    assert rc == 0, log.read_text()  # SIGTERM reached the server, which drained and exited cleanly
    assert "draining" in log.read_text()


@pytest.mark.slow
def test_the_gpu_images_entrypoint_on_a_node_without_tensorrt_exits_with_the_reason(
    installed: Installed, tmp_path: Path
) -> None:
    volumes = {"/models": _repository(tmp_path), "/engines": tmp_path / "engines"}
    image = _as_the_image_runs(installed, DOCKERFILES["Dockerfile.gpu"], volumes)
    assert image.env["RESNET_SERVE_BUILD_ENGINES"] == "true"
    done = subprocess.run(
        image.entrypoint, cwd=installed.project, env=image.env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot build TensorRT engines" in done.stderr and "TensorRT is not installed" in done.stderr
    assert not list(volumes["/engines"].rglob("*.plan"))
