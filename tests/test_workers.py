"""`serve --workers 2`: worker processes on shared ports in front of one engine process, seen from outside as
one server (issue #22): one set of models, one shared-memory registry, one /metrics with the totals, one
readiness, a worker that dies is replaced, an engine that dies takes readiness down at once."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.utils.shared_memory as shm
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kserve_fixtures import reference_logits
from support.server import ServerProcess, scrape, start_server, stop_server
from support.tiny_model import write_tiny_onnx
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from resnet_serve.server.ipc.places import SLOTS, QueuePlaces

pytestmark = pytest.mark.slow

SHAPE = (1, 8, 8)
CONNECTIONS = 16  # connections of their own: SO_REUSEPORT spreads them over the workers (all on one: 2^-15)
# gRPC shares one connection among a process's channels to the same target unless each has its own pool.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def client(target: str) -> tc.InferenceServerClient:
    """A tritonclient on a TCP connection of its own (so on either worker)."""
    return tc.InferenceServerClient(target, channel_args=OWN_CONNECTION)


def connections(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections to local `port` held by each of `pids` (from /proc/net/tcp{,6})."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes[fields[9]] = 0
    counts = dict.fromkeys(pids, 0)
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                counts[pid] += 1
    return counts


def queue_places(engine: int, workers: int, worker: int | None = None) -> QueuePlaces:
    """The engine's table of queue places (server/ipc/places.py), mapped here through its /proc fd."""
    for entry in Path(f"/proc/{engine}/fd").iterdir():
        if "resnet-serve-queue-places" in os.readlink(entry):
            fd = os.open(entry, os.O_RDWR)
            try:
                return QueuePlaces(fd, workers, worker)
            finally:
                os.close(fd)
    raise AssertionError("the engine holds no table of queue places")


def worker_index(pid: int) -> int:
    """A worker process's place among the workers (its command line: server/processes/worker.py's main)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"resnet_serve.server.processes.worker") + 6])


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (the engine's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("workers") / "tiny.onnx")


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[ServerProcess]:
    process = start_server(
        "--model", f"tiny={model}", "--workers", "2", "--intra-op-threads", "1", "--preprocess-threads", "1",
        "--model-control-mode", "explicit",
    )  # fmt: skip
    try:
        yield process
    finally:
        assert stop_server(process) == 0, "".join(process.log)


def infer(target: str, x: np.ndarray, **kwargs: object) -> np.ndarray:
    """One inference on a connection of its own."""
    with client(target) as c:
        return run(c, x, **kwargs)


def run(c: tc.InferenceServerClient, x: np.ndarray, **kwargs: object) -> np.ndarray:
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out: np.ndarray = c.infer("tiny", [inp], **kwargs).as_numpy("logits")  # type: ignore[arg-type]
    return out


def test_the_engine_runs_two_worker_processes_that_answer_every_connection_alike(
    server: ServerProcess, model: Path
) -> None:
    assert len(children(server.proc.pid)) == 2
    assert server.ready.pid == server.proc.pid  # the ready file names the engine: the process to signal
    rng = np.random.default_rng(0)
    for _ in range(CONNECTIONS):
        x = rng.random((3, *SHAPE), dtype=np.float32)
        np.testing.assert_allclose(infer(server.target, x), reference_logits(model, x), rtol=1e-5, atol=1e-5)


def test_statistics_and_metrics_are_the_totals_of_every_worker(server: ServerProcess) -> None:
    with client(server.target) as c:
        before = c.get_inference_statistics("tiny").model_stats[0].inference_stats.success.count
        x = np.ones((1, *SHAPE), dtype=np.float32)
        for _ in range(CONNECTIONS):
            infer(server.target, x)
        stats = c.get_inference_statistics("tiny").model_stats[0]
    assert stats.inference_stats.success.count == before + CONNECTIONS
    assert stats.execution_count >= CONNECTIONS  # the engine's batches, counted once
    text = scrape(server)
    success = [line for line in text.splitlines() if line.startswith("nv_inference_request_success{")]
    assert success and float(success[0].rsplit(" ", 1)[1]) == before + CONNECTIONS
    roles = {line.split('role="', 1)[1].split('"', 1)[0] for line in text.splitlines()
             if line.startswith("resnet_serve_process_cpu_seconds_total{")}  # fmt: skip
    assert roles == {"engine", "worker"}
    assert (
        text.count("resnet_serve_process_cpu_seconds_total{pid=")
        + text.count("resnet_serve_process_cpu_seconds_total{role=")
        == 3
    )


def test_a_region_registered_on_one_connection_serves_inferences_on_every_other(
    server: ServerProcess, model: Path
) -> None:
    x = np.random.default_rng(1).random((2, *SHAPE), dtype=np.float32)
    key = f"/resnet-serve-workers-{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region("in", key, x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    owner = client(server.target)
    others = [client(server.target) for _ in range(CONNECTIONS)]
    try:
        owner.register_system_shared_memory("in", key, x.nbytes)
        for other in others:
            status = other.get_system_shared_memory_status("in")
            assert status.regions["in"].byte_size == x.nbytes
            inp = tc.InferInput("input", list(x.shape), "FP32")
            inp.set_shared_memory("in", x.nbytes)
            out = other.infer("tiny", [inp]).as_numpy("logits")
            np.testing.assert_allclose(out, reference_logits(model, x), rtol=1e-5, atol=1e-5)
        served = connections(server.ready.grpc.port, children(server.proc.pid))  # type: ignore[union-attr]
        assert sorted(served.values())[0] >= 1, served  # both workers answered some of these connections
        owner.unregister_system_shared_memory("in")
        for other in others:
            assert not other.get_system_shared_memory_status().regions
    finally:
        for c in (owner, *others):
            c.close()
        shm.destroy_shared_memory_region(handle)


def test_a_model_unloaded_through_one_worker_is_unloaded_for_every_connection(server: ServerProcess) -> None:
    control = client(server.target)
    others = [client(server.target) for _ in range(CONNECTIONS)]
    try:
        control.unload_model("tiny")
        for other in others:
            assert not other.is_model_ready("tiny")
            index = other.get_model_repository_index().models
            assert [(m.name, m.state, m.reason) for m in index] == [("tiny", "UNAVAILABLE", "unloaded")]
        served = connections(server.ready.grpc.port, children(server.proc.pid))  # type: ignore[union-attr]
        assert sorted(served.values())[0] >= 1, served
        control.load_model("tiny")
        for other in others:
            assert other.is_model_ready("tiny")
            assert other.is_server_ready()
            run(other, np.ones((1, *SHAPE), dtype=np.float32))
    finally:
        for c in (control, *others):
            c.close()


def test_while_a_model_loads_every_worker_says_loading_and_the_server_is_not_ready(model: Path) -> None:
    # One truth during a load too: the engine tells the workers when a load begins, not only when it ends
    # (they answered ready, and the index said "unloaded", for the seconds a load took).
    slow_load = write_tiny_onnx(model.parent / "slow-load.onnx", slow_layers=2500)  # seconds to build
    server = start_server(
        "--model", f"tiny={slow_load}", "--workers", "2", "--model-control-mode", "explicit", timeout_s=120
    )
    control = client(server.target)
    others = [client(server.target) for _ in range(CONNECTIONS)]
    try:
        control.unload_model("tiny")
        assert all(other.is_server_ready() for other in others)  # nothing is meant to serve it
        loading = threading.Thread(target=control.load_model, args=("tiny",))
        loading.start()
        wait_for(lambda: not others[0].is_server_ready(), 10, "the load to begin")
        for other in others:  # every connection, so both workers
            index = other.get_model_repository_index().models
            if not loading.is_alive():
                break
            assert [(m.name, m.state) for m in index] == [("tiny", "LOADING")]
            assert not other.is_server_ready()
            assert not other.is_model_ready("tiny")
        assert loading.is_alive(), "the load ended before every connection was asked: not slow enough"
        loading.join(120)
        assert all(other.is_server_ready() and other.is_model_ready("tiny") for other in others)
    finally:
        for c in (control, *others):
            c.close()
        assert stop_server(server) == 0, "".join(server.log)


def slow_model(model: Path, name: str, slow_layers: int) -> tuple[str, ...]:
    """`serve` arguments for a slow "tiny" (one thread, batches of at most 8 rows)."""
    slow = write_tiny_onnx(model.parent / f"{name}.onnx", slow_layers=slow_layers)
    return ("--model", f"tiny={slow}", "--intra-op-threads", "1", "--max-batch-size", "8")


def queue_a_backlog(server: ServerProcess, requests: int = 12) -> list[threading.Thread]:
    """`requests` of 8 rows sent at once, each on a thread of its own, 0.3 s after: a backlog queued."""
    rows = np.ones((8, *SHAPE), np.float32)

    def send() -> None:
        with contextlib.suppress(InferenceServerException):  # the server may stop before its turn
            infer(server.target, rows)

    backlog = [threading.Thread(target=send) for _ in range(requests)]
    for thread in backlog:
        thread.start()
    time.sleep(0.3)
    return backlog


def test_a_request_whose_timeout_passes_in_the_queue_is_answered_then_not_when_its_turn_comes(
    model: Path,
) -> None:
    # The engine checks a deadline when a batch takes the request; the worker tells it when it passes, so a
    # request behind seconds of work is answered at its deadline, as in one process.
    server = start_server(*slow_model(model, "slow-queue", 400), "--workers", "2")
    try:
        backlog = queue_a_backlog(server)
        with pytest.raises(InferenceServerException) as info:
            infer(server.target, np.ones((1, *SHAPE), dtype=np.float32), timeout=100_000)  # µs, Triton's unit
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert info.value.message() == "deadline exceeded while queued for model 'tiny'; not computed"
        assert any(thread.is_alive() for thread in backlog), "answered only when its turn came"
        for thread in backlog:
            thread.join(60)
    finally:
        assert stop_server(server) == 0, "".join(server.log)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_client_deadline_passing_in_the_queue_is_counted_as_deadline_exceeded(
    model: Path, workers: str
) -> None:
    # A client's deadline runs from before its request reached the server, so its gRPC cancel arrives a
    # little before the server's own deadline timer: such a request was counted "cancelled" (CANCELED in
    # nv_*) where the client saw DEADLINE_EXCEEDED. Here each client cancels 80 ms before its 3 s deadline.
    server = start_server(
        *slow_model(model, f"slow-deadline-{workers}", 1200), "--workers", workers, "--grace-period-s", "0"
    )
    backlog: list[threading.Thread] = []
    try:
        backlog = queue_a_backlog(server, 72)  # ~6 s of compute: the calls below stay queued
        request = service_pb2.ModelInferRequest(
            model_name="tiny", raw_input_contents=[np.ones((1, *SHAPE), np.float32).tobytes()]
        )
        request.inputs.add(name="input", datatype="FP32", shape=[1, *SHAPE])
        with grpc.insecure_channel(server.target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            calls = [stub.ModelInfer.future(request, timeout=3.0) for _ in range(4)]
            time.sleep(2.92)
            for call in calls:
                assert call.cancel(), "answered within its deadline: the backlog was too short"

        def counted() -> dict[str, float]:
            return {
                outcome: sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in scrape(server).splitlines()
                    if line.startswith("resnet_serve_requests_total{") and f'outcome="{outcome}"' in line
                )
                for outcome in ("deadline_exceeded", "cancelled")
            }

        wait_for(lambda: sum(counted().values()) >= 4, 10, "the four calls to be counted")
        assert counted() == {"deadline_exceeded": 4, "cancelled": 0}
    finally:
        assert stop_server(server) == 0, "".join(server.log)  # no grace: the backlog is answered UNAVAILABLE
        for thread in backlog:
            thread.join(30)


def test_a_worker_killed_mid_load_ends_its_requests_unavailable_and_is_replaced(model: Path) -> None:
    slow = write_tiny_onnx(model.parent / "slow-kill.onnx", slow_layers=200)
    server = start_server(
        "--model", f"tiny={slow}", "--workers", "2", "--intra-op-threads", "1", "--max-batch-size", "1",
    )  # fmt: skip
    try:
        workers = children(server.proc.pid)
        assert len(workers) == 2
        outcomes: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def load() -> None:  # a new connection per request: they land on both workers
            x = np.ones((1, *SHAPE), dtype=np.float32)
            while not stop.is_set():
                try:
                    infer(server.target, x, client_timeout=30)
                    outcome = "ok"
                except InferenceServerException as exc:
                    outcome = str(exc.status())
                with lock:
                    outcomes.append(outcome)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        # As if it died holding places (decoding, or sent and never read): in a row no model uses, so that
        # this write races with none of the worker's own
        held = queue_places(server.proc.pid, 2, worker_index(workers[0]))
        held.claim(SLOTS - 1, 3)
        assert held.taken(SLOTS - 1) == 3
        os.kill(workers[0], signal.SIGKILL)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a request hung"
        assert set(outcomes) <= {"ok", "StatusCode.UNAVAILABLE"}, outcomes
        assert "StatusCode.UNAVAILABLE" in outcomes, outcomes  # the killed worker had requests in flight
        assert outcomes.count("ok") >= 2 * outcomes.count("StatusCode.UNAVAILABLE"), outcomes  # others served
        wait_for(lambda: any("is serving again" in line for line in server.log), 15, "a new worker")
        assert len(children(server.proc.pid)) == 2
        assert workers[0] not in children(server.proc.pid)
        for _ in range(CONNECTIONS):  # every connection is answered again, the new worker's too
            infer(server.target, np.ones((1, *SHAPE), dtype=np.float32))
        assert any("exited with status -9" in line for line in server.log)
        # Nothing in flight now: no queue place is still held, not even those the killed worker held
        table = queue_places(server.proc.pid, 2)
        assert [slot for slot in range(SLOTS) if table.taken(slot)] == []
    finally:
        assert stop_server(server) == 0, "".join(server.log)


def new_child(engine: int, known: list[int], timeout_s: float = 10.0) -> int:
    """The first child of `engine` not in `known`, as soon as it exists (long before it is ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in children(engine):
            if pid not in known:
                return pid
        time.sleep(0.005)
    raise AssertionError(f"no new worker within {timeout_s} s")


def test_a_replacement_worker_that_dies_while_starting_is_started_again(model: Path) -> None:
    # A death before the replacement is ready (the OOM killer, a crash in start-up) is one more death to
    # count, not a failed start that stops the server.
    server = start_server("--model", f"tiny={model}", "--workers", "2")
    try:
        first = children(server.proc.pid)
        os.kill(first[0], signal.SIGKILL)
        replacement = new_child(server.proc.pid, first)
        os.kill(replacement, signal.SIGKILL)
        assert not any("is serving again" in line for line in server.log)  # it died before it was ready
        wait_for(lambda: any("is serving again" in line for line in server.log), 15, "a third worker")
        assert server.proc.poll() is None, "".join(server.log)
        assert len(children(server.proc.pid)) == 2
        for _ in range(CONNECTIONS):  # every connection is answered, the new worker's too
            infer(server.target, np.ones((1, *SHAPE), dtype=np.float32))
        assert sum("exited with status -9; starting it again" in line for line in server.log) == 2
    finally:
        assert stop_server(server) == 0, "".join(server.log)


def test_a_worker_that_keeps_dying_stops_the_server_with_status_1(model: Path) -> None:
    server = start_server("--model", f"tiny={model}", "--workers", "2")
    try:
        known = children(server.proc.pid)
        victim = known[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(5):  # more than MAX_RESTARTS (5) in 60 s: each replacement killed as soon as it exists
            victim = new_child(server.proc.pid, known)
            known.append(victim)
            os.kill(victim, signal.SIGKILL)
        assert server.proc.wait(30) == 1
        assert any("6 exits in 60 s: stopping the server" in line for line in server.log), server.log
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in known), 10, "the workers to exit")
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_when_the_engine_dies_health_turns_not_serving_within_a_second(model: Path) -> None:
    server = start_server("--model", f"tiny={model}", "--workers", "2")
    try:
        workers = children(server.proc.pid)
        channel = grpc.insecure_channel(server.target)
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        assert stub.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        os.kill(server.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        status = None
        while time.monotonic() - killed < 1.0:
            try:
                status = stub.Check(request, timeout=0.5).status
            except grpc.RpcError:
                status = None  # the worker is gone too: nothing to send traffic to either
            if status != health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.02)
        assert status != health_pb2.HealthCheckResponse.SERVING
        channel.close()
        server.proc.wait(10)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, "the workers to exit")
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_a_request_over_http_and_grpc_reaches_the_same_engine(server: ServerProcess) -> None:
    assert server.ready.http is not None
    with urllib.request.urlopen(f"http://{server.ready.http.address}/v2/health/ready", timeout=10) as resp:
        assert resp.status == 200
