"""The in-process baseline: the server's own backend class called directly, with no gRPC, no decoding,
no preprocessing and no batching queue, at the batch sizes the server actually ran.

Dividing the server's latency by this one shows what serving costs on top of the model itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_serve.bench.stats import LatencySummary
from resnet_serve.runtime.base import Backend


@dataclass(frozen=True)
class BaselineResult:
    batch_size: int
    runs: int
    latency: LatencySummary  # per batch, ms
    throughput: float  # inferences per second, one batch at a time
    # the process's CPU seconds (every thread: the runtime's pool too) during the timed runs, which took
    # `runs / throughput * batch_size` seconds: how many cores the model kept busy, and its CPU per inference
    cpu_s: float = 0.0

    @property
    def cores(self) -> float:
        """The cores the model kept busy on average while it was timed."""
        return self.cpu_s * self.throughput / (self.batch_size * self.runs)

    def as_dict(self) -> dict[str, object]:
        return {
            "batch_size": self.batch_size,
            "runs": self.runs,
            "throughput": self.throughput,
            "latency_ms": self.latency.as_dict(),
            "cpu_s": self.cpu_s,
            "cores": self.cores,
        }


def measure(
    model: Path, batch_sizes: list[int], seconds: float = 2.0, device: str = "cpu", threads: int = 0
) -> list[BaselineResult]:
    """Time `model` at each batch size for about `seconds` (at least 5 runs each), after one warm-up run.

    `threads` is the intra-op thread count (0: all cores); match the server's --intra-op-threads.
    """
    from resnet_serve.runtime.base import BackendError
    from resnet_serve.runtime.factory import backend_for, create_backend

    if not model.is_file():
        raise FileNotFoundError(f"--baseline {model}: no such model file")
    try:
        backend = create_backend(model, backend_for(model, "auto"), device, threads)
    except BackendError as exc:
        raise ValueError(f"--baseline {model}: {exc}") from None
    results = []
    try:
        rng = np.random.default_rng(0)
        spec = backend.info.inputs[0]
        for n in sorted(set(batch_sizes)):
            shape = (n, *spec.shape[1:]) if backend.info.max_batch_size > 0 else spec.shape
            feeds = {spec.name: rng.standard_normal(shape).astype(spec.dtype)}
            backend.infer(feeds)  # the warm-up, outside the CPU reading
            cpu0 = time.process_time()
            times = timed_runs(backend, feeds, seconds, warmup=0)
            cpu_s = time.process_time() - cpu0
            real_batch = shape[0] if backend.info.max_batch_size > 0 else 1
            results.append(
                BaselineResult(
                    real_batch,
                    len(times),
                    LatencySummary.of(times),
                    real_batch * len(times) / sum(times),
                    cpu_s,
                )
            )
    finally:
        backend.close()
    return results


def timed_runs(
    backend: Backend, feeds: dict[str, np.ndarray], seconds: float, warmup: int = 1
) -> list[float]:
    """Seconds per `backend.infer(feeds)` after `warmup` untimed runs: about `seconds`, 5 runs at least."""
    for _ in range(warmup):
        backend.infer(feeds)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        backend.infer(feeds)
        times.append(time.perf_counter() - t0)
    return times
