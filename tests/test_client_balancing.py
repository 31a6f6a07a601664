"""Client-side load balancing: gRPC's round_robin over several servers, health-checked, with retries.

The acceptance test starts three real replicas on loopback and counts, from each replica's own metrics, how
many requests it served; then it SIGTERMs one replica in the middle of the load and checks that no request
was lost (each one answered, by the draining replica or, retried, by another).
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kserve_fixtures import KServeServer, start_server, stop_server
from PIL import Image

from resnet_serve.cli.main import main
from resnet_serve.client import AsyncClient, ClassifyError
from resnet_serve.client.channel import balance, channel_options, service_config, target_of

REPLICAS = 3
REQUESTS = 3_000
CONCURRENCY = 12
LOAD_TIMEOUT_S = 240.0


def test_one_server_is_used_as_given_so_grpc_resolves_it() -> None:
    assert target_of("gpu-box:8001") == "gpu-box:8001"
    assert target_of("dns:///resnet-serve-headless:8001") == "dns:///resnet-serve-headless:8001"


def test_several_servers_become_one_ipv4_target_of_every_address() -> None:
    assert target_of("10.0.0.1:8001, 10.0.0.2:8001") == "ipv4:10.0.0.1:8001,10.0.0.2:8001"
    assert target_of(["10.0.0.1:8001", "localhost:9001"]) == "ipv4:10.0.0.1:8001,127.0.0.1:9001"
    assert target_of("[::1]:8001,[::2]:8002") == "ipv6:[::1]:8001,[::2]:8002"


@pytest.mark.parametrize(
    ("servers", "needle"),
    [
        ("10.0.0.1:8001,nonsense", "expected HOST:PORT"),
        ("10.0.0.1:8001,10.0.0.2:99999", "expected HOST:PORT"),
        ("10.0.0.1:8001,dns:///x:8001", "URI target"),
        ("10.0.0.1:8001,[::1]:8001", "mixes IPv4 and IPv6"),
        ("10.0.0.1:8001,no-such-host.invalid:8001", "cannot resolve"),
        (" , ", "no server given"),
    ],
)
def test_a_bad_server_list_is_a_clear_error(servers: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        target_of(servers)


def test_the_service_config_balances_round_robin_health_checked_and_retries_unavailable() -> None:
    from resnet_serve.client import RetryPolicy

    config = json.loads(service_config(RetryPolicy(), health_checked=True))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    (method,) = config["methodConfig"]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert {n["service"] for n in method["name"]} == {
        "resnetserve.v1.ImageClassifier",
        "inference.GRPCInferenceService",
    }
    # Without retries (bench) the channel still balances, health-checked.
    target, options = balance("10.0.0.1:8001,10.0.0.2:8001", channel_options(None, None))
    assert target == "ipv4:10.0.0.1:8001,10.0.0.2:8001"
    assert dict(options)["grpc.enable_retries"] == 0
    config = json.loads(str(dict(options)["grpc.service_config"]))
    assert "methodConfig" not in config and config["healthCheckConfig"] == {"serviceName": ""}


def test_a_lone_server_is_not_health_checked_so_its_own_answers_reach_the_client() -> None:
    for server in ("localhost:8001", "unix:/tmp/s"):
        target, options = balance(server, channel_options(None, None))
        assert target == server
        assert "healthCheckConfig" not in json.loads(str(dict(options)["grpc.service_config"]))
    _, options = balance("dns:///x:8001", channel_options(None, None))
    assert "healthCheckConfig" in json.loads(str(dict(options)["grpc.service_config"]))


def test_classify_takes_repeated_and_comma_separated_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    rc = main(["classify", "--server", "127.0.0.1:1", "--server", "bad", str(image)])
    assert rc == 2
    assert "bad: expected HOST:PORT" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- three real replicas


def _png() -> bytes:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _served(replica: KServeServer) -> float:
    """Successful requests of the `tiny` model (both versions) this replica answered, from its /metrics."""
    return sum(
        replica.metric("resnet_serve_requests_total", model="tiny", version=v, outcome="success")
        for v in ("1", "2")
    )


async def _load(target: str, n: int, on_progress: dict[int, asyncio.Event]) -> list[str]:
    """Send n requests with CONCURRENCY in flight; the errors (status names), empty when all succeeded.
    `on_progress[k]` is set once k requests have finished."""
    image = _png()
    errors: list[str] = []
    done = 0
    async with AsyncClient(target, model="tiny", timeout=30.0) as client:
        await client.wait_until_ready(timeout=20.0)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                queue.get_nowait()
                try:
                    await client.classify(image, top_k=1)
                except ClassifyError as exc:
                    errors.append(exc.code.name)
                done += 1
                if done in on_progress:
                    on_progress[done].set()

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), LOAD_TIMEOUT_S)
    return errors


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[KServeServer]]:
    started: list[KServeServer] = []
    try:
        for i in range(REPLICAS):
            started.append(start_server(tmp_path_factory.mktemp(f"replica{i}")))
        yield started
    finally:
        for server in started:
            stop_server(server)


@pytest.mark.slow
def test_bench_spreads_kserve_requests_over_repeated_servers(
    replicas: list[KServeServer], tmp_path: Path
) -> None:
    """`bench --protocol kserve` (tritonclient's channel, our channel options) balances too."""
    before = [_served(r) for r in replicas]
    servers = [arg for r in replicas for arg in ("--server", r.url)]
    timing = ["--warmup", "0.5", "--window", "1", "--max-step-time", "3", "--stability", "0.5"]
    argv = ["bench", "--protocol", "kserve", "--model", "tiny", "--concurrency", "3", *servers, *timing]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    counts = [_served(r) - b for r, b in zip(replicas, before, strict=True)]
    assert min(counts) > 0.2 * sum(counts), counts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_balanced_client_spreads_requests_evenly_and_loses_none_when_a_replica_drains(
    replicas: list[KServeServer],
) -> None:
    target = ",".join(r.url for r in replicas)
    before = [_served(r) for r in replicas]
    errors = asyncio.run(_load(target, REQUESTS, {}))
    assert errors == []
    counts = [_served(r) - b for r, b in zip(replicas, before, strict=True)]
    assert sum(counts) == REQUESTS
    shares = [c / REQUESTS for c in counts]
    print(f"shares of {REQUESTS} requests: {[f'{s:.1%}' for s in shares]}")
    assert all(0.25 <= s <= 0.35 for s in shares), shares

    # One replica gets SIGTERM a third of the way through: it turns NOT_SERVING, refuses new requests with
    # UNAVAILABLE (retried on another replica by the channel's policy) and finishes those it accepted.
    victim, survivors = replicas[0], replicas[1:]
    before = [_served(r) for r in survivors]
    n = 1_500

    async def scenario() -> list[str]:
        third = {n // 3: asyncio.Event()}
        load = asyncio.create_task(_load(target, n, third))
        await asyncio.wait_for(third[n // 3].wait(), LOAD_TIMEOUT_S)
        victim.process.send_signal(signal.SIGTERM)
        return await load

    started = time.monotonic()
    errors = asyncio.run(scenario())
    assert errors == [], f"{len(errors)} requests lost: {sorted(set(errors))}"
    assert victim.process.wait(timeout=30) == 0  # a clean drain
    absorbed = [_served(r) - b for r, b in zip(survivors, before, strict=True)]
    print(f"after SIGTERM: survivors served {absorbed} of {n} in {time.monotonic() - started:.1f} s")
    # The survivors served everything after the signal, and at least two thirds of the whole run.
    assert sum(absorbed) >= 2 * n // 3
    assert all(a > n // 4 for a in absorbed)


@pytest.mark.parametrize("server", ["localhost", "127.0.0.1:", "127.0.0.1:65536", ":8001"])
def test_one_server_that_is_not_host_port_is_refused_rather_than_dialled_at_another_port(server: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        target_of(server)
    assert target_of("unix:/tmp/resnet-serve.sock") == "unix:/tmp/resnet-serve.sock"  # a URI stays as given
