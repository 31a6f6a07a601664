"""Server configuration: one TOML file, overridden by environment variables, overridden by flags.

Precedence, lowest first: built-in defaults < the TOML file's `[server]` and `[model_defaults]` tables <
`RESNET_SERVE_<OPTION>` environment variables < command-line flags. A model's own `[models.NAME]` table
overrides the model defaults for that model only, because it is the more specific statement.

    [server]
    grpc_port = 8001
    model_repository = "artifacts/repository"

    [model_defaults]
    max_batch_size = 32
    max_queue_delay_ms = 2.0

    [models.digits]
    path = "artifacts/digits/model.onnx"
    instances = 2

Every option is described once in `OPTIONS`; the flags, their `--help` text and the env variables all come
from that table, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.formats.errors import UserError
from resnet_serve.formats.repository import INFERENCE_PRECISIONS, PERFORMANCE_MODES
from resnet_serve.server.security import model_control, restrict
from resnet_serve.server.security.files import SecurityError
from resnet_serve.server.security.restrict import Restriction
from resnet_serve.server.security.tokens import check_token

ENV_PREFIX = "RESNET_SERVE_"


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message names the option and what it expects."""


@dataclass(frozen=True)
class BatchingConfig:
    """How one model's dynamic batcher forms batches (docs/server.md, "Batching")."""

    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    timeout_ms: float = 0.0  # 0: no server-side timeout (a client's gRPC deadline still applies)


@dataclass(frozen=True)
class ModelSettings:
    """One served model: where it lives, which versions to serve, and how to run it."""

    name: str
    path: str = ""  # an .onnx file (served as version "1"), or a directory of numbered versions
    backend: str = "auto"  # auto: by file extension (.onnx → onnxruntime, .plan/.engine → tensorrt)
    device: str = "cpu"
    instances: int = 1
    intra_op_threads: int = 0  # 0: the machine's cores divided among the instances
    intra_op_spinning: bool = False
    version_policy: str = "latest"  # latest | all | specific
    versions: tuple[int, ...] = ()  # for version_policy = "specific"
    latest_versions: int = 1  # version_policy = "latest" serves this many of the highest (config.pbtxt)
    warmup: bool = True
    inference_precision: str = "fp32"  # bf16: OpenVINO on a CPU with BF16 only; never chosen silently
    performance_mode: str = "latency"  # OpenVINO's PERFORMANCE_HINT
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    # Keys the server config set for this model itself ([models.NAME]); they win over a repository
    # model's config.json, which in turn wins over the server-wide model defaults.
    explicit: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ServerConfig:
    """Everything `resnet-serve serve` needs; built by `load_config`."""

    host: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int = 8000  # KServe v2 over HTTP/REST (server/http/); -1: none
    metrics_port: int = 8002  # -1: no metrics endpoint
    metrics: bool = True
    model_repository: str = ""
    models: tuple[ModelSettings, ...] = ()
    # The settings a model found in the repository (at start-up or by an explicit load) is served with.
    model_defaults: ModelSettings = field(default_factory=lambda: ModelSettings(name=""))
    default_model: str = ""
    preprocess_threads: int = 0  # 0: one per core
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    jpeg_draft: bool = True
    # Image decoding (docs/server.md, "Image decoding"): the format allowlist, the decoder, the memory budget.
    image_formats: str = "jpeg,png,webp,gif,bmp"
    image_decoder: str = "pillow"
    max_decode_memory_mib: int = 1024
    grace_period_s: float = 15.0
    exit_on_error: bool = True  # false: a model that fails to load is logged and left unready (Triton's flag)
    triton_metrics: bool = True  # also export Triton's nv_inference_* names (docs/metrics.md)
    # Security and transport limits (server/security/, docs/security.md); Triton's option names.
    grpc_use_ssl: bool = False
    grpc_server_cert: str = ""
    grpc_server_key: str = ""
    grpc_root_cert: str = ""
    grpc_use_ssl_mutual: bool = False
    grpc_restricted_protocol: tuple[Restriction, ...] = ()
    model_control_mode: str = "none"
    auth_token_file: str = ""
    auth_token: str = field(default="", repr=False)  # from RESNET_SERVE_AUTH_TOKEN only, never a flag
    grpc_max_message_bytes: int = 0  # 0: max(64 MiB, max_image_bytes + 1 MiB)
    grpc_max_concurrent_streams: int = 256
    grpc_max_connection_age_ms: int = 0  # 0: connections live as long as clients keep them (gRPC's default)
    grpc_max_connection_age_grace_ms: int = 0  # 0: calls open at the GOAWAY may finish however long
    grpc_keepalive_time: int = 7_200_000  # ms, as Triton's flags
    grpc_keepalive_timeout: int = 20_000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_min_recv_ping_interval: int = 300_000
    grpc_http2_max_ping_strikes: int = 2
    openvino_cache_dir: str = "~/.cache/resnet-serve/openvino"  # "": compile at every load
    ready_file: str = ""  # "": none; else formats/ready.py's JSON, written once ready, removed at exit


# ---------------------------------------------------------------------------------------------- options


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.replace(" ", "").split(",") if part)


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[str], Any]
    help: str
    scope: str  # "server" or "model"
    metavar: str = ""
    repeat: bool = False  # the flag may be given several times; `parse` returns a tuple to append

    @property
    def default(self) -> Any:
        if self.scope == "server":
            return getattr(ServerConfig(), self.key)
        target: Any = BatchingConfig() if self.key in _BATCHING_KEYS else ModelSettings(name="")
        return getattr(target, self.key)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


_BATCHING_KEYS = {f.name for f in dataclasses.fields(BatchingConfig)}

OPTIONS: tuple[Option, ...] = (
    Option("host", str, "address to listen on", "server", "ADDR"),
    Option(
        "grpc_port",
        int,
        "gRPC port: image API, KServe v2, health and reflection (0: a free port)",
        "server",
        "PORT",
    ),
    Option(
        "http_port",
        int,
        "HTTP/REST port: KServe v2 (Triton's HTTP API) and POST /v1/models/NAME/classify "
        "(0: a free port, -1: none)",
        "server",
        "PORT",
    ),
    Option(
        "metrics_port", int, "Prometheus /metrics port (0: a free port, -1: no endpoint)", "server", "PORT"
    ),
    Option(
        "metrics", _bool, "record metrics at all (false makes every metric call a no-op)", "server", "BOOL"
    ),
    Option(
        "model_repository",
        str,
        "serve every model directory in DIR (`resnet-serve package` layout, or numbered versions)",
        "server",
        "DIR",
    ),
    Option(
        "default_model",
        str,
        "model used when a request names none (none: the first model)",
        "server",
        "NAME",
    ),
    Option("preprocess_threads", int, "image decoding threads (0: one per core)", "server", "N"),
    Option("max_image_bytes", int, "largest encoded image accepted, in bytes", "server", "BYTES"),
    Option(
        "max_image_pixels",
        int,
        "largest decoded image accepted (width × height), checked before decoding",
        "server",
        "PIXELS",
    ),
    Option(
        "jpeg_draft",
        _bool,
        "decode large JPEGs at reduced size (DCT scaling) when the model's input is much smaller",
        "server",
        "BOOL",
    ),
    Option(
        "image_formats",
        str,
        "image formats the server decodes, comma-separated, from jpeg, png, webp, gif, bmp, tiff, ppm "
        "(first frame of animations; nothing else is ever opened: no EPS/PDF, no ICO)",
        "server",
        "LIST",
    ),
    Option(
        "image_decoder",
        str,
        "JPEG decoder: pillow (measured fastest on CPU), turbo (simplejpeg: the `turbo` extra) or "
        "nvimgcodec (GPU, batched per request: the `gpu-decode` extra)",
        "server",
        "NAME",
    ),
    Option(
        "max_decode_memory_mib",
        int,
        "memory all concurrent image decodes may hold, admitted by each image's header; "
        "beyond it decodes wait (up to the deadline), then fail RESOURCE_EXHAUSTED",
        "server",
        "MIB",
    ),
    Option(
        "grace_period_s",
        float,
        "on SIGTERM/SIGINT, time allowed for accepted requests to finish",
        "server",
        "SECONDS",
    ),
    # -- security and transport limits (server/security/, docs/security.md) --
    Option(
        "grpc_use_ssl",
        _bool,
        "serve the gRPC port over TLS (needs --grpc-server-cert/-key)",
        "server",
        "BOOL",
    ),
    Option(
        "grpc_server_cert",
        str,
        "PEM certificate chain of the gRPC port (reloaded on SIGHUP)",
        "server",
        "PEM",
    ),
    Option("grpc_server_key", str, "PEM private key of --grpc-server-cert (unencrypted)", "server", "PEM"),
    Option(
        "grpc_root_cert",
        str,
        "PEM CA bundle that client certificates must chain to (mutual TLS)",
        "server",
        "PEM",
    ),
    Option(
        "grpc_use_ssl_mutual",
        _bool,
        "require a client certificate signed by --grpc-root-cert",
        "server",
        "BOOL",
    ),
    Option(
        "grpc_restricted_protocol",
        restrict.parse_restrictions,
        "require header triton-grpc-protocol-KEY=VALUE for these protocol groups (metadata, inference, "
        "shared-memory, model-config, model-repository, statistics, trace, logging); repeatable; "
        "the env variable takes several, separated by ';'",
        "server",
        "GROUPS:KEY=VALUE",
        repeat=True,
    ),
    Option(
        "model_control_mode",
        model_control.parse_mode,
        "none: RepositoryModelLoad/Unload are refused; explicit: clients may load and unload models",
        "server",
        "MODE",
    ),
    Option(
        "auth_token_file",
        str,
        "file of bearer tokens (one per line) the image API requires; re-read on SIGHUP "
        "(env RESNET_SERVE_AUTH_TOKEN adds one token)",
        "server",
        "FILE",
    ),
    Option(
        "grpc_max_message_bytes",
        int,
        "largest gRPC message received or sent (0: 64 MiB or max_image_bytes + 1 MiB, the larger)",
        "server",
        "BYTES",
    ),
    Option("grpc_max_concurrent_streams", int, "concurrent calls per client connection", "server", "N"),
    Option(
        "grpc_keepalive_time",
        int,
        "ms between the server's keepalive pings to an idle client",
        "server",
        "MS",
    ),
    Option("grpc_keepalive_timeout", int, "ms to wait for a keepalive ping's answer", "server", "MS"),
    Option(
        "grpc_keepalive_permit_without_calls",
        _bool,
        "accept client keepalive pings on a connection with no call open",
        "server",
        "BOOL",
    ),
    Option(
        "grpc_http2_min_recv_ping_interval",
        int,
        "ms a client must leave between pings while it sends no data; faster pings are strikes",
        "server",
        "MS",
    ),
    Option(
        "grpc_http2_max_ping_strikes",
        int,
        "strikes before the server closes a connection that pings too often (0: never)",
        "server",
        "N",
    ),
    Option(
        "grpc_max_connection_age_ms",
        int,
        "ms after which a client connection gets GOAWAY and reconnects, re-resolving a DNS name, so "
        "DNS-balanced clients find new replicas (0: never)",
        "server",
        "MS",
    ),
    Option(
        "grpc_max_connection_age_grace_ms",
        int,
        "ms the calls open at that GOAWAY get to finish before the connection is closed (0: no limit)",
        "server",
        "MS",
    ),
    Option(
        "exit_on_error",
        _bool,
        "exit at start-up when a model fails to load or the repository is empty "
        "(false: serve what loads, unready until every model does, as Triton's --exit-on-error=false)",
        "server",
        "BOOL",
    ),
    Option(
        "ready_file",
        str,
        "once ready, write FILE (atomically): JSON with the pid, the gRPC, HTTP and metrics ports and "
        "the models, for whoever started the server (removed at exit; docs/server.md)",
        "server",
        "FILE",
    ),
    Option(
        "triton_metrics",
        _bool,
        "also export Triton's metric names (nv_inference_request_success, ...) for Triton dashboards",
        "server",
        "BOOL",
    ),
    Option(
        "backend",
        str,
        "inference backend: auto (by file extension), onnxruntime, tensorrt, torch or openvino",
        "model",
        "NAME",
    ),
    Option("device", str, "ONNX Runtime execution provider: cpu, cuda, tensorrt or auto", "model", "DEVICE"),
    Option(
        "instances",
        int,
        "execution instances per model version (each its own session and thread; OpenVINO: one stream each)",
        "model",
        "N",
    ),
    Option(
        "intra_op_threads",
        int,
        "ONNX Runtime intra-op threads per instance; OpenVINO: instances × N threads (0: cores / instances)",
        "model",
        "N",
    ),
    Option(
        "intra_op_spinning",
        _bool,
        "let ONNX Runtime threads spin-wait between parallel sections (helps only on otherwise idle cores)",
        "model",
        "BOOL",
    ),
    Option(
        "version_policy", str, "which numbered versions to serve: latest, all or specific", "model", "POLICY"
    ),
    Option(
        "versions",
        _int_list,
        "versions to serve with version_policy=specific, comma-separated",
        "model",
        "LIST",
    ),
    Option(
        "warmup",
        _bool,
        "run zero batches at every batch size before a model is marked ready",
        "model",
        "BOOL",
    ),
    # OpenVINO (issue #17; docs/server.md "Backends")
    Option(
        "inference_precision",
        str,
        "precision the runtime computes in: fp32, or bf16 (openvino backend on a CPU with BF16 only)",
        "model",
        "PRECISION",
    ),
    Option(
        "performance_mode",
        str,
        "OpenVINO performance hint: latency or throughput (streams = instances either way)",
        "model",
        "MODE",
    ),
    Option(
        "openvino_cache_dir",
        str,
        'OpenVINO compiled-model cache, so a restart does not compile again ("": no cache)',
        "server",
        "DIR",
    ),
    Option("max_batch_size", int, "largest batch (in rows) the batcher forms", "model", "N"),
    Option(
        "max_queue_delay_ms",
        float,
        "longest time the oldest queued request waits for a batch to fill "
        "(0: run whatever is queued as soon as an instance is free)",
        "model",
        "MS",
    ),
    Option(
        "preferred_batch_sizes",
        _int_list,
        "batch sizes dispatched at once when the queue can form them, comma-separated",
        "model",
        "LIST",
    ),
    Option(
        "max_queue_size",
        int,
        "queued requests per model version; beyond it requests fail at once with UNAVAILABLE",
        "model",
        "N",
    ),
    Option(
        "timeout_ms",
        float,
        "server-side queueing timeout per request (0: none; gRPC deadlines still apply)",
        "model",
        "MS",
    ),
)
_BY_KEY = {o.key: o for o in OPTIONS}
_MODEL_TABLE_KEYS = {o.key for o in OPTIONS if o.scope == "model"} | {"path"}


def load_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Merge defaults, the TOML file, env vars and flags into a validated ServerConfig. ``flags`` holds the
    options given on the command line only (keyed as in OPTIONS, plus ``config`` and ``model``)."""
    env = os.environ if env is None else env
    flags = flags or {}
    config_path = flags.get("config") or env.get(ENV_PREFIX + "CONFIG", "")
    toml: dict[str, Any] = _read_toml(Path(config_path)) if config_path else {}

    server_values: dict[str, Any] = {}
    model_defaults: dict[str, Any] = {}
    for section, target in (("server", server_values), ("model_defaults", model_defaults)):
        table = toml.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key, value in table.items():
            opt = _BY_KEY.get(key)
            if opt is None or opt.scope != ("server" if section == "server" else "model"):
                raise ConfigError(f"unknown option {key!r} in [{section}] of {config_path}")
            target[key] = _coerce(opt, value, f"[{section}] {key}")
    for opt in OPTIONS:
        target = server_values if opt.scope == "server" else model_defaults
        if opt.env in env:
            try:
                target[opt.key] = opt.parse(env[opt.env])
            except ValueError as exc:
                raise ConfigError(f"{opt.env}: {exc}") from None
        if opt.key in flags:
            target[opt.key] = tuple(flags[opt.key]) if opt.repeat else flags[opt.key]

    models: dict[str, dict[str, Any]] = {}
    tables = toml.get("models", {})
    if not isinstance(tables, dict):
        raise ConfigError("[models] must hold one table per model, e.g. [models.digits]")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[models.{name}] must be a table")
        unknown = set(table) - _MODEL_TABLE_KEYS
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))} in [models.{name}]")
        models[name] = {
            k: (v if k == "path" else _coerce(_BY_KEY[k], v, f"[models.{name}] {k}"))
            for k, v in table.items()
        }
    specs = list(flags.get("model", []))
    if env.get(ENV_PREFIX + "MODEL"):
        specs = [s for s in env[ENV_PREFIX + "MODEL"].split(",") if s] + specs
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--model expects NAME=PATH, got {spec!r}")
        models.setdefault(name, {})["path"] = path
    for name, values in models.items():
        if not values.get("path"):
            raise ConfigError(
                f"model {name!r} has no path (set path in [models.{name}] or --model {name}=PATH)"
            )

    built = tuple(
        _model_settings(name, {**model_defaults, **values}, frozenset(values) - {"path"})
        for name, values in models.items()
    )
    config = ServerConfig(
        **server_values,
        models=built,
        model_defaults=_model_settings("", model_defaults),
        auth_token=env.get(ENV_PREFIX + "AUTH_TOKEN", ""),
    )
    return validate(config)


def _model_settings(
    name: str, values: Mapping[str, Any], explicit: frozenset[str] = frozenset()
) -> ModelSettings:
    batching = {k: v for k, v in values.items() if k in _BATCHING_KEYS}
    rest = {k: v for k, v in values.items() if k not in _BATCHING_KEYS}
    config = ModelSettings(name=name, batching=BatchingConfig(**batching), explicit=explicit, **rest)
    return _validate_model(config)


def with_values(config: ModelSettings, values: Mapping[str, Any]) -> ModelSettings:
    """`config` with some model options replaced (flat keys, as in OPTIONS), validated again."""
    batching = {k: v for k, v in values.items() if k in _BATCHING_KEYS}
    rest = {k: v for k, v in values.items() if k not in _BATCHING_KEYS}
    merged = dataclasses.replace(config, batching=dataclasses.replace(config.batching, **batching), **rest)
    return _validate_model(merged)


def _coerce(opt: Option, value: Any, where: str) -> Any:
    default = opt.default
    try:
        if opt.repeat:
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"expected a string or a list of strings, got {value!r}")
            return tuple(item for v in values for item in opt.parse(v))
        if isinstance(value, str) and not isinstance(default, str):
            return opt.parse(value)
        if isinstance(default, tuple):
            if isinstance(value, int):
                value = [value]
            return tuple(int(v) for v in value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if isinstance(default, float) and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(default, str) and isinstance(value, str):
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _validate_model(m: ModelSettings) -> ModelSettings:
    b = m.batching
    where = f"model {m.name!r}" if m.name else "model defaults"
    if b.max_batch_size < 1:
        raise ConfigError(f"{where}: max_batch_size must be >= 1, got {b.max_batch_size}")
    if b.max_queue_delay_ms < 0:
        raise ConfigError(f"{where}: max_queue_delay_ms must be >= 0, got {b.max_queue_delay_ms}")
    if b.max_queue_size < 1:
        raise ConfigError(f"{where}: max_queue_size must be >= 1, got {b.max_queue_size}")
    if b.timeout_ms < 0:
        raise ConfigError(f"{where}: timeout_ms must be >= 0, got {b.timeout_ms}")
    bad = [s for s in b.preferred_batch_sizes if not 1 <= s <= b.max_batch_size]
    if bad:
        raise ConfigError(f"{where}: preferred_batch_sizes must lie in 1..{b.max_batch_size}, got {bad}")
    if m.instances < 1:
        raise ConfigError(f"{where}: instances must be >= 1, got {m.instances}")
    if m.intra_op_threads < 0:
        raise ConfigError(f"{where}: intra_op_threads must be >= 0, got {m.intra_op_threads}")
    if m.version_policy not in ("latest", "all", "specific"):
        raise ConfigError(
            f"{where}: version_policy must be latest, all or specific, got {m.version_policy!r}"
        )
    if m.latest_versions < 1:
        raise ConfigError(f"{where}: latest_versions must be >= 1, got {m.latest_versions}")
    if m.inference_precision not in INFERENCE_PRECISIONS:
        raise ConfigError(
            f"{where}: inference_precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
            f"got {m.inference_precision!r}"
        )
    if m.performance_mode not in PERFORMANCE_MODES:
        raise ConfigError(
            f"{where}: performance_mode must be one of {', '.join(PERFORMANCE_MODES)}, "
            f"got {m.performance_mode!r}"
        )
    if m.version_policy == "specific" and not m.versions:
        raise ConfigError(f"{where}: version_policy=specific needs versions, e.g. versions = [1, 3]")
    return m


IMAGE_FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "ppm")  # formats/decode.py's ALLOWED_FORMATS
IMAGE_DECODERS = ("pillow", "turbo", "nvimgcodec")


def image_formats(config: ServerConfig) -> tuple[str, ...]:
    """`image_formats` as Pillow's format names (JPEG, PNG, ...)."""
    return tuple(f.strip().upper() for f in config.image_formats.split(",") if f.strip())


def _validate_images(config: ServerConfig) -> None:
    bad = [f for f in image_formats(config) if f.lower() not in IMAGE_FORMATS]
    if bad or not image_formats(config):
        raise ConfigError(
            f"image_formats must list some of {', '.join(IMAGE_FORMATS)}, got {config.image_formats!r}"
        )
    if config.image_decoder not in IMAGE_DECODERS:
        raise ConfigError(
            f"image_decoder must be one of {', '.join(IMAGE_DECODERS)}, got {config.image_decoder!r}"
        )
    if config.max_decode_memory_mib < 1:
        raise ConfigError(f"max_decode_memory_mib must be >= 1, got {config.max_decode_memory_mib}")


def validate(config: ServerConfig) -> ServerConfig:
    """Check server-wide values (model values are checked as each ModelSettings is built)."""
    for key in ("grpc_port", "http_port", "metrics_port"):
        port = getattr(config, key)
        low = 0 if key == "grpc_port" else -1
        if not low <= port <= 65535:
            raise ConfigError(f"{key} must be in {low}..65535, got {port}")
    for key in ("max_image_bytes", "max_image_pixels"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(config, key)}")
    _validate_images(config)
    if config.preprocess_threads < 0:
        raise ConfigError(f"preprocess_threads must be >= 0, got {config.preprocess_threads}")
    if config.grace_period_s < 0:
        raise ConfigError(f"grace_period_s must be >= 0, got {config.grace_period_s}")
    config = _validate_security(config)
    if not config.models and not config.model_repository:
        raise ConfigError(
            "no models to serve: pass --model NAME=PATH, --model-repository DIR or a config file"
        )
    return config


def _validate_security(config: ServerConfig) -> ServerConfig:
    """The TLS options' combinations, the restricted groups, the mode and the transport limits; the files
    themselves are read when the server starts (server/security/policy.py)."""
    if config.grpc_use_ssl:
        if not config.grpc_server_cert or not config.grpc_server_key:
            raise ConfigError("grpc_use_ssl needs both grpc_server_cert and grpc_server_key")
        if config.grpc_use_ssl_mutual and not config.grpc_root_cert:
            raise ConfigError("grpc_use_ssl_mutual needs grpc_root_cert, the CA client certificates chain to")
    else:
        given = [k for k in ("grpc_server_cert", "grpc_server_key", "grpc_root_cert") if getattr(config, k)]
        if config.grpc_use_ssl_mutual:
            given.append("grpc_use_ssl_mutual")
        if given:
            # Serving plaintext while the operator configured certificates would be the worst surprise.
            raise ConfigError(f"{', '.join(given)} set but grpc_use_ssl is false: set --grpc-use-ssl true")
    try:
        restrict.check_disjoint(config.grpc_restricted_protocol)
        mode = model_control.parse_mode(config.model_control_mode)
        if config.auth_token:
            check_token(config.auth_token, "RESNET_SERVE_AUTH_TOKEN")
    except (ValueError, SecurityError) as exc:
        raise ConfigError(str(exc)) from None
    if config.grpc_max_message_bytes < 0:
        raise ConfigError(f"grpc_max_message_bytes must be >= 0, got {config.grpc_max_message_bytes}")
    if 0 < config.grpc_max_message_bytes <= config.max_image_bytes:
        raise ConfigError(
            f"grpc_max_message_bytes ({config.grpc_max_message_bytes}) must exceed max_image_bytes "
            f"({config.max_image_bytes}), or no image of the largest accepted size could arrive"
        )
    for key in ("grpc_max_concurrent_streams", "grpc_keepalive_time", "grpc_keepalive_timeout"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(config, key)}")
    for key in (
        "grpc_http2_min_recv_ping_interval",
        "grpc_http2_max_ping_strikes",
        "grpc_max_connection_age_ms",
        "grpc_max_connection_age_grace_ms",
    ):
        if getattr(config, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(config, key)}")
    if config.grpc_max_connection_age_grace_ms and not config.grpc_max_connection_age_ms:
        raise ConfigError(
            "grpc_max_connection_age_grace_ms needs grpc_max_connection_age_ms (0: no age limit)"
        )
    return dataclasses.replace(config, model_control_mode=mode)
