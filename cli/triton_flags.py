"""Every `tritonserver` flag, in one table: what `resnet-serve serve` does with it.

Triton's flags that resnet-serve has under the same name (`--model-repository`, `--grpc-port`,
`--model-control-mode`, `--strict-readiness`, ...) are ordinary options (server/config.py). This table holds
the rest, so that a Triton command line moved over gets one line per flag, never argparse's bare
"unrecognized arguments":

* ALIASES: accepted, and mean one of our options (`--exit-timeout-secs 30` is `--grace-period-s 30`);
* NOT_SUPPORTED: refused at once with one line saying why and, where there is one, what to use instead.

docs/server.md ("Triton's options") shows the same table; tests/test_triton_options.py checks that it lists
every flag here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final


def _log_level(text: str) -> str:
    """Triton's --log-verbose N: 0 is info, anything above is debug (our access log per request)."""
    return "debug" if int(text) > 0 else "info"


@dataclass(frozen=True)
class Alias:
    dest: str  # the option it sets (an OPTIONS key, or log_level)
    ours: str  # our flag, for --help and the docs
    parse: Callable[[str], Any]


ALIASES: Final = {
    "--exit-timeout-secs": Alias("grace_period_s", "--grace-period-s", float),
    "--log-verbose": Alias("log_level", "--log-level debug (N > 0) or info (0)", _log_level),
    "--model-store": Alias("model_repository", "--model-repository", str),
}

_NO_CUDA_POOLS = "not supported: resnet-serve keeps no pooled pinned or GPU memory to size"
_NO_CACHE = "not supported: there is no response cache"
_ONE_LOOP = (
    "not supported: one asyncio event loop serves gRPC and HTTP; image decoding uses --preprocess-threads"
)
_NO_TRACE = "not supported: there is no tracing; --log-level debug logs each request with its timings"
_LOG_LEVEL = "use --log-level (debug, info, warning, error)"
_NO_CLOUD = "not supported: use the KServe v2 HTTP endpoint (docs/deploy.md has the KServe manifests)"
_AUTOCOMPLETE = "not supported: config.pbtxt is always completed from the model file (Triton's default)"

NOT_SUPPORTED: Final = {
    "--allow-cpu-metrics": "not supported: the metrics endpoint exports the server's own series (--metrics)",
    "--allow-gpu-metrics": "not supported: GPU series are exported when a GPU is used (--metrics)",
    "--allow-sagemaker": _NO_CLOUD,
    "--allow-vertex-ai": _NO_CLOUD,
    "--backend-config": "use the model options instead (--intra-op-threads, --instances, --device, ...)",
    "--backend-directory": "not supported: the backends are built in: onnxruntime, openvino, tensorrt, torch",
    "--buffer-manager-thread-count": _ONE_LOOP,
    "--cache-config": _NO_CACHE,
    "--cache-directory": _NO_CACHE,
    "--cuda-memory-pool-byte-size": _NO_CUDA_POOLS,
    "--cuda-virtual-address-size": _NO_CUDA_POOLS,
    "--disable-auto-complete-config": _AUTOCOMPLETE,
    "--enable-peer-access": _NO_CUDA_POOLS,
    "--grpc-header-forward-pattern": "not supported: request headers are not forwarded to models",
    "--grpc-infer-thread-count": _ONE_LOOP,
    "--grpc-max-connection-age": "use --grpc-max-connection-age-ms",
    "--grpc-max-response-pool-size": _ONE_LOOP,
    "--host-policy": "not supported: use --device and the instance options per model",
    "--http-header-forward-pattern": "not supported: request headers are not forwarded to models",
    "--http-max-input-size": "use --grpc-max-message-bytes (it bounds HTTP bodies too)",
    "--http-restricted-api": "use --grpc-restricted-protocol (its groups restrict the HTTP API too)",
    "--http-thread-count": _ONE_LOOP,
    "--id": "not supported: server metadata names the server resnet-serve",
    "--load-model": "not supported: every model of the repository (and each --model) loads at start-up",
    "--log-error": _LOG_LEVEL,
    "--log-file": "not supported: the log goes to stderr (redirect it; --log-format json for collectors)",
    "--log-info": _LOG_LEVEL,
    "--log-warning": _LOG_LEVEL,
    "--metrics-config": "not supported: see docs/metrics.md for the series and their buckets",
    "--metrics-interval-ms": "not supported: every series is current at each scrape",
    "--model-config-name": "not supported: the configuration is config.pbtxt (or config.json)",
    "--model-load-gpu-limit": "not supported: models load one at a time",
    "--model-load-retry-count": "not supported: a failed load is not retried (--exit-on-error decides)",
    "--model-load-thread-count": "not supported: models load one at a time",
    "--model-namespacing": "not supported: one model repository",
    "--pinned-memory-pool-byte-size": _NO_CUDA_POOLS,
    "--rate-limit": "not supported: bound each model's queue with --max-queue-size and --timeout-ms",
    "--rate-limit-resource": "not supported: bound each model's queue with --max-queue-size and --timeout-ms",
    "--repoagent-directory": "not supported: there are no repository agents",
    "--response-cache-byte-size": _NO_CACHE,
    "--reuse-grpc-port": "not supported: a port in use stops the start-up with one line",
    "--reuse-http-port": "not supported: a port in use stops the start-up with one line",
    "--sagemaker-port": _NO_CLOUD,
    "--sagemaker-safe-port-range": _NO_CLOUD,
    "--sagemaker-thread-count": _NO_CLOUD,
    "--strict-model-config": _AUTOCOMPLETE,
    "--trace-config": _NO_TRACE,
    "--trace-count": _NO_TRACE,
    "--trace-file": _NO_TRACE,
    "--trace-level": _NO_TRACE,
    "--trace-log-frequency": _NO_TRACE,
    "--trace-rate": _NO_TRACE,
    "--vertex-ai-default-model": _NO_CLOUD,
    "--vertex-ai-port": _NO_CLOUD,
    "--vertex-ai-thread-count": _NO_CLOUD,
}


class _Alias(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, alias: Alias, **kwargs: Any) -> None:
        self.alias = alias
        super().__init__(option_strings, alias.dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        flag: str | None = None,
    ) -> None:
        try:
            setattr(namespace, self.dest, self.alias.parse(str(values)))
        except ValueError:
            parser.error(
                f"{flag}: expected a number, got {values!r} (Triton's flag; ours is {self.alias.ours})"
            )


class _NotSupported(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        flag: str | None = None,
    ) -> None:
        parser.exit(2, f"{parser.prog}: error: Triton's {flag}: {NOT_SUPPORTED[str(flag)]}\n")


def add_triton_flags(parser: argparse.ArgumentParser) -> None:
    """Register ALIASES (in a --help group of their own) and NOT_SUPPORTED (hidden from --help)."""
    group = parser.add_argument_group("Triton's flags that are ours under another name")
    for flag, alias in ALIASES.items():
        group.add_argument(
            flag,
            action=_Alias,
            alias=alias,
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=f"= {alias.ours}",
        )
    for flag in NOT_SUPPORTED:
        parser.add_argument(
            flag, action=_NotSupported, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
