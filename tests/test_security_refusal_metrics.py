"""Requests refused by access control are counted in `resnet_serve_access_refused_total{protocol, group,
reason}`, on the gRPC port (the interceptor, and model control in the KServe service) and the HTTP port
alike; allowed requests and health checks are not; no label carries a header value, a token or a path."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from resnet_serve.protos import classifier_pb2 as image_pb
from resnet_serve.protos import classifier_pb2_grpc as image_grpc
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.protos import grpc_service_pb2_grpc as pb_grpc
from resnet_serve.server.app import InferenceServer
from resnet_serve.server.config import ModelSettings, ServerConfig
from resnet_serve.server.observability.metrics import ServerMetrics
from resnet_serve.server.security.restrict import parse_restriction

FAMILY = "resnet_serve_access_refused_total"
ADMIN_KEY = "admin-key"
ADMIN_VALUE = "a-long-admin-value-0123456789"
TOKEN = "image-api-token-0123456789abcdef"
WRONG_TOKEN = "wrong-token-0000000000000000000"


def refusals(metrics: ServerMetrics) -> dict[tuple[str, str, str], float]:
    """Every sample of the family, by (protocol, group, reason), from the text Prometheus scrapes."""
    text = metrics.render().decode()
    for secret in (ADMIN_VALUE, TOKEN, WRONG_TOKEN, "Bearer"):
        assert secret not in text
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == FAMILY:
                assert set(s.labels) == {"protocol", "group", "reason"}
                found[(s.labels["protocol"], s.labels["group"], s.labels["reason"])] = s.value
    return found


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L").save(buf, "PNG")
    return buf.getvalue()


def test_refusals_are_counted_by_front_end_group_and_reason_without_secrets() -> None:
    metrics = ServerMetrics()
    metrics.access_refused("grpc", "model-repository", "restricted", 0)
    assert refusals(metrics) == {("grpc", "model-repository", "restricted"): 0}
    metrics.access_refused("grpc", "model-repository", "restricted")
    metrics.access_refused("http", "inference", "unauthenticated")
    assert refusals(metrics) == {
        ("grpc", "model-repository", "restricted"): 1,
        ("http", "inference", "unauthenticated"): 1,
    }
    for protocol, reason in (("grpc", "Bearer " + TOKEN), ("websocket", "restricted")):
        with pytest.raises(ValueError):
            metrics.access_refused(protocol, "inference", reason)
    off = ServerMetrics(enabled=False)
    off.access_refused("grpc", "inference", "unauthenticated")
    assert off.access_refusals() == {}


@pytest.mark.slow
def test_refusals_on_both_ports_are_counted_and_allowed_requests_are_not(tiny_onnx: Path) -> None:
    config = ServerConfig(
        models=(ModelSettings(name="tiny", path=str(tiny_onnx)),),
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=-1,
        grpc_restricted_protocol=(
            parse_restriction(f"model-repository,statistics:{ADMIN_KEY}={ADMIN_VALUE}"),
        ),
        auth_token=TOKEN,
    )  # model control stays "none": an unload with the header is refused by model control, before any lookup
    admin_grpc = ((f"triton-grpc-protocol-{ADMIN_KEY}", ADMIN_VALUE),)
    admin_http = {ADMIN_KEY: ADMIN_VALUE}

    async def main() -> None:
        server = InferenceServer(config)
        await server.start()
        try:
            # Every refusal this configuration can answer is a series from the start, at 0.
            before = refusals(server.metrics)
            assert set(before.values()) == {0}
            assert (
                len(before) == 2 * 4
            )  # {grpc, http} × {2 restricted groups, unauthenticated, model control}
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                kserve = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
                image = image_grpc.ImageClassifierStub(channel)  # type: ignore[no-untyped-call]
                health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
                unload = pb.RepositoryModelUnloadRequest(model_name="tiny")
                refused = [
                    (kserve.RepositoryModelUnload(unload, timeout=10), grpc.StatusCode.UNAVAILABLE),
                    (
                        kserve.RepositoryModelUnload(unload, timeout=10, metadata=admin_grpc),
                        grpc.StatusCode.UNAVAILABLE,
                    ),
                    (
                        kserve.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10),
                        grpc.StatusCode.UNAVAILABLE,
                    ),
                    (
                        image.Classify(
                            image_pb.ClassifyRequest(image=png()),
                            timeout=10,
                            metadata=(("authorization", f"Bearer {WRONG_TOKEN}"),),
                        ),
                        grpc.StatusCode.UNAUTHENTICATED,
                    ),
                ]
                for call, code in refused:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == code
                # Allowed: not counted.
                await kserve.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10, metadata=admin_grpc)
                await image.Classify(
                    image_pb.ClassifyRequest(image=png()),
                    timeout=10,
                    metadata=(("authorization", f"Bearer {TOKEN}"),),
                )
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            base = f"http://127.0.0.1:{server.http_port}"
            async with aiohttp.ClientSession() as http:
                for method, path, headers, status in (
                    ("POST", "/v2/repository/models/tiny/unload", {}, 503),
                    ("POST", "/v2/repository/models/tiny/unload", admin_http, 503),
                    ("POST", "/v2/repository/models/tiny/unload", admin_http, 503),
                    ("GET", "/v2/models/stats", {"Authorization": f"Bearer {TOKEN}"}, 503),
                    ("POST", "/v1/models/tiny/classify", {}, 401),
                    ("GET", "/v2/models/stats", admin_http, 200),
                    ("GET", "/v2/health/ready", {}, 200),
                ):
                    body = png() if path.endswith("classify") else None
                    async with http.request(method, base + path, headers=headers, data=body) as response:
                        assert response.status == status, (method, path)
            after = refusals(server.metrics)
            assert {k: v for k, v in after.items() if v} == {
                ("grpc", "model-repository", "restricted"): 1,
                ("grpc", "model-repository", "model_control"): 1,
                ("grpc", "statistics", "restricted"): 1,
                ("grpc", "inference", "unauthenticated"): 1,
                ("http", "model-repository", "restricted"): 1,
                ("http", "model-repository", "model_control"): 2,
                ("http", "statistics", "restricted"): 1,
                ("http", "inference", "unauthenticated"): 1,
            }
        finally:
            await server.stop(5)

    asyncio.run(main())
