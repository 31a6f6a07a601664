"""The /metrics HTTP endpoint: prometheus_client's WSGI app (content negotiation, `name[]` filters) on a
threaded server of its own, /metrics only, with Triton's counters described under their own names in the
text format and gzip when the scraper accepts it."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import gzip_accepted

from resnet_serve.server.observability.triton_metrics import describe_triton_counters

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds shutdown


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per scrape on stderr
        pass


class MetricsHttpServer:
    """Serves one registry's /metrics on host:port from a daemon thread; port 0 picks a free port.

    Only /metrics: every other path is 404, so a probe pointed at this port by mistake (Triton's
    /v2/health/ready on :8002) fails instead of reading the metrics as "ready"."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        # Content negotiation (text or OpenMetrics, `name[]` filters) stays prometheus_client's; the text
        # format gets Triton's counter names fixed (text_exposition), then gzip when the scraper accepts it.
        exposition = make_wsgi_app(registry, disable_compression=True)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"not found: this port serves /metrics only\n"]
            answer: list[Any] = []
            body = b"".join(exposition(environ, lambda status, headers: answer.extend((status, headers))))
            status, headers = answer
            if dict(headers).get("Content-Type", "").startswith("text/plain"):
                body = describe_triton_counters(body)
            if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                body = gzip.compress(body)
                headers = [*headers, ("Content-Encoding", "gzip")]
            start_response(status, headers)
            return [body]

        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (_ThreadingWSGIServer,), {"address_family": family})
        server: WSGIServer = make_server(host, port, app, server_class, handler_class=_SilentHandler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        self.port: int = server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
