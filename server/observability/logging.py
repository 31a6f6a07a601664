"""Structured logging: text or JSON lines, a per-request id on every record, and a DEBUG-only access log.

The request id lives in a ContextVar, so every log line emitted while a request is handled carries it
without being passed around: the services call `request_scope(...)` around a request, and the logging
filter copies the current id onto each record. ContextVars follow asyncio tasks and `asyncio.to_thread`,
but not `loop.run_in_executor` or plain threads: code that hands work to those must carry the id itself
(`contextvars.copy_context().run`, or `request_scope(id)` again in the worker).

At the default level (INFO) nothing is logged per request; `access_log` writes one line per finished
request only when the `resnet_serve.access` logger is enabled for DEBUG.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

REQUEST_ID_METADATA: Final = "x-request-id"  # gRPC metadata key, lower case as gRPC requires
MAX_REQUEST_ID_LEN: Final = 128
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
ACCESS_LOGGER: Final = "resnet_serve.access"
GRPC_CORE_VERBOSITY: Final = "ERROR"
PROJECT_LOGGER: Final = "resnet_serve"  # the parent of every logger of ours (modules log under __name__)
THIRD_PARTY_LEVEL: Final = logging.WARNING

_NO_REQUEST: Final = "-"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default=_NO_REQUEST)

_access = logging.getLogger(ACCESS_LOGGER)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted as a field.
_RECORD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "request_id"}
)


def _acceptable(request_id: str) -> bool:
    # Client ids end up in logs and response metadata: printable ASCII only, so no log injection.
    return 0 < len(request_id) <= MAX_REQUEST_ID_LEN and request_id.isascii() and request_id.isprintable()


# A version-4 UUID is 122 random bits with the version (4) and variant (10) bits set.
_UUID4_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET: Final = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A new random id: what `uuid.uuid4().hex` gives (from os.urandom too), without building a UUID object
    on every request that brings no id of its own."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


def resolve_request_id(*candidates: str | None) -> str:
    """The first acceptable client-supplied id (metadata, then the request field, say), else a new one."""
    for candidate in candidates:
        if candidate and _acceptable(candidate):
            return candidate
    return new_request_id()


def request_id_from_metadata(metadata: Any) -> str | None:
    """The x-request-id value from gRPC invocation metadata (a sequence of (key, value) pairs), if any."""
    for key, value in metadata or ():
        if key == REQUEST_ID_METADATA:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return None


def request_id_metadata(request_id: str) -> tuple[tuple[str, str]]:
    """gRPC response metadata echoing the id (server/frontend.py's `GrpcContext.answer_request_id`)."""
    return ((REQUEST_ID_METADATA, request_id),)


def current_request_id() -> str | None:
    value = request_id_var.get()
    return None if value == _NO_REQUEST else value


class request_scope:  # named as the function it replaced: `with request_scope(id):`
    """Make `request_id` the current request id for the log records emitted inside the block. A class
    rather than a @contextmanager generator: it is on every request's path."""

    __slots__ = ("_request_id", "_token")

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id

    def __enter__(self) -> str:
        self._token = request_id_var.set(self._request_id)
        return self._request_id

    def __exit__(self, *exc: object) -> None:
        request_id_var.reset(self._token)


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or "-") on every record as `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id (when set), extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", _NO_REQUEST)
        if request_id != _NO_REQUEST:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines; extra fields are appended as key=value so the text log loses nothing."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _RECORD_ATTRS and v is not None
        )
        return f"{line} {extras}" if extras else line


class WorkerFilter(logging.Filter):
    """Marks every record of a worker process with its place (`worker=N` in text, `"worker": N` in JSON):
    the workers log the same lines, and an operator must tell which one said what."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def configure_logging(
    level: str = "info", fmt: str = "text", stream: TextIO | None = None, worker: int | None = None
) -> None:
    """Route all logging to one stderr handler in the chosen format; replaces handlers set up before.
    `level` applies to resnet_serve.* loggers; every other logger stays at WARNING (or `level` if higher).
    `worker`: the place of the worker process this is, put on every record."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    if worker is not None:
        handler.addFilter(WorkerFilter(worker))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # The level is for this project's loggers; libraries (Pillow's line per PNG chunk, grpc, aiohttp,
    # onnx) stay at WARNING, or above when the level asked for is higher.
    ours = logging.getLevelName(level.upper())
    logging.getLogger(PROJECT_LOGGER).setLevel(ours)
    root.setLevel(max(ours, THIRD_PARTY_LEVEL))


def quiet_grpc_core(environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep gRPC core's info lines out of the server's output: call before grpc is imported.

    gRPC core (C++) writes to stderr in its own format (`I1207 12:00:00.000000 123 file.cc:42] ...`),
    outside this log's format and level: unset, it wrote an INFO line per failed TLS handshake (any
    client could fill the log with them). GRPC_VERBOSITY=ERROR keeps its errors, the ones that point
    at a fault (rare, and still in gRPC's format: they cannot be routed through Python's logging). An
    operator's own GRPC_VERBOSITY wins, and so does GRPC_TRACE (debugging gRPC needs its verbosity)."""
    if "GRPC_TRACE" not in environ:
        environ.setdefault("GRPC_VERBOSITY", GRPC_CORE_VERBOSITY)


def access_log(
    model: str,
    version: str,
    outcome: str,
    total_s: float,
    batch_size: int | None = None,
    detail: str | None = None,
) -> None:
    """One line per finished request at DEBUG; costs one level check when DEBUG is off."""
    if not _access.isEnabledFor(logging.DEBUG):
        return
    # The fields travel as extras: JSON logs get them as keys, text logs as key=value after "request".
    _access.debug(
        "request",
        extra={
            "model": model,
            "version": version,
            "outcome": outcome,
            "duration_ms": round(total_s * 1000.0, 3),
            "batch_size": batch_size,
            "detail": detail,
        },
    )
