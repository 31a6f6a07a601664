"""The real server under load: SIGTERM drains accepted requests; expired or cancelled ones cost no compute."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from support.server import ServerProcess, encode, scrape, start_server, stop_server
from support.tiny_model import write_tiny_onnx

from resnet_serve.protos import classifier_pb2 as pb
from resnet_serve.protos import classifier_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the model "slow" in a Prometheus exposition (0 when absent)."""
    wanted = {"model": "slow", "version": "1", **labels}
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
        if found == wanted:
            return float(match[2])
    return 0.0


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("condition not reached in time")


def accepted(server: ServerProcess) -> float:
    """Requests the server has taken in: those in flight plus those already answered (a request between
    the two counters may be counted twice for a moment, so compare with >=)."""
    text = scrape(server)
    return metric(text, "resnet_serve_requests_in_flight") + metric(
        text, "resnet_serve_requests_total", outcome="success"
    )


@pytest.fixture
def slow_server(tmp_path: Path) -> ServerProcess:
    # 20-100 ms of compute per image (idle or busy machine), one image per batch: a queue builds up.
    model = write_tiny_onnx(tmp_path / "slow.onnx", slow_layers=200)
    return start_server("--model", f"slow={model}", "--max-batch-size", "1", "--grace-period-s", "60")


def image() -> bytes:
    return encode(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L"))


def test_sigterm_answers_every_accepted_request_then_exits_zero(slow_server: ServerProcess) -> None:
    n = 32
    request = pb.ClassifyRequest(image=image())
    with grpc.insecure_channel(slow_server.target) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
        futures = [stub.Classify.future(request, timeout=120) for _ in range(n)]

        wait_until(lambda: accepted(slow_server) >= n)
        text = scrape(slow_server)
        still_running = metric(text, "resnet_serve_requests_in_flight")
        assert still_running > 1, "the load finished before the signal; the test would prove nothing"
        slow_server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        answers = [f.result() for f in futures]
    assert len(answers) == n
    assert all(a.predictions and a.version == "1" for a in answers)
    assert stop_server(slow_server) == 0, "".join(slow_server.log)
    assert any("draining" in line for line in slow_server.log)


def test_expired_and_cancelled_requests_cost_no_compute(slow_server: ServerProcess) -> None:
    request = pb.ClassifyRequest(image=image())
    try:
        with grpc.insecure_channel(slow_server.target) as channel:
            stub = pb_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
            # About a second of queued compute ahead of the two requests below, all of it accepted by
            # the server before they are sent (a client does not keep its requests in order).
            blockers = [stub.Classify.future(request, timeout=120) for _ in range(40)]
            wait_until(lambda: accepted(slow_server) >= 40)
            backlog = metric(scrape(slow_server), "resnet_serve_requests_in_flight")
            assert backlog >= 10, "the blockers finished too soon; the test would prove nothing"
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(request, timeout=0.1)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            cancelled = stub.Classify.future(request, timeout=120)
            time.sleep(0.05)
            assert cancelled.cancel()
            for f in blockers:
                f.result()
            assert stub.Classify(request, timeout=10).predictions
        text = scrape(slow_server)
        # Every execution served a request that got its answer: none ran for the expired or cancelled one.
        # (Either may also be dropped by gRPC before reaching the server's handler, so it is not always
        # counted; the batcher tests pin the queue-side behaviour exactly.)
        successes = metric(text, "resnet_serve_requests_total", outcome="success")
        assert metric(text, "resnet_serve_executions_total") == successes >= 41
        failed = sum(
            metric(text, "resnet_serve_requests_total", outcome=o) for o in ("deadline_exceeded", "cancelled")
        )
        assert successes + failed <= 43
    finally:
        assert stop_server(slow_server) == 0
