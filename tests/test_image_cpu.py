"""The CPU image, built by `make image-test` (scripts/image_test.sh), run in a real Docker engine and checked
as an operator would: health, classification over both protocols with the demo's accuracy, metrics, non-root
on a read-only root file system, a drain under load, the one-line refusal of an empty repository, what the
image holds, docker-compose's cpu profile, and that a broken image fails these very checks.

Marked `docker`: deselected unless pytest gets --docker, so `make test` never needs an engine. Every container
carries the label `resnet-serve-image-test` (the script removes any a failure leaves), publishes its ports on
127.0.0.1 only, at ports Docker picks, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_drain import start_load

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("IMAGE_TEST_IMAGE", "resnet-serve:cpu")
WORK = Path(os.environ.get("IMAGE_TEST_WORK", "/var/tmp/resnet-serve-image-test"))
LABEL = "resnet-serve-image-test"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
GRACE_S = 30  # docker stop -t, as compose's stop_grace_period: longer than the server's 15 s drain
HEALTHY_WITHIN_S = 120.0  # the image's HEALTHCHECK: first probe after 10 s, start period 60 s


def docker(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def report(line: str) -> None:
    """A figure or finding for the script's closing summary (WORK/report.txt) and pytest's -s output."""
    print(line)
    WORK.mkdir(parents=True, exist_ok=True)
    with (WORK / "report.txt").open("a") as out:
        out.write(line + "\n")


@dataclass
class Container:
    id: str

    def inspect(self) -> dict[str, Any]:
        value: list[dict[str, Any]] = json.loads(docker("inspect", self.id).stdout)
        return value[0]

    def port(self, name: str) -> int:
        """The host port Docker picked for the container's `name` port (bound on 127.0.0.1 only)."""
        (binding,) = self.inspect()["NetworkSettings"]["Ports"][f"{PORTS[name]}/tcp"]
        assert binding["HostIp"] == "127.0.0.1", binding
        return int(binding["HostPort"])

    def url(self, name: str) -> str:
        return f"127.0.0.1:{self.port(name)}"

    def logs(self) -> str:
        done = docker("logs", self.id, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        docker("rm", "-f", self.id, check=False)


def run_container(image: str, *options: str) -> Container:
    """`docker run -d` with every port published on 127.0.0.1 at a free port of Docker's choosing."""
    publish = [f"--publish=127.0.0.1::{port}" for port in PORTS.values()]
    done = docker("run", "-d", f"--label={LABEL}", *publish, *options, image)
    return Container(done.stdout.strip())


def wait_healthy(container: Container, timeout_s: float = HEALTHY_WITHIN_S) -> None:
    """Until the image's own HEALTHCHECK reports `healthy`; an AssertionError if the container exits first,
    the image has no health check, or it is still not healthy after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = container.inspect()["State"]
        health = state.get("Health")
        assert health is not None, "the image has no HEALTHCHECK (an OCI-format build drops it)"
        if health["Status"] == "healthy":
            return
        assert state["Running"], f"the container exited ({state['ExitCode']}): {container.logs()[-2000:]}"
        assert time.monotonic() < deadline, f"not healthy after {timeout_s:.0f} s: {health}"
        time.sleep(1.0)


def assert_runs_as_non_root(container: Container) -> None:
    """PID 1 (the server) runs with a non-zero uid, and the root file system is read-only."""
    status = docker("exec", container.id, "cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
    assert uids is not None, status
    assert uids.group(1) != "0" and uids.group(2) != "0", f"PID 1 runs as root: {uids.group(0)}"
    assert container.inspect()["HostConfig"]["ReadonlyRootfs"], "not started with --read-only"
    # An operator's sanity check: nothing writes outside /tmp (a tmpfs), not even the server's own home.
    for path in ("/x", "/home/resnet/x", "/models/x"):
        wrote = docker("exec", container.id, "touch", path, check=False)
        assert wrote.returncode != 0, f"{path} is writable"
    docker("exec", container.id, "touch", "/tmp/x")


def build_variant(name: str, dockerfile: str) -> str:
    """An image FROM the one under test with the instructions in `dockerfile` on top (a broken variant)."""
    tag = f"{IMAGE.split(':')[0]}-broken:{name}"
    done = subprocess.run(
        ["docker", "build", "-q", "-t", tag, "-"],
        input=f"FROM {IMAGE}\n{dockerfile}\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return tag


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass
class Digits:
    repository: Path
    files: list[tuple[Path, int]]
    demo_correct: int


@pytest.fixture(scope="module")
def digits() -> Digits:
    """`make demo`'s model and held-out digits: the demo trains (12 epochs, about a minute on 2 cores, once:
    it reuses artifacts/digits/ when it exists), exports, serves and classifies them; its accuracy is the one
    the container must match. The ONNX model is then packaged as the README does, into a repository."""
    workdir = ROOT / "artifacts" / "digits"
    done = subprocess.run(
        [sys.executable, "-m", "resnet_serve", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = re.search(r"Accuracy through the server\s*:\s*[\d.]+ %\s*\((\d+)/(\d+), 0 errors\)", done.stdout)
    assert found is not None, done.stdout[-3000:]
    files = sorted(
        (path, int(path.parent.name))
        for path in (workdir / "heldout").glob("*/*.png")
        if "tmp" not in path.name
    )
    assert len(files) == int(found.group(2)), "the demo classified exactly these files"
    repository = WORK / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    package = [sys.executable, "-m", "resnet_serve", "package", str(workdir / "model.onnx")]
    packaged = subprocess.run(
        [*package, "--repo", str(repository), "--name", "digits"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert packaged.returncode == 0, packaged.stderr
    report(f"demo accuracy (host, gRPC image API): {found.group(1)}/{found.group(2)}")
    return Digits(repository, files, int(found.group(1)))


def hardened(repository: Path) -> tuple[str, ...]:
    """How an operator runs it: the repository read-only, a read-only root with a tmpfs /tmp, no
    capabilities, no privilege escalation."""
    return (
        f"--volume={repository}:/models:ro",
        "--read-only",
        "--tmpfs=/tmp",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    )


@contextmanager
def healthy_container(image: str, *options: str) -> Iterator[Container]:
    """A container of `image`, healthy (or an AssertionError saying why not), removed on the way out."""
    container = run_container(image, *options)
    try:
        wait_healthy(container)
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="module")
def served(digits: Digits) -> Iterator[Container]:
    started = time.monotonic()
    with healthy_container(IMAGE, *hardened(digits.repository)) as container:
        report(f"healthy {time.monotonic() - started:.1f} s after docker run")
        yield container


# ---------------------------------------------------------------------------------------------------- tests


def test_the_health_check_reports_healthy_and_the_image_keeps_its_declared_interface(
    served: Container,
) -> None:
    info = served.inspect()
    assert info["State"]["Health"]["Status"] == "healthy"
    config = info["Config"]
    assert config["Healthcheck"]["Test"][:3] == ["CMD", "resnet-serve", "health"]
    assert config["Entrypoint"] == ["resnet-serve", "entrypoint"]
    assert config["User"] not in ("", "0", "root")
    assert {"8000/tcp", "8001/tcp", "8002/tcp"} <= set(config["ExposedPorts"])


def _classify(infer: Any, files: list[tuple[Path, int]], protocol: str) -> int:
    """How many of `files` come back with their label as the top class, through Triton's classification
    extension (class_count=1 answers "score:index:label"), 8 PNG files a request (BYTES, decoded by the
    server with the model's own preprocessing, as the demo's Classify calls are)."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc  # type: ignore[no-redef]
    meta = infer.get_model_metadata("digits")
    inputs, outputs = (
        (meta["inputs"], meta["outputs"]) if isinstance(meta, dict) else (meta.inputs, meta.outputs)
    )
    input_name = inputs[0]["name"] if isinstance(inputs[0], dict) else inputs[0].name
    output_name = outputs[0]["name"] if isinstance(outputs[0], dict) else outputs[0].name

    def batch(chunk: list[tuple[Path, int]]) -> int:
        tensor = tc.InferInput(input_name, [len(chunk)], "BYTES")
        tensor.set_data_from_numpy(np.array([path.read_bytes() for path, _ in chunk], dtype=np.object_))
        wanted = [tc.InferRequestedOutput(output_name, class_count=1)]
        result = infer.infer("digits", [tensor], outputs=wanted).as_numpy(output_name)
        tops = [entry.decode() if isinstance(entry, bytes) else str(entry) for entry in result.reshape(-1)]
        return sum(int(top.split(":")[2]) == label for top, (_, label) in zip(tops, chunk, strict=True))

    # One request at a time: tritonclient.http runs on gevent, which cannot be shared across threads.
    return sum(batch(files[i : i + 8]) for i in range(0, len(files), 8))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritonclient_classifies_the_held_out_digits_as_accurately_as_the_demo(
    served: Container, digits: Digits, protocol: str
) -> None:
    if protocol == "grpc":
        import tritonclient.grpc as grpcclient

        client: Any = grpcclient.InferenceServerClient(served.url("grpc"))
    else:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(served.url("http"), network_timeout=60.0)
    try:
        assert client.is_server_ready() and client.is_model_ready("digits")
        correct = _classify(client, digits.files, protocol)
    finally:
        client.close()
    report(f"container accuracy over {protocol}: {correct}/{len(digits.files)}")
    assert correct == digits.demo_correct, (
        f"{correct} right in the container, {digits.demo_correct} in the demo"
    )


def test_metrics_answer_with_the_served_requests(served: Container, digits: Digits) -> None:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(served.url("http")) as client:
        tensor = httpclient.InferInput("input", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([digits.files[0][0].read_bytes()], dtype=np.object_))
        client.infer("digits", [tensor])
    with urllib.request.urlopen(f"http://{served.url('metrics')}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    success = [line for line in text.splitlines() if line.startswith("nv_inference_request_success{")]
    assert any('model="digits"' in line and float(line.split()[-1]) >= 1 for line in success), success
    assert "resnet_serve_requests_total" in text


def test_the_server_runs_as_non_root_on_a_read_only_root(served: Container) -> None:
    assert_runs_as_non_root(served)


@pytest.mark.parametrize(
    ("case", "options"),
    [
        ("no volume", ()),
        ("an empty volume", ("--volume={empty}:/models:ro",)),
        ("a missing repository", ("--env=RESNET_SERVE_MODEL_REPOSITORY=/models/missing",)),
    ],
)
def test_without_models_the_container_exits_non_zero_with_one_line(
    case: str, options: tuple[str, ...]
) -> None:
    empty = WORK / "empty_repository"
    empty.mkdir(parents=True, exist_ok=True)
    container = run_container(IMAGE, "--read-only", "--tmpfs=/tmp", *(o.format(empty=empty) for o in options))
    try:
        done = docker("wait", container.id, timeout=60)
        code = int(done.stdout.strip())
        lines = [line for line in container.logs().splitlines() if line.strip()]
    finally:
        container.remove()
    assert code != 0, f"{case}: exit status 0"
    assert len(lines) == 1, f"{case}: {lines}"
    assert "cannot start: model repository /models" in lines[0], lines[0]


def test_sigterm_under_load_loses_no_accepted_request_and_exits_zero_within_the_grace_period(
    digits: Digits,
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    # DEBUG turns on the access log: one JSON line per request the server finished, with its outcome.
    container = run_container(IMAGE, *hardened(digits.repository), "--env=RESNET_SERVE_LOG_LEVEL=debug")
    threads: list[threading.Thread] = []
    codes: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    try:
        wait_healthy(container)
        target = container.url("grpc")
        images = [path.read_bytes() for path, _ in digits.files[:8]]

        def sender() -> None:
            client = grpcclient.InferenceServerClient(target)
            tensor = grpcclient.InferInput("input", [len(images)], "BYTES")
            tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
            try:
                while not stop.is_set():
                    try:
                        client.infer("digits", [tensor], client_timeout=30)
                        code, message = "OK", ""
                    except InferenceServerException as exc:
                        code, message = str(exc.status()).removeprefix("StatusCode."), str(exc.message())
                    with lock:
                        codes[code] += 1
                        messages[f"{code}: {message[:100]}"] += 1
                    if code != "OK":
                        time.sleep(0.05)
            finally:
                client.close()

        threads += [threading.Thread(target=sender, daemon=True) for _ in range(8)]
        start_load(threads, codes, answers=100, within_s=60)
        before = codes["OK"]
        started = time.monotonic()
        docker("stop", f"--time={GRACE_S}", container.id, timeout=GRACE_S + 30)
        took = time.monotonic() - started
        time.sleep(1.0)  # a few rounds against the stopped container: refused, never hung
        stop.set()
        for thread in threads:
            thread.join(40)
        state = container.inspect()["State"]
        log = container.logs()
    finally:
        stop.set()
        container.remove()
    assert not any(thread.is_alive() for thread in threads), "a request was never answered"
    report(
        f"docker stop under load: exit {state['ExitCode']} after {took:.1f} s; "
        f"{codes['OK']} answered ({codes['OK'] - before} after the signal began), outcomes {dict(messages)}"
    )
    stray = [line for line in log.splitlines() if line.strip() and not line.startswith("{")]
    if stray:
        report(f"non-JSON lines in the container's log at stop: {stray}")
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    served = Counter(r["outcome"] for r in records if r.get("logger") == "resnet_serve.access")
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    # Well inside the server's own 15 s grace period, so its drain ended because nothing accepted was still
    # in flight (not at the deadline), and Docker never had to SIGKILL it (exit status 137).
    assert took < GRACE_S / 2, f"docker stop took {took:.1f} s: the drain ran into its grace period"
    # Every request the server finished reached its client: as many answers as the server logged successes,
    # as many refusals as it logged refused.
    # The rest were refused with UNAVAILABLE (draining; in transit when the drain closed the connection, or
    # the port closed), which clients retry; CANCELLED, DEADLINE_EXCEEDED or INTERNAL would be a request lost.
    refused = sum(n for message, n in messages.items() if "shutting down" in message)
    assert served["success"] == codes["OK"], f"server logged {dict(served)}, clients got {dict(messages)}"
    assert served["unavailable"] == refused, f"server logged {dict(served)}, clients got {dict(messages)}"
    assert set(served) <= {"success", "unavailable"}, dict(served)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, dict(messages)


def test_the_image_holds_no_compiler_no_torch_and_no_tests() -> None:
    def inside(*argv: str) -> str:
        done = docker("run", "--rm", f"--label={LABEL}", "--entrypoint", argv[0], IMAGE, *argv[1:])
        return done.stdout.strip()

    compilers = inside("sh", "-c", "for c in gcc cc c++ g++ clang ld as make; do command -v $c || true; done")
    assert compilers == "", f"a compiler in the image: {compilers}"
    probe = "import importlib.util as u; print([m for m in ('torch', 'torchvision') if u.find_spec(m)])"
    assert inside("python", "-c", probe) == "[]", "torch in the serving image"
    package = inside("python", "-c", "import resnet_serve, os; print(os.path.dirname(resnet_serve.__file__))")
    ours = inside(
        "sh", "-c", f"find {package} /src /home -name 'test_*.py' -o -name conftest.py 2>/dev/null; true"
    )
    assert ours == "", f"the project's tests in the image: {ours}"
    assert inside("sh", "-c", "test -e /src && echo /src || true") == "", "the builder's sources were copied"
    size, base = (
        int(docker("image", "inspect", "--format", "{{.Size}}", name).stdout)
        for name in (IMAGE, os.environ.get("IMAGE_TEST_BASE", IMAGE))
    )
    report(f"image {IMAGE}: {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB over its base)")


@pytest.mark.parametrize(
    ("variant", "dockerfile", "failure"),
    [
        ("root", "USER root", "PID 1 runs as root"),
        ("no-entrypoint", "ENTRYPOINT []", "(?i)no command specified"),
    ],
)
def test_a_broken_image_fails_these_checks(
    digits: Digits, variant: str, dockerfile: str, failure: str
) -> None:
    """The checks above, run against a variant of the image with one thing broken, must fail, and say why."""
    tag = build_variant(variant, dockerfile)
    try:
        with (
            pytest.raises(AssertionError, match=failure),
            healthy_container(tag, *hardened(digits.repository)) as container,
        ):
            assert_runs_as_non_root(container)
    finally:
        docker("rmi", "-f", tag, check=False)


def test_docker_compose_cpu_profile_serves_the_repository_healthy(digits: Digits) -> None:
    """`docker-compose --profile cpu up` for the server only: Prometheus and Grafana images cannot be
    pulled without a registry. The project directory holds ./model_repository, where the README's `package`
    writes it."""
    from resnet_serve.server.launch import free_port

    project = WORK / "compose"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(digits.repository, project / "model_repository")
    ports = {name: free_port() for name in PORTS}
    environment = {
        **os.environ,
        "PUBLISH_ADDRESS": "127.0.0.1",
        "GRAFANA_ADMIN_PASSWORD": "not-used",  # compose reads the whole file, Grafana's service included
        **{f"PUBLISH_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    compose = [
        "docker-compose", "--file", str(ROOT / "docker-compose.yml"), "--project-directory", str(project),
        "--project-name", LABEL, "--profile", "cpu",
    ]  # fmt: skip

    def run(*args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [*compose, *args], capture_output=True, text=True, timeout=timeout, env=environment
        )
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    try:
        run("up", "--detach", "--no-build", "server-cpu")
        container = Container(run("ps", "--quiet", "server-cpu").strip())
        wait_healthy(container)
        assert container.inspect()["Config"]["Image"] == IMAGE
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}") as client:
            assert client.is_model_ready("digits")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as reply:
            assert reply.status == 200
        run("stop", "server-cpu", timeout=90)  # compose's stop_grace_period: 30 s
        assert container.inspect()["State"]["ExitCode"] == 0
    finally:
        run("down", "--volumes", "--timeout", "30", timeout=90)


def test_the_gpu_images_builder_stage_resolves_to_wheels_for_its_python(tmp_path: Path) -> None:
    """What can be checked of Dockerfile.gpu without NVIDIA's base image or index: its builder stage's wheel
    set ([serve] at constraints.txt's versions plus its pinned GPU packages) resolves to binary wheels for the
    builder's Python on x86-64 Linux. tensorrt-cu13 is the line: PyPI has only a small sdist of it, whose
    build downloads the real wheels from NVIDIA's index (pypi.nvidia.com), unreachable here."""
    from dockerfiles import DOCKERFILES, stages

    builder = stages(DOCKERFILES["Dockerfile.gpu"])[0]
    python = re.fullmatch(r"python:(3\.\d+)-slim", builder.base)
    assert python is not None, builder.base
    pins = re.findall(r"([a-z][a-z0-9-]*)==([0-9][\w.]*)", " ".join(builder.all("RUN")))
    assert {name for name, _ in pins} >= {"onnxruntime-gpu", "tensorrt-cu13", "cuda-python"}, pins
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wheel.returncode == 0, wheel.stderr
    (ours,) = tmp_path.glob("resnet_serve-*.whl")
    target = [
        "--python-version", python.group(1), "--implementation", "cp",
        "--abi", "cp" + python.group(1).replace(".", ""), "--platform", "manylinux_2_28_x86_64",
        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--only-binary=:all:",
    ]  # fmt: skip
    wanted = [f"{ours}[serve]", *(f"{n}=={v}" for n, v in pins if not n.startswith("tensorrt"))]
    resolved = subprocess.run(
        [*pip, "install", "--dry-run", "--ignore-installed", "--target", str(tmp_path / "t"), *target,
         "-c", str(ROOT / "constraints.txt"), "--report", str(tmp_path / "report.json"), *wanted],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    installs = json.loads((tmp_path / "report.json").read_text())["install"]
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in installs}
    assert {"onnxruntime-gpu", "cuda-python", "grpcio", "resnet-serve"} <= names, names
    assert "torch" not in names
    tensorrt = [f"{n}=={v}" for n, v in pins if n.startswith("tensorrt")]
    sdist = subprocess.run(
        [*pip, "download", "--no-deps", "--no-binary=:all:", "-d", str(tmp_path / "sdist"), *tensorrt],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sdist.returncode == 0, f"{tensorrt} is not on PyPI at all: {sdist.stderr[-2000:]}"
    binary = subprocess.run(
        [*pip, "install", "--dry-run", "--ignore-installed", "--no-deps", "--target", str(tmp_path / "t"),
         *target, *tensorrt],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    where = "a wheel on PyPI" if binary.returncode == 0 else "only an sdist on PyPI (its build downloads"
    report(
        f"GPU builder stage (Python {python.group(1)}): {len(installs)} wheels resolve; "
        f"{', '.join(tensorrt)}: {where}" + ("" if binary.returncode == 0 else " from NVIDIA's index)")
    )
