"""The gRPC server's transport options: message size, streams per connection, keepalive enforcement.

Keepalive enforcement is gRPC's own: a client that pings more often than
`grpc_http2_min_recv_ping_interval` while it has nothing to send (or at all without an open call,
unless `grpc_keepalive_permit_without_calls`) earns a strike, and after `grpc_http2_max_ping_strikes` strikes
the server closes the connection with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings"). The defaults are
Triton's and gRPC's.

Connection age (`grpc_max_connection_age_ms`, off by default as in gRPC): gRPC sends a connection GOAWAY once
it is that old (plus or minus 10 % jitter, so replicas' clients do not all reconnect at once), lets the calls
open on it finish for `grpc_max_connection_age_grace_ms`, then closes it. The client reconnects for its next
call, and a client dialling a `dns:///` name re-resolves it first: that is how DNS-balanced clients of a
headless Service find pods added after they connected (docs/deploy.md). 0 leaves the option out, because
gRPC reads a 0 as "close at once" rather than "never".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resnet_serve.server.config import ServerConfig

_MB = 1024 * 1024


def field_bytes(length: int) -> int:
    """The bytes a length-delimited protobuf field numbered below 16 (a one-byte tag) takes with `length`
    bytes of content: what a repeated entry or a nested message adds to a message's size on the wire."""
    return 1 + max(1, (length.bit_length() + 6) // 7) + length


def max_message_bytes(config: ServerConfig) -> int:
    """The configured limit, or (0) the larger of 64 MiB and the largest image plus 1 MiB of envelope."""
    return config.grpc_max_message_bytes or max(64 * _MB, config.max_image_bytes + _MB)


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    limit = max_message_bytes(config)
    return [
        *_connection_age(config),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_concurrent_streams", config.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", config.grpc_keepalive_time),
        ("grpc.keepalive_timeout_ms", config.grpc_keepalive_timeout),
        ("grpc.keepalive_permit_without_calls", int(config.grpc_keepalive_permit_without_calls)),
        (
            "grpc.http2.min_recv_ping_interval_without_data_ms",
            config.grpc_http2_min_recv_ping_interval,
        ),
        ("grpc.http2.max_ping_strikes", config.grpc_http2_max_ping_strikes),
    ]


def _connection_age(config: ServerConfig) -> list[tuple[str, int]]:
    options = []
    if config.grpc_max_connection_age_ms:
        options.append(("grpc.max_connection_age_ms", config.grpc_max_connection_age_ms))
        if config.grpc_max_connection_age_grace_ms:
            options.append(("grpc.max_connection_age_grace_ms", config.grpc_max_connection_age_grace_ms))
    return options
