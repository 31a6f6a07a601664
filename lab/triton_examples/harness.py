"""Run Triton's example clients, unchanged, against a real `resnet-serve serve`.

Each server serves a repository that lab/triton_examples/models.py writes and listens on 127.0.0.1 with free
ports (all three); it starts with the defaults otherwise (warmup included, so the models with a variable
dimension must warm up, and a model that fails to load stops the start-up). Each example runs as its own
process with this interpreter, with its `-u` flag pointed at the server; it passes when it exits 0 (the
examples check their own answers and exit 1 on a mismatch). memory_growth_test.py dials Triton's default ports
and has no flag to change them, so it runs in a private network namespace (`unshare -n`, root only) where 8000
and 8001 are free by construction.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lab.triton_examples.models import WRITERS, write_repository
from lab.triton_examples.runs import DEFAULT_PORTS, GRPC_CONTROL, HTTP_CONTROL, MAIN, RUNS, Run
from resnet_serve.server.launch import start, stop

ROOT: Final = Path(__file__).resolve().parents[2]
CLIENTS: Final = ROOT / "tests" / "triton_example_clients"
START_TIMEOUT_S: Final = 120.0
RUN_TIMEOUT_S: Final = 180.0
# The repository each server serves: the example model-control clients count it (the gRPC one expects the
# eight models of Triton's docs repository; the HTTP one's count, seven, predates one of them).
REPOSITORIES: Final = {
    MAIN: tuple(WRITERS),
    DEFAULT_PORTS: ("custom_identity_int32",),
    GRPC_CONTROL: tuple(WRITERS),
    HTTP_CONTROL: tuple(n for n in WRITERS if n != "inception_batch"),
}
SERVER_FLAGS: Final = {
    MAIN: (),
    DEFAULT_PORTS: (),
    GRPC_CONTROL: ("--model-control-mode", "explicit"),
    HTTP_CONTROL: ("--model-control-mode", "explicit"),
}


@dataclass(frozen=True)
class Server:
    grpc: str  # host:port
    http: str


@dataclass(frozen=True)
class Result:
    run: Run
    passed: bool
    seconds: float
    output: str  # the example's stdout and stderr, last lines


def write_images(directory: Path) -> tuple[Path, Path]:
    """Two real photos (scikit-image's data set) as JPEG files: one, and a directory of two for `-b 2`."""
    from PIL import Image
    from skimage import data

    both = directory / "images"
    both.mkdir(parents=True, exist_ok=True)
    photos: tuple[tuple[str, Any], ...] = (
        ("chelsea", data.chelsea()),  # type: ignore[no-untyped-call]
        ("astronaut", data.astronaut()),  # type: ignore[no-untyped-call]
    )
    for name, pixels in photos:
        Image.fromarray(pixels).save(both / f"{name}.jpg", quality=90)
    return both / "chelsea.jpg", both


@contextmanager
def serving(kind: str, workdir: Path, ports: tuple[str, str] = ("0", "0")) -> Iterator[Server]:
    """A server for `kind` (runs.py's MAIN, GRPC_CONTROL, ...) on a fresh repository; stopped on exit."""
    repository = write_repository(workdir / f"repository-{kind}", REPOSITORIES[kind])
    process, ready = start(
        "--model-repository", str(repository), "--host", "127.0.0.1",
        "--grpc-port", ports[0], "--http-port", ports[1], "--metrics-port", "0",
        "--intra-op-threads", "1", "--preprocess-threads", "1",
        *SERVER_FLAGS[kind],
        ready_file=workdir / f"server-{kind}.ready.json", log=workdir / f"server-{kind}.log",
        timeout_s=START_TIMEOUT_S, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert ready.http is not None, "the examples need the HTTP endpoint"
        yield Server(ready.grpc_target, ready.http.address)
    finally:
        stop(process)


def run_example(run: Run, server: Server, image: Path, images: Path) -> Result:
    """One example, unchanged, as its own process; passes when it exits 0 within RUN_TIMEOUT_S."""
    values = {"{grpc}": server.grpc, "{http}": server.http, "{image}": str(image), "{images}": str(images)}
    argv = [sys.executable, str(CLIENTS / run.script), *(values.get(a, a) for a in run.args)]
    start = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=CLIENTS)
        passed, output = done.returncode == 0, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        passed, output = False, f"timed out after {RUN_TIMEOUT_S:.0f} s\n{exc.stdout or ''!s}"
    tail = "\n".join(output.strip().splitlines()[-15:])
    return Result(run, passed, time.monotonic() - start, tail)


def namespace_available() -> bool:
    """Whether `unshare -n` works here (root, or a kernel that allows unprivileged namespaces)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def run_in_namespace(run: Run, workdir: Path) -> Result:
    """`run` against a server on 127.0.0.1:8001 (gRPC) and :8000 (HTTP) inside a private network namespace:
    the harness runs itself there (`--one INDEX`) and prints the result as JSON."""
    index = RUNS.index(run)
    python, where = shlex.quote(sys.executable), shlex.quote(str(workdir))
    inner = f"ip link set lo up && exec {python} -m lab.triton_examples --one {index} --workdir {where}"
    start = time.monotonic()
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", inner],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + RUN_TIMEOUT_S,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
        return Result(run, bool(answer["passed"]), float(answer["seconds"]), str(answer["output"]))
    except (IndexError, ValueError, KeyError):
        return Result(run, False, time.monotonic() - start, (done.stdout + done.stderr)[-3000:])


def run_one_here(index: int, workdir: Path) -> Result:
    """The namespace side of `run_in_namespace`: Triton's default ports are free here."""
    run = RUNS[index]
    image, images = write_images(workdir)
    with serving(run.server, workdir, ports=("8001", "8000")) as server:
        return run_example(run, server, image, images)


def run_all(workdir: Path, runs: tuple[Run, ...] = RUNS) -> list[Result]:
    """Every run, each group of runs against its own server, in the order of `runs`."""
    image, images = write_images(workdir)
    results: dict[Run, Result] = {}
    for kind in (MAIN, GRPC_CONTROL, HTTP_CONTROL):
        group = [r for r in runs if r.server == kind]
        if group:
            with serving(kind, workdir) as server:
                for run in group:
                    results[run] = run_example(run, server, image, images)
    for run in (r for r in runs if r.server == DEFAULT_PORTS):
        if namespace_available():
            results[run] = run_in_namespace(run, workdir)
        else:
            results[run] = Result(run, False, 0.0, "skipped: needs `unshare -n` (root) for ports 8000/8001")
    return [results[r] for r in runs]
