"""Every setting of `resnet-serve serve`, declared once: type, default, limits and help per field.

The models are frozen pydantic models, so the settings the server runs with are checked where they are built
and travel to another process exactly: `ServerConfig.model_validate_json(config.model_dump_json())`
gives back an equal config. Flags, RESNET_SERVE_* variables, TOML keys and `--help` are derived from these
fields (server/config/options.py); server/config/load.py merges the sources.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WrapSerializer,
    field_serializer,
    model_validator,
)

from resnet_serve.formats.decode import ALLOWED_FORMATS, DECODERS, DEFAULT_FORMATS, PILLOW_MAX_PIXELS
from resnet_serve.formats.environment import TOKEN_ENV
from resnet_serve.formats.ready import WILDCARD_ADDRESSES
from resnet_serve.formats.repository import INFERENCE_PRECISIONS, PERFORMANCE_MODES
from resnet_serve.server.config.options import Alias, Float, Int, IntList, one_of, option
from resnet_serve.server.observability.logging import LOG_FORMATS, LOG_LEVELS
from resnet_serve.server.security import model_control, restrict
from resnet_serve.server.security.files import SecurityError
from resnet_serve.server.security.restrict import Restriction
from resnet_serve.server.security.tokens import check_token

VERSION_POLICIES = ("latest", "all", "specific")
_FROZEN = ConfigDict(frozen=True, extra="forbid")


_ALLOWED = tuple(f.lower() for f in ALLOWED_FORMATS)  # formats/decode.py's allowlist, as options spell it


def _image_formats(text: str) -> str:
    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    if not names or any(name not in _ALLOWED for name in names):
        raise ValueError(f"expected some of {', '.join(_ALLOWED)}, comma-separated, got {text!r}")
    return text


def _workers(text: str) -> str:
    text = str(text).strip().lower()
    if text != "auto" and not (text.isdigit() and 1 <= int(text) <= 256):
        raise ValueError(f"expected auto or a whole number from 1 to 256, got {text!r}")
    return text


def _groups_in_order(value: Any, handler: SerializerFunctionWrapHandler) -> Any:
    """In JSON each restriction's groups are sorted: a frozenset's order follows string hashes, which differ
    from one process to the next, so the same settings gave different JSON (what a worker process is sent)."""
    return [{**item, "groups": sorted(item["groups"])} for item in handler(value)]


def _restrictions(value: Any) -> Any:
    """Specs as text: a flag's, a TOML string or list of strings; the env variable separates them with ';'."""
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list | tuple) and all(isinstance(t, str) for t in texts):
        return tuple(r for text in texts for r in restrict.parse_restrictions(text))
    return value


class BatchingConfig(BaseModel):
    """How one model's dynamic batcher forms batches (docs/server.md, "Batching")."""

    model_config = _FROZEN

    max_batch_size: Int = option(32, "N", "largest batch (in rows) the batcher forms", ge=1)
    max_queue_delay_us: Int = option(
        0,
        "US",
        "longest time, in microseconds (Triton's max_queue_delay_microseconds), the oldest queued request "
        "waits for a batch to fill (0: run whatever is queued as soon as an instance is free)",
        alias=Alias("max_queue_delay_ms", 1000, "MS", "milliseconds"),
        ge=0,
    )
    preferred_batch_sizes: IntList = option(
        (), "N", "batch sizes dispatched at once when the queue can form them: 4,8 or 4 8"
    )
    max_queue_size: Int = option(
        1024, "N", "queued requests per model version; beyond it requests fail at once with UNAVAILABLE", ge=1
    )
    timeout_ms: Float = option(
        0.0, "MS", "server-side queueing timeout per request (0: none; gRPC deadlines still apply)", ge=0
    )

    @model_validator(mode="before")
    @classmethod
    def _queue_delay_in_ms(cls, data: Any) -> Any:
        """`max_queue_delay_ms=2` (the alias) where a BatchingConfig is built in code."""
        if isinstance(data, dict) and "max_queue_delay_ms" in data:
            rest = {k: v for k, v in data.items() if k != "max_queue_delay_ms"}
            return {**rest, "max_queue_delay_us": round(float(data["max_queue_delay_ms"]) * 1000)}
        return data

    @model_validator(mode="after")
    def _preferred_sizes_fit(self) -> BatchingConfig:
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes must lie in 1..{self.max_batch_size}, got {bad}")
        return self

    @property
    def max_queue_delay_ms(self) -> float:
        return self.max_queue_delay_us / 1000.0


class ModelSettings(BaseModel):
    """One served model: where it lives, which versions to serve, and how to run it."""

    model_config = _FROZEN

    name: str
    path: str = ""  # an .onnx file (served as version "1"), or a directory of numbered versions
    backend: str = option(
        "auto",
        "NAME",
        "inference backend: auto (by file extension), onnxruntime, tensorrt, torch or openvino",
    )
    device: str = option("cpu", "DEVICE", "ONNX Runtime execution provider: cpu, cuda, tensorrt or auto")
    instances: Int = option(
        1,
        "N",
        "execution instances per model version (each its own session and thread; OpenVINO: one stream each)",
        ge=1,
    )
    intra_op_threads: Int = option(
        0,
        "N",
        "ONNX Runtime intra-op threads per instance; OpenVINO: instances × N threads (0: cores / instances)",
        ge=0,
    )
    intra_op_spinning: bool = option(
        False,
        "BOOL",
        "let ONNX Runtime threads spin-wait between parallel sections (helps only on otherwise idle cores)",
    )
    version_policy: Annotated[str, one_of(VERSION_POLICIES)] = option(
        "latest", "POLICY", "which numbered versions to serve: latest, all or specific"
    )
    versions: IntList = option((), "N", "versions to serve with version_policy=specific: 1,3 or 1 3")
    # version_policy=latest serves this many of the highest versions (set by a config.pbtxt only)
    latest_versions: Annotated[Int, Field(ge=1)] = 1
    warmup: bool = option(
        True,
        "BOOL",
        "warm each version up before it is marked ready: config.pbtxt's model_warmup, else zero batches "
        "(a variable dimension gets 1)",
    )
    # OpenVINO (docs/server.md "Backends")
    inference_precision: Annotated[str, one_of(INFERENCE_PRECISIONS)] = option(
        "fp32",
        "PRECISION",
        "precision the runtime computes in: fp32, or bf16 (openvino backend on a CPU with BF16 only)",
    )
    performance_mode: Annotated[str, one_of(PERFORMANCE_MODES)] = option(
        "latency", "MODE", "OpenVINO performance hint: latency or throughput (streams = instances either way)"
    )
    batching: BatchingConfig = BatchingConfig()
    # Keys the server config set for this model itself ([models.NAME]); they win over a repository
    # model's config.json, which in turn wins over the server-wide model defaults.
    explicit: frozenset[str] = frozenset()

    @field_serializer("explicit", when_used="json")
    def _explicit_in_order(self, explicit: frozenset[str]) -> list[str]:
        """A set's order follows string hashing and insertion history, so it varies between processes: sorted,
        the JSON a parent passes to a child process is the same bytes every time."""
        return sorted(explicit)

    @model_validator(mode="after")
    def _specific_needs_versions(self) -> ModelSettings:
        if self.version_policy == "specific" and not self.versions:
            raise ValueError("version_policy=specific needs versions, e.g. versions = [1, 3]")
        return self


class ServerConfig(BaseModel):
    """Everything `resnet-serve serve` needs; built by `load_config`."""

    model_config = _FROZEN

    host: str = option("0.0.0.0", "ADDR", "address to listen on")
    grpc_port: Int = option(
        8001,
        "PORT",
        "gRPC port: image API, KServe v2, health and reflection (0: a free port)",
        ge=0,
        le=65535,
    )
    http_port: Int = option(
        8000,
        "PORT",
        "HTTP/REST port: KServe v2 (Triton's HTTP API) and POST /v1/models/NAME/classify "
        "(0: a free port, -1: none)",
        ge=-1,
        le=65535,
    )
    metrics_port: Int = option(
        8002, "PORT", "Prometheus /metrics port (0: a free port, -1: no endpoint)", ge=-1, le=65535
    )
    metrics: bool = option(True, "BOOL", "record metrics at all (false makes every metric call a no-op)")
    model_repository: str = option(
        "", "DIR", "serve every model directory in DIR (`resnet-serve package` layout, or numbered versions)"
    )
    models: tuple[ModelSettings, ...] = ()
    # The settings a model found in the repository (at start-up or by an explicit load) is served with.
    model_defaults: ModelSettings = ModelSettings(name="")
    default_model: str = option(
        "",
        "NAME",
        "model used when an image-API request names none (none: the first model); a KServe request names its "
        "own",
    )
    preprocess_threads: Int = option(0, "N", "image decoding threads (0: one per core)", ge=0)
    max_image_bytes: Int = option(20 * 1024 * 1024, "BYTES", "largest encoded image accepted, in bytes", ge=1)
    max_image_pixels: Int = option(
        40_000_000,
        "PIXELS",
        f"largest decoded image accepted (width × height), checked before decoding; at most "
        f"{PILLOW_MAX_PIXELS} (Pillow's own ceiling)",
        ge=1,
        le=PILLOW_MAX_PIXELS,
    )
    jpeg_draft: bool = option(
        True,
        "BOOL",
        "decode large JPEGs at reduced size (DCT scaling) when the model's input is much smaller",
    )
    # Image decoding (docs/server.md, "Image decoding"): the format allowlist, the decoder, the memory budget.
    image_formats: Annotated[str, AfterValidator(_image_formats)] = option(
        ",".join(f.lower() for f in DEFAULT_FORMATS),
        "LIST",
        f"image formats the server decodes, comma-separated, from {', '.join(_ALLOWED)} "
        "(first frame of animations; nothing else is ever opened: no EPS/PDF, no ICO)",
    )
    image_decoder: Annotated[str, one_of(DECODERS)] = option(
        "pillow",
        "NAME",
        "JPEG decoder: pillow (measured fastest on CPU), turbo (simplejpeg: the `turbo` extra) or "
        "nvimgcodec (GPU, batched per request: the `gpu-decode` extra)",
    )
    max_decode_memory_mib: Int = option(
        1024,
        "MIB",
        "memory all concurrent image decodes may hold, admitted by each image's header; "
        "beyond it decodes wait (up to the deadline), then fail RESOURCE_EXHAUSTED",
        ge=1,
    )
    workers: Annotated[str, BeforeValidator(str), AfterValidator(_workers)] = option(
        "auto",
        "N",
        "worker processes that answer requests, sharing the ports (SO_REUSEPORT), in front of one engine "
        "process that owns the models and batches for them all; auto: one per usable core (the affinity "
        "mask, limited by the cgroup CPU quota); 1: one process doing everything (docs/server.md, Sizing)",
    )
    grace_period_s: Float = option(
        15.0, "SECONDS", "on SIGTERM/SIGINT, time allowed for accepted requests to finish", ge=0
    )
    ready_file: str = option(
        "",
        "FILE",
        "once ready, write FILE (atomically): JSON with the pid, the gRPC, HTTP and metrics ports and the "
        "models, for whoever started the server; removed at exit (formats/ready.py, docs/server.md)",
    )
    exit_on_error: bool = option(
        True,
        "BOOL",
        "exit at start-up when a model fails to load or the repository is empty "
        "(false: serve what loads, unready until every model does, as Triton's --exit-on-error=false)",
    )
    triton_metrics: bool = option(
        True,
        "BOOL",
        "also export Triton's metric names (nv_inference_request_success, ...) for Triton dashboards",
    )
    # Security and transport limits (server/security/, docs/security.md); Triton's option names.
    grpc_use_ssl: bool = option(False, "BOOL", "serve the gRPC port over TLS (needs --grpc-server-cert/-key)")
    grpc_server_cert: str = option("", "PEM", "PEM certificate chain of the gRPC port (reloaded on SIGHUP)")
    grpc_server_key: str = option("", "PEM", "PEM private key of --grpc-server-cert (unencrypted)")
    grpc_root_cert: str = option(
        "", "PEM", "PEM CA bundle that client certificates must chain to (mutual TLS)"
    )
    grpc_use_ssl_mutual: bool = option(
        False, "BOOL", "require a client certificate signed by --grpc-root-cert"
    )
    grpc_restricted_protocol: Annotated[
        tuple[Restriction, ...],
        BeforeValidator(_restrictions),
        WrapSerializer(_groups_in_order, when_used="json"),
    ] = option(
        (),
        "GROUPS:KEY=VALUE",
        "require header triton-grpc-protocol-KEY=VALUE for these protocol groups (metadata, inference, "
        "shared-memory, model-config, model-repository, statistics, trace, logging); repeatable; "
        "the env variable takes several, separated by ';'",
        repeat=True,
        secret=True,
    )
    model_control_mode: Annotated[str, AfterValidator(model_control.parse_mode)] = option(
        "none",
        "MODE",
        "none: RepositoryModelLoad/Unload are refused; explicit: clients may load and unload models; "
        "poll: the server loads, reloads and unloads models as the repository changes",
    )
    auth_token_file: str = option(
        "",
        "FILE",
        "file of bearer tokens (one per line) the image API requires; re-read on SIGHUP "
        f"(env {TOKEN_ENV} adds one token)",
    )
    auth_token: str = option(
        "", "TOKEN", "one bearer token the image API requires (env only: a flag would show in `ps`)",
        flag=False, toml=False, secret=True, repr=False,
    )  # fmt: skip
    grpc_max_message_bytes: Int = option(
        0,
        "BYTES",
        "largest gRPC message received or sent (0: 64 MiB or max_image_bytes + 1 MiB, the larger)",
        ge=0,
    )
    grpc_max_concurrent_streams: Int = option(
        100_000,
        "N",
        "concurrent calls per client connection; near the cap gRPC refuses calls (UNAVAILABLE) rather than "
        "queue them, so it sits above what any client sends (Triton has none)",
        ge=1,
    )
    grpc_keepalive_time: Int = option(
        7_200_000, "MS", "ms between the server's keepalive pings to an idle client", ge=1
    )
    grpc_keepalive_timeout: Int = option(20_000, "MS", "ms to wait for a keepalive ping's answer", ge=1)
    grpc_keepalive_permit_without_calls: bool = option(
        False, "BOOL", "accept client keepalive pings on a connection with no call open"
    )
    grpc_http2_min_recv_ping_interval: Int = option(
        300_000,
        "MS",
        "ms a client must leave between pings while it sends no data; faster pings are strikes",
        ge=0,
    )
    grpc_http2_max_ping_strikes: Int = option(
        2, "N", "strikes before the server closes a connection that pings too often (0: never)", ge=0
    )
    grpc_max_connection_age_ms: Int = option(
        0,
        "MS",
        "ms after which a client connection gets GOAWAY and reconnects, re-resolving a DNS name, so "
        "DNS-balanced clients find new replicas (0: never)",
        ge=0,
    )
    grpc_max_connection_age_grace_ms: Int = option(
        0,
        "MS",
        "ms the calls open at that GOAWAY get to finish before the connection is closed (0: no limit)",
        ge=0,
    )
    openvino_cache_dir: str = option(
        "~/.cache/resnet-serve/openvino",
        "DIR",
        'OpenVINO compiled-model cache, so a restart does not compile again ("": no cache)',
    )
    # Triton's endpoint, readiness and repository options (docs/server.md, "Triton's options").
    grpc_address: str = option("", "ADDR", "address the gRPC port listens on (none: --host)")
    http_address: str = option("", "ADDR", "address the HTTP/REST port listens on (none: --host)")
    metrics_address: str = option("", "ADDR", "address the metrics port listens on (none: --host)")
    allow_grpc: bool = option(True, "BOOL", "serve the gRPC endpoint at all")
    allow_http: bool = option(True, "BOOL", "serve the HTTP/REST endpoint at all")
    allow_metrics: bool = option(True, "BOOL", "serve the Prometheus metrics endpoint at all")
    strict_readiness: bool = option(
        True,
        "BOOL",
        "ready only while every model meant to be served has a ready version (false: ready whenever the "
        "server is live and accepting requests)",
    )
    repository_poll_secs: Float = option(
        15.0, "SECONDS", "with --model-control-mode poll: seconds between scans of the model repository", gt=0
    )

    def listen_address(self, endpoint: str) -> str:
        """The address `endpoint` ("grpc", "http", "metrics") listens on: its own --ENDPOINT-address, else
        --host."""
        own: str = getattr(self, f"{endpoint}_address")
        return own or self.host

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        """The combinations; the certificate and token files themselves are read when the server starts
        (server/security_policy.py)."""
        if self.grpc_use_ssl:
            if not self.grpc_server_cert or not self.grpc_server_key:
                raise ValueError("grpc_use_ssl needs both grpc_server_cert and grpc_server_key")
            if self.grpc_use_ssl_mutual and not self.grpc_root_cert:
                raise ValueError(
                    "grpc_use_ssl_mutual needs grpc_root_cert, the CA client certificates chain to"
                )
        else:
            given = [k for k in ("grpc_server_cert", "grpc_server_key", "grpc_root_cert") if getattr(self, k)]
            if self.grpc_use_ssl_mutual:
                given.append("grpc_use_ssl_mutual")
            if given:
                # Serving plaintext while the operator configured certificates would be the worst surprise.
                raise ValueError(f"{', '.join(given)} set but grpc_use_ssl is false: set --grpc-use-ssl true")
        restrict.check_disjoint(self.grpc_restricted_protocol)
        if self.auth_token:
            try:
                check_token(self.auth_token, TOKEN_ENV)
            except SecurityError as exc:
                raise ValueError(str(exc)) from None
        if 0 < self.grpc_max_message_bytes <= self.max_image_bytes:
            raise ValueError(
                f"grpc_max_message_bytes ({self.grpc_max_message_bytes}) must exceed max_image_bytes "
                f"({self.max_image_bytes}), or no image of the largest accepted size could arrive"
            )
        if self.grpc_max_connection_age_grace_ms and not self.grpc_max_connection_age_ms:
            raise ValueError(
                "grpc_max_connection_age_grace_ms needs grpc_max_connection_age_ms (0: no age limit)"
            )
        if not (self.allow_grpc or self.allow_http):
            raise ValueError(
                "allow_grpc and allow_http are both false: no endpoint would answer inference requests"
            )
        if model_control.polls(self.model_control_mode) and not self.model_repository:
            raise ValueError("model_control_mode poll needs a model repository to poll (--model-repository)")
        if not self.host.strip():
            raise ValueError("host is empty: give the address to listen on (0.0.0.0: every IPv4 address)")
        self._distinct_ports()
        return self

    def _distinct_ports(self) -> None:
        """Two endpoints on one fixed port of one address: refused here, before any model loads. With worker
        processes both would bind it (SO_REUSEPORT) and the kernel would split the connections between the
        two protocols: ready, and half the clients answered by the wrong one."""
        fixed = [
            (name, self.listen_address(name), port)
            for name, port, on in (
                ("grpc", self.grpc_port, self.allow_grpc),
                ("http", self.http_port, self.allow_http),
                ("metrics", self.metrics_port, self.allow_metrics),
            )
            if on and port > 0
        ]
        for i, (first, first_at, port) in enumerate(fixed):
            for second, second_at, other in fixed[i + 1 :]:
                if port == other and (first_at == second_at or {first_at, second_at} & WILDCARD_ADDRESSES):
                    raise ValueError(
                        f"{first}_port and {second}_port are both {port}: each endpoint needs its own port"
                    )


class LogSettings(BaseModel):
    """How the server logs; read before the config file, so that its errors are logged as asked."""

    model_config = _FROZEN

    log_format: Annotated[str, one_of(LOG_FORMATS)] = option(
        "text", "FORMAT", "text for people, json (one object per line, with request_id) for log collectors"
    )
    log_level: Annotated[str, one_of(LOG_LEVELS, fold_case=True)] = option(
        "info", "LEVEL", "debug adds one access-log line per request; info logs nothing per request"
    )


def _model_specs(value: Any) -> Any:
    """--model given several times, or the env variable's comma-separated list."""
    return [s for s in value.split(",") if s] if isinstance(value, str) else value


def _name_and_path(spec: str) -> str:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {spec!r}")
    return spec


class Inputs(BaseModel):
    """Where the rest of the settings come from: a TOML file, and models named on the command line."""

    model_config = _FROZEN

    config: str = option("", "FILE", 'TOML configuration file (docs/server.md, "Configuration")')
    model: Annotated[
        tuple[Annotated[str, AfterValidator(_name_and_path)], ...], BeforeValidator(_model_specs)
    ] = option(
        (),
        "NAME=PATH",
        "serve an .onnx file (version 1) or a directory of numbered versions under NAME; repeatable "
        "(the env variable takes several, comma-separated)",
        repeat=True,
    )
