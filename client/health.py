"""Ask a server's grpc.health.v1 service whether it serves: the probe behind `resnet-serve health`, the
images' HEALTHCHECK.

The server reports SERVING once its models are ready, NOT_SERVING while none is or from the moment it starts
draining (server/app.py). Kubernetes probes the same service natively (`grpc:` probes), so this is for
Docker and scripts.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resnet_serve.client.channel import KSERVE_SERVICE, SERVICE, TLSConfig, connect_reason
from resnet_serve.client.results import ClassifyError


def check(target: str, service: str = "", timeout: float = 3.0, tls: TLSConfig | None = None) -> str:
    """The serving status name (SERVING, NOT_SERVING, SERVICE_UNKNOWN, ...) of `service` ("" = the whole
    server) at `target`; raises ClassifyError when the server cannot be asked within `timeout` seconds."""
    # No service config: the balanced channels' client-side health checking would hold the call until the
    # server is healthy, and a probe must see NOT_SERVING itself.
    options: list[tuple[str, str | int]] = [("grpc.enable_retries", 0)]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    if tls is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, tls.credentials(), options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            detail = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or _reason(code, service)
            if code == grpc.StatusCode.UNAVAILABLE and (reason := connect_reason(detail, tls is not None)):
                detail = f"{reason} ({detail})"
            raise ClassifyError(code, f"health check of {target}: {detail}") from None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _reason(code: grpc.StatusCode, service: str) -> str:
    """What an answer without details means (grpcio's health service says nothing with its NOT_FOUND)."""
    if code == grpc.StatusCode.NOT_FOUND:
        return (
            f"the server has no health status for service {service!r}: it reports one for '' (the whole "
            f"server) and one per gRPC service ({KSERVE_SERVICE}, {SERVICE}); a model's readiness is "
            "KServe's ModelReady (GET /v2/models/NAME/ready)"
        )
    return f"the server answered {code.name} without a reason"
