"""KServe v2 over HTTP/REST (Triton's HTTP API) and our image API's `POST /v1/models/NAME/classify`, served
by aiohttp on the gRPC server's event loop.

Every route runs the same servicer method a gRPC request runs: the HTTP request becomes the gRPC request
message (server/http/binary.py for inference, the binary tensor data extension included), the method runs
with an `HttpContext` (server/http/context.py) in place of gRPC's, and its answer (or its `ServeError`)
becomes the HTTP answer (server/http/protojson.py; server/http/status.py's one table of statuses, with the
JSON body `{"error": "..."}`). So lookup, batching, metrics, access log, request ids and error messages are
the gRPC path's, by construction. docs/kserve.md lists the routes.

Why aiohttp: it is asyncio-native, so it runs on grpc.aio's loop and awaits the batcher's futures with no
thread hop (an ASGI server such as uvicorn would add a framework layer and want to own the loop); its HTTP
parser is C (llhttp), keep-alive is on by default, and it hands over the whole body as one `bytes` that the
binary extension views without copying; tritonclient.http.aio is built on it, so it was in the dependency
tree already. Measured with lab/http_overhead.py (ResNet-50's 600 KB tensors): the server spends ~1.3 ms of
CPU per HTTP request against ~1.8 ms per gRPC one (docs/benchmarking.md). Each request is counted in flight
(`ServerContext.in_flight`), so shutdown waits for the HTTP requests it accepted; while the server drains,
the health routes answer truthfully and every other request is answered 503 (inference by the model manager,
which counts the refusals as it counts gRPC's).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final

import grpc
from aiohttp import BodyPartReader, web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, HttpProcessingError
from aiohttp.web_urldispatcher import _default_expect_handler  # the "100 Continue" writer; pinned aiohttp

from resnet_serve.protos import classifier_pb2 as image_pb
from resnet_serve.protos import grpc_service_pb2 as pb
from resnet_serve.server.context import ServerContext
from resnet_serve.server.errors import ServeError, cancelled, echo, invalid_argument, status_of, unavailable
from resnet_serve.server.http.binary import (
    HEADER_LENGTH,
    encode_response,
    header_length,
    json_object,
    parse_request,
)
from resnet_serve.server.http.context import HttpContext
from resnet_serve.server.http.protojson import to_json
from resnet_serve.server.http.status import http_status
from resnet_serve.server.image.service import ImageClassifierService
from resnet_serve.server.kserve.service import KServeService, implemented, unimplemented
from resnet_serve.server.models.manager import NOT_ACCEPTING
from resnet_serve.server.models.overrides import FILE_PREFIX
from resnet_serve.server.observability.logging import REQUEST_ID_METADATA, resolve_request_id
from resnet_serve.server.security import restrict
from resnet_serve.server.security.access import AccessRules

# Triton lists the binary tensor data extension on HTTP only: gRPC always carries raw bytes.
BINARY_TENSOR_DATA: Final = "binary_tensor_data"
JSON: Final = "application/json"
_MODEL: Final = "/v2/models/{model}"
_VERSION: Final = "/v2/models/{model}/versions/{version}"
# A body that stops arriving (a Content-Length larger than what is sent, a client that stalls) would
# otherwise hold its connection and count as in flight, delaying a drain, until the client gives up.
# 60 s lets a 64 MiB body arrive at ~1 MB/s.
BODY_TIMEOUT_S = 60.0
_LINGER_S: Final = 0.1
_MAX_TOP_K: Final = 2**32 - 1  # ClassifyRequest.top_k is uint32

Route = Callable[[web.Request, HttpContext], Awaitable[web.StreamResponse]]


# The longest error message sent: a safety net under the 256-character bound on echoed values, so no
# message built from client input can grow an answer (or a log line) with the input.
MAX_ERROR_CHARS: Final = 2048


def error_response(status: int, message: str) -> web.Response:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return web.Response(status=status, text=json.dumps({"error": message}), content_type=JSON)


def _json(value: Any) -> web.Response:
    return web.Response(text=json.dumps(value, separators=(",", ":")), content_type=JSON)


def _empty(ok: bool) -> web.Response:
    # Not ready is not an error, so no body: 503 (Triton answers 400; any non-200 means "not ready" to
    # tritonclient and to a Kubernetes httpGet probe, and 503 is what a drain or a load balancer expects).
    return web.Response(status=200 if ok else 503)


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method) as JSON error bodies like every other failure."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, f"{exc.reason}: {request.method} {request.path[:200]}")
    return response


class _ClientErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection logger with a client's malformed HTTP (a request line or header over the limits,
    a body that breaks off or does not decompress) as one WARNING line: aiohttp logs each at ERROR with a
    traceback, so any client could fill the log with them. Failures of the server itself keep theirs."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, (HttpProcessingError, web_protocol.RequestPayloadError)):
            self.warning("%s: %s", str(msg) % args, " ".join(str(exc_info).split())[:200])
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


class HttpServer:
    """The HTTP/REST API of one InferenceServer: `port = await start(host, port)`, then `await stop()`."""

    def __init__(self, ctx: ServerContext, max_body_bytes: int, rules: AccessRules | None = None) -> None:
        self._ctx = ctx
        self._max_body = max_body_bytes
        self._rules = rules
        self._kserve = KServeService(ctx)
        self._image = ImageClassifierService(ctx.manager, ctx.pool, ctx.in_flight)
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=max_body_bytes, middlewares=[_json_errors])
        routes: list[tuple[str, str, Route, bool]] = [
            ("GET", "/v2/health/live", self._live, False),
            ("GET", "/v2/health/ready", self._ready, False),
            ("GET", "/v2", self._server_metadata, True),
            ("GET", "/v2/models/stats", self._statistics, True),
            ("POST", "/v2/repository/index", self._repository_index, True),
            ("POST", "/v2/repository/models/{model}/load", self._load, True),
            ("POST", "/v2/repository/models/{model}/unload", self._unload, True),
            # Triton's routes that name a repository: the index ignores it, load and unload refuse it (501)
            ("POST", "/v2/repository/{repository}/index", self._repository_index, True),
            ("POST", "/v2/repository/{repository}/models/{model}/load", self._load, True),
            ("POST", "/v2/repository/{repository}/models/{model}/unload", self._unload, True),
            ("POST", "/v1/models/{model}/classify", self._classify, False),
        ]
        for base in (_MODEL, _VERSION):
            routes += [
                ("GET", base, self._model_metadata, True),
                ("GET", base + "/ready", self._model_ready, True),
                ("GET", base + "/config", self._model_config, True),
                ("GET", base + "/stats", self._statistics, True),
                # The model manager refuses inference while draining, and counts it as gRPC's are counted.
                ("POST", base + "/infer", self._infer, False),
            ]
        for kind in ("systemsharedmemory", "cudasharedmemory"):
            routes += [
                ("GET", f"/v2/{kind}/status", self._shm_status, True),
                ("GET", f"/v2/{kind}/region/{{region}}/status", self._shm_status, True),
                ("POST", f"/v2/{kind}/region/{{region}}/register", self._shm_register, True),
                ("POST", f"/v2/{kind}/unregister", self._shm_unregister, True),
                ("POST", f"/v2/{kind}/region/{{region}}/unregister", self._shm_unregister, True),
            ]
        for path in ("/v2/trace/setting", _MODEL + "/trace/setting", "/v2/logging"):
            for method in ("GET", "POST"):
                routes.append((method, path, self._settings, True))
        for method, path, route, drain_refused in routes:
            handler = self._handler(route, drain_refused)
            app.router.add_route(method, path, handler, expect_handler=self._expect)
        self._app = app

    # --------------------------------------------------------------------------------------- lifecycle

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, reuse_port: bool = False
    ) -> int:
        """Listen on host:port (0: a free port), with TLS when given; returns the bound port. Raises OSError
        (port in use). `reuse_port`: share the port with the server's other worker processes
        (SO_REUSEPORT)."""
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
            logger=_ClientErrorLog(logging.getLogger("aiohttp.server")),
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=tls, reuse_port=reuse_port or None).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound: int = runner.addresses[0][1]
        return bound

    async def stop(self) -> None:
        """Stop listening and close the connections (the server has waited for the accepted requests)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Stop listening first (new connections are refused), then give the connections accepted just
        # before a moment to deliver their requests, which get their 503: cleanup() closes every connection
        # with no request in progress, and a client whose request was on the wire saw a bare disconnect
        # (3-4 per SIGTERM under 8 looping clients in tests/test_http_hostile.py; none with this pause).
        for site in list(runner.sites):
            await site.stop()
        await asyncio.sleep(_LINGER_S)
        await runner.cleanup()

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: a body over the limit is refused (413) before the client is told to send
        it; aiohttp's default handler says "100 Continue" first and the client uploads it all."""
        size = request.content_length
        if size is not None and size > self._max_body:
            response = error_response(413, f"Maximum request body size {self._max_body} exceeded.")
            response.force_close()  # the client may send the body anyway: do not read it as a next request
            return response
        await _default_expect_handler(request)
        return None

    def _handler(self, route: Route, drain_refused: bool) -> Callable[[web.Request], Awaitable[Any]]:
        ctx = self._ctx
        name = route.__name__.lstrip("_")
        limit = self._max_body
        rules = self._rules
        image_api = route == self._classify

        async def handle(request: web.Request) -> web.StreamResponse:
            header = request.headers.get(REQUEST_ID_METADATA)
            call = HttpContext(header)
            try:
                if rules:  # restricted groups and image-API tokens, as the gRPC interceptor does
                    _check_access(rules, request, image_api)
                size = request.content_length
                if size is not None and size > limit:  # refused before a byte of it is read
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                if drain_refused and ctx.shutting_down:
                    raise unavailable(NOT_ACCEPTING)
                with ctx.in_flight:
                    response = await route(request, call)
            except web.HTTPException as exc:  # aiohttp's own refusal, e.g. a body over the size limit
                response = error_response(exc.status, exc.text or exc.reason)
            except Exception as exc:
                error = status_of(exc, f"HTTP {name}")
                response = error_response(http_status(error.code), error.message)
                if error.code == grpc.StatusCode.UNAUTHENTICATED:
                    response.headers["WWW-Authenticate"] = "Bearer"  # RFC 6750
            if call.request_id is None and header is not None and resolve_request_id(header) == header:
                call.request_id = header  # refused before a service saw it: the client's id still comes back
            if call.request_id is not None:
                response.headers[REQUEST_ID_METADATA] = call.request_id
            if ctx.shutting_down:  # `Connection: close`: a keep-alive client must not send its next
                response.force_close()  # request on a connection that stop() is about to close
            return response

        return handle

    async def _rpc(self, name: str, message: Any, call: HttpContext) -> Any:
        """Run the KServe servicer's method `name` (UNIMPLEMENTED where the service does not serve it)."""
        if not implemented(name):
            raise unimplemented(name)
        return await getattr(self._kserve, name)(message, call)

    # ------------------------------------------------------------------------------- health, metadata

    async def _live(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        return _empty((await self._rpc("ServerLive", pb.ServerLiveRequest(), call)).live)

    async def _ready(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        return _empty((await self._rpc("ServerReady", pb.ServerReadyRequest(), call)).ready)

    async def _server_metadata(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        answer = to_json(await self._rpc("ServerMetadata", pb.ServerMetadataRequest(), call))
        answer["extensions"] = [*answer["extensions"], BINARY_TENSOR_DATA]
        return _json(answer)

    async def _model_metadata(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        message = pb.ModelMetadataRequest(**_model_version(request))
        return _json(to_json(await self._rpc("ModelMetadata", message, call)))

    async def _model_ready(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        message = pb.ModelReadyRequest(**_model_version(request))
        return _empty((await self._rpc("ModelReady", message, call)).ready)

    async def _model_config(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        message = pb.ModelConfigRequest(**_model_version(request))
        return _json(to_json(await self._rpc("ModelConfig", message, call))["config"])

    async def _statistics(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        message = pb.ModelStatisticsRequest(**_model_version(request))
        return _json(to_json(await self._rpc("ModelStatistics", message, call)))

    # ---------------------------------------------------------------------------------------- inference

    async def _infer(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        body = await read_body(request)
        parsed = parse_request(
            body,
            header_length(request.headers.get(HEADER_LENGTH), len(body)),
            request.match_info["model"],
            request.match_info.get("version", ""),
        )
        response = await self._rpc("ModelInfer", parsed.incoming, call)
        data, json_length = encode_response(response, parsed)
        if json_length is None:
            return web.Response(body=data, content_type=JSON)
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(json_length)},
        )

    async def _classify(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        """Our image API: the encoded image is the body, or the one file of a multipart/form-data upload
        (`curl -F data=@x.png`, TorchServe's habit); ?version=V&top_k=K as in ClassifyRequest."""
        image = await read_upload(request, self._max_body)
        top_k = request.query.get("top_k", "0")
        if not (top_k.isascii() and top_k.isdigit() and int(top_k) <= _MAX_TOP_K):
            raise invalid_argument(f"top_k must be an integer in [0, {_MAX_TOP_K}], got {top_k[:40]!r}")
        message = image_pb.ClassifyRequest(
            model=request.match_info["model"],
            version=request.query.get("version", ""),
            image=image,
            top_k=int(top_k),
        )
        return _json(to_json(await self._image.Classify(message, call)))

    # --------------------------------------------------------------------------------------- repository

    async def _repository_index(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        body = await _body(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise invalid_argument("'ready' must be true or false")
        answer = to_json(await self._rpc("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready), call))
        return _json(answer["models"])

    async def _load(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        message = pb.RepositoryModelLoadRequest(
            model_name=request.match_info["model"], repository_name=request.match_info.get("repository", "")
        )
        _repository_parameters(await _body(request), message.parameters)
        await self._rpc("RepositoryModelLoad", message, call)
        return web.Response()

    async def _unload(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        message = pb.RepositoryModelUnloadRequest(
            model_name=request.match_info["model"], repository_name=request.match_info.get("repository", "")
        )
        _repository_parameters(await _body(request), message.parameters)
        await self._rpc("RepositoryModelUnload", message, call)
        return web.Response()

    # ------------------------------------------------------------------ shared memory, trace, logging
    # The HTTP forms of the shared-memory RPCs run the gRPC service's methods (server/kserve/service.py), so
    # both protocols register, list and unregister the same regions (server/shm/registry.py).

    async def _shm_status(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        name = request.match_info.get("region", "")
        if _is_cuda(request):
            message: Any = pb.CudaSharedMemoryStatusRequest(name=name)
            answer = await self._rpc("CudaSharedMemoryStatus", message, call)
        else:
            message = pb.SystemSharedMemoryStatusRequest(name=name)
            answer = await self._rpc("SystemSharedMemoryStatus", message, call)
        return _json(list(to_json(answer)["regions"].values()))

    async def _shm_register(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        body = await _body(request)
        name = request.match_info["region"]
        if _is_cuda(request):
            raw_handle = body.get("raw_handle")
            encoded = raw_handle.get("b64") if isinstance(raw_handle, dict) else None
            if not isinstance(encoded, str):
                raise invalid_argument('shared memory registration needs "raw_handle": {"b64": "..."}')
            try:
                handle = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise invalid_argument("shared memory registration: raw_handle.b64 is not base64") from None
            message: Any = pb.CudaSharedMemoryRegisterRequest(
                name=name,
                raw_handle=handle,
                device_id=_count(body, "device_id", 0, 2**63 - 1, None),
                byte_size=_count(body, "byte_size", 0, 2**64 - 1, None),
            )
            await self._rpc("CudaSharedMemoryRegister", message, call)
        else:
            key = body.get("key")
            if not isinstance(key, str):
                raise invalid_argument('shared memory registration needs a string "key"')
            message = pb.SystemSharedMemoryRegisterRequest(
                name=name,
                key=key,
                offset=_count(body, "offset", 0, 2**64 - 1, 0),
                byte_size=_count(body, "byte_size", 0, 2**64 - 1, None),
            )
            await self._rpc("SystemSharedMemoryRegister", message, call)
        return web.Response()

    async def _shm_unregister(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        name = request.match_info.get("region", "")
        if _is_cuda(request):
            message: Any = pb.CudaSharedMemoryUnregisterRequest(name=name)
            await self._rpc("CudaSharedMemoryUnregister", message, call)
        else:
            message = pb.SystemSharedMemoryUnregisterRequest(name=name)
            await self._rpc("SystemSharedMemoryUnregister", message, call)
        return web.Response()

    async def _settings(self, request: web.Request, call: HttpContext) -> web.StreamResponse:
        if request.path == "/v2/logging":
            await self._rpc("LogSettings", pb.LogSettingsRequest(), call)
        else:
            model = request.match_info.get("model", "")
            await self._rpc("TraceSetting", pb.TraceSettingRequest(model_name=model), call)
        return web.Response()


def _check_access(rules: AccessRules, request: web.Request, image_api: bool) -> None:
    """Raise the refusal `rules` answer this request with (docs/security.md), as a ServeError."""
    headers: dict[str, str | bytes] = {}
    for key, value in request.headers.items():
        headers.setdefault(key.lower(), value)
    group = "inference" if image_api else restrict.http_group(request.path)
    refusal = rules.refusal(group, headers, grpc=False, image_api=image_api)
    if refusal is not None:
        raise ServeError(refusal.code, refusal.message)


def _model_version(request: web.Request) -> dict[str, str]:
    return {"name": request.match_info.get("model", ""), "version": request.match_info.get("version", "")}


def _is_cuda(request: web.Request) -> bool:
    return request.path.startswith("/v2/cudasharedmemory")


async def read_body(request: web.Request) -> bytes:
    """The whole body, decompressed, at most the size limit (aiohttp counts the inflated bytes and stops
    at the limit: HTTP 413); a body that does not decompress is INVALID_ARGUMENT, one that stops arriving
    for BODY_TIMEOUT_S is 408 and one whose client went away is CANCELLED (nobody reads the answer)."""
    async with _reading_body():
        return await request.read()


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The body, or for multipart/form-data its one part's content: a form with no part or with more
    than one is INVALID_ARGUMENT naming the forms accepted. The part is read a chunk at a time and refused
    (413) once past `limit`, as a whole body is (aiohttp's own limit covers `read()` only)."""
    if request.content_type != "multipart/form-data":
        return await read_body(request)
    async with _reading_body():
        with _reading_multipart():
            reader = await request.multipart()
            part = await reader.next()
            if not isinstance(part, BodyPartReader):  # none, or a nested multipart
                raise invalid_argument(_ONE_PART)
            data = bytearray()
            while chunk := await part.read_chunk():
                data += chunk
                if len(data) > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(data))
            if await reader.next() is not None:
                raise invalid_argument(_ONE_PART)
            return bytes(data)


@contextlib.contextmanager
def _reading_multipart() -> Iterator[None]:
    """aiohttp's multipart reader says what is wrong with a form (no or a wrong boundary, a body that ends
    early, an over-long header line) with ValueError and BadHttpMessage: the client's error, 400."""
    try:
        yield
    except (ValueError, BadHttpMessage) as exc:
        message = " ".join(str(exc).split())[:200]
        raise invalid_argument(f"the multipart/form-data body could not be read: {message}") from None


_ONE_PART: Final = (
    "a multipart/form-data upload must hold one part, the image (curl -F data=@x.png); or send the image "
    "as the whole body (curl --data-binary @x.png)"
)


@contextlib.asynccontextmanager
async def _reading_body() -> AsyncIterator[None]:
    """What reading a request body can meet, as the client's errors (read_body)."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            yield
    except (web_protocol.RequestPayloadError, ContentEncodingError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise invalid_argument(f"the request body could not be read: {message}") from None
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    except ConnectionResetError:
        raise cancelled("the client closed the connection before sending the whole body") from None


async def _body(request: web.Request) -> dict[str, Any]:
    """A JSON object body; an empty body is an empty object."""
    data = await read_body(request)
    if not data.strip():
        return {}
    return json_object(data, "body")


def _count(body: dict[str, Any], key: str, low: int, high: int, default: int | None) -> int:
    """body[key], an integer in [low, high] (its protobuf field's range), or `default` when absent."""
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid_argument(f'shared memory registration needs "{key}": an integer in [{low}, {high}]')
    return value


def _repository_parameters(body: dict[str, Any], target: Any) -> None:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise invalid_argument("'parameters' must be a JSON object")
    for key, value in parameters.items():
        if key.startswith(FILE_PREFIX) and isinstance(value, str):
            # A file override's bytes travel base64-encoded in JSON (Triton's HTTP API, tritonclient.http).
            try:
                target[key].bytes_param = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise invalid_argument(
                    f"parameter {echo(key)} must be base64-encoded file contents"
                ) from None
        elif isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:  # the parameter is an int64
            target[key].int64_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        else:
            raise invalid_argument(f"parameter {echo(key)} must be a boolean, a 64-bit integer or a string")
