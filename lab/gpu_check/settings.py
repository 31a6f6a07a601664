"""The run's settings and time budget, the Skip that turns a step that cannot run into a table entry, and
the progress log (stderr, so stdout keeps only the table)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class Skip(Exception):
    """A step that cannot run here; the message goes into the table."""


@dataclass
class Settings:
    out: Path
    dry_run: bool
    budget_s: float
    seconds_per_point: float
    batches: tuple[int, ...]
    served_seconds: float
    served_concurrency: tuple[int, ...]
    digits_bundle: Path | None
    resnet50: bool
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def require_time(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise Skip(f"{what}: skipped, under {seconds:.0f} s of the time budget left")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
