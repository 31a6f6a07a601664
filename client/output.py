"""How `classify` prints one image's outcome: human-readable lines, JSON lines or CSV rows."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from resnet_serve.client.results import Classification

FORMATS = ("human", "json", "csv")
CSV_HEADER = ("path", "rank", "index", "label", "score", "latency_ms", "request_id", "error")


@dataclass(frozen=True)
class Outcome:
    """One input's result, or why it failed (`code` is a gRPC status name, also for local failures)."""

    path: str
    result: Classification | None = None
    code: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None


def human(outcome: Outcome) -> str:
    if outcome.result is None:
        return f"{outcome.path}: error: {outcome.code}: {outcome.message}"
    labels = "  ".join(f"{p.label} ({p.score:.1%})" for p in outcome.result.predictions)
    return f"{outcome.path}: {labels}"


def json_line(outcome: Outcome) -> str:
    record: dict[str, Any] = {"path": outcome.path}
    if outcome.result is None:
        record["error"] = {"code": outcome.code, "message": outcome.message}
    else:
        r = outcome.result
        t = r.timing
        record |= {
            "model": r.model,
            "version": r.version,
            "request_id": r.request_id,
            # JSON has no NaN: a score that is not a number (a model that overflowed) is null
            "predictions": [
                {"index": p.index, "label": p.label, "score": p.score if math.isfinite(p.score) else None}
                for p in r.predictions
            ],
            "latency_ms": round(r.latency_s * 1e3, 3),
            "server_timing_us": {
                "queue": t.queue_us,
                "preprocess": t.preprocess_us,
                "compute": t.compute_us,
                "total": t.total_us,
                "batch_size": t.batch_size,
            },
        }
    return json.dumps(record, allow_nan=False)


def csv_header() -> str:
    return _csv_rows([CSV_HEADER])


def csv_rows(outcome: Outcome) -> str:
    """One row per prediction (rank 1 first), or one row with the error."""
    if outcome.result is None:
        return _csv_rows([(outcome.path, "", "", "", "", "", "", f"{outcome.code}: {outcome.message}")])
    r = outcome.result
    latency = f"{r.latency_s * 1e3:.3f}"
    return _csv_rows(
        [
            (outcome.path, rank, p.index, p.label, f"{p.score:.6f}", latency, r.request_id, "")
            for rank, p in enumerate(r.predictions, start=1)
        ]
    )


def _csv_rows(rows: list[tuple[object, ...]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().rstrip("\n")
