"""What `tune` can try on this machine: the model variants (runtime × precision × file) and the settings.

A full grid is too large for a time budget (2 runtimes × 3 precisions × 3 instance/thread splits × 5 batch
sizes × 3 delays = 270 servers), so the search is staged (bench/tune/search.py): the settings here are the
choices of each stage, in the order they are tried.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

RUNTIMES = ("onnxruntime", "openvino")
# Largest batches tried; capped by the concurrency (a batch never holds more requests than are in flight).
BATCH_SIZES = (1, 4, 8, 16, 32)
# Queue delays tried (ms) for batching candidates: 0 dispatches whatever is queued at once.
DELAYS_MS = (0.0, 2.0, 5.0)


@dataclass(frozen=True)
class Variant:
    """One way to run the model: a runtime, a precision and the file it runs."""

    runtime: str
    precision: str  # fp32 | int8 | bf16
    file: Path

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass(frozen=True)
class Candidate:
    """One server configuration to measure."""

    runtime: str
    precision: str
    file: str
    instances: int
    threads: int  # intra-op threads per instance
    max_batch: int
    delay_ms: float

    @property
    def key(self) -> str:
        return (
            f"{self.runtime}/{self.precision}/i{self.instances}/t{self.threads}/"
            f"b{self.max_batch}/d{self.delay_ms:g}"
        )

    @property
    def variant(self) -> Variant:
        return Variant(self.runtime, self.precision, Path(self.file))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Candidate:
        return Candidate(**data)

    def model_settings(self) -> dict[str, Any]:
        """The server's per-model options (server/config.py names) this candidate sets."""
        settings: dict[str, Any] = {
            "backend": self.runtime,
            "instances": self.instances,
            "intra_op_threads": self.threads,
            "max_batch_size": self.max_batch,
            "max_queue_delay_ms": self.delay_ms,
        }
        if self.runtime == "openvino":  # never OpenVINO's own default (BF16 where the CPU has it)
            settings["inference_precision"] = self.inference_precision
        return settings

    @property
    def inference_precision(self) -> str:
        """What the runtime computes in (an INT8 file's precision is the file's own)."""
        return "bf16" if self.precision == "bf16" else "fp32"


def available_runtimes(requested: tuple[str, ...] = RUNTIMES) -> list[str]:
    """The requested runtimes whose Python package is installed (found without importing it)."""
    return [r for r in requested if find_spec(r) is not None]


def openvino_has_bf16() -> bool:
    """Whether OpenVINO computes BF16 natively on this CPU (AVX512_BF16 or AMX); elsewhere it would silently
    compute FP32, so BF16 is not tried."""
    from resnet_serve.runtime.openvino import supported_precisions

    return "bf16" in supported_precisions()


def variants(fp32: Path, int8: Path | None, runtimes: list[str], bf16: bool) -> list[Variant]:
    """Every (runtime, precision, file) to try: FP32 everywhere, INT8 where a QDQ file was given, BF16 on
    OpenVINO where the CPU has it."""
    found = [Variant(r, "fp32", fp32) for r in runtimes]
    if int8 is not None:
        found += [Variant(r, "int8", int8) for r in runtimes]
    if bf16 and "openvino" in runtimes:
        found.append(Variant("openvino", "bf16", fp32))
    return found


def splits(cores: int) -> list[tuple[int, int]]:
    """(instances, threads per instance) pairs that use at most `cores` threads in all, widest first."""
    pairs = [(i, t) for i in range(1, cores + 1) for t in range(1, cores + 1) if i * t <= cores]
    return sorted(pairs, key=lambda p: (-p[0] * p[1], p[0]))


def batch_sizes(concurrency: int) -> list[int]:
    return [b for b in BATCH_SIZES if b <= max(1, concurrency)] or [1]


def first(variant: Variant, cores: int, concurrency: int) -> Candidate:
    """Stage 1's candidate for a variant: one instance on every core, batching up to 8 without delay."""
    return Candidate(
        variant.runtime,
        variant.precision,
        str(variant.file),
        1,
        cores,
        min(8, max(batch_sizes(concurrency))),
        0.0,
    )
