"""`resnet-serve tune`, the run: what exists here, the parity gate, the staged search, the report."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resnet_serve.bench.loadgen import Timing
from resnet_serve.bench.tune import candidates, parity, report, search
from resnet_serve.bench.tune.measure import LoadSettings, Measurement, Measurer, ServerMeasurer
from resnet_serve.bench.tune.settings import write_server_toml
from resnet_serve.formats.errors import UserError
from resnet_serve.formats.files import sha256_file, write_json_atomic
from resnet_serve.formats.parity import Tolerances
from resnet_serve.runtime.cpus import default_threads


class TuneError(UserError):
    """tune cannot run as asked (no model file, no runtime, every variant refused, ...)."""


@dataclass(frozen=True)
class TuneOptions:
    model: Path  # the FP32 ONNX file
    slo_p99_ms: float
    concurrency: int = 16
    int8: Path | None = None  # an INT8 QDQ file of the same model (`resnet-serve quantize`)
    name: str = ""  # the served model's name (default: the file's stem)
    runtimes: tuple[str, ...] = candidates.RUNTIMES
    protocol: str = "kserve"
    images: str = "auto"
    budget_s: float = 15 * 60.0
    cores: int = 0  # 0: the CPUs this process may run on
    out: Path = Path("artifacts/tune")
    fresh: bool = False
    repository: Path | None = None
    window_s: float = 1.5
    tolerances: Tolerances = field(default_factory=Tolerances)

    @property
    def model_name(self) -> str:
        return self.name or self.model.stem


def _cores(requested: int) -> int:
    return requested or default_threads()  # the cores the server it spawns would use


def tune(options: TuneOptions, measurer: Measurer | None = None) -> int:
    """Run the whole tune; 0 when a winner was written, 1 when no candidate met the SLO."""
    from tqdm import tqdm

    for path in (options.model, options.int8):
        if path is not None and not path.is_file():
            raise TuneError(f"no such model file: {path}")
    runtimes = candidates.available_runtimes(options.runtimes)
    if not runtimes:
        raise TuneError(f"none of the runtimes {', '.join(options.runtimes)} is installed here")
    cores = _cores(options.cores)
    bf16 = "openvino" in runtimes and candidates.openvino_has_bf16()
    variants = candidates.variants(options.model, options.int8, runtimes, bf16)
    print(
        f"tune: {options.model_name} on {cores} cores, runtimes {', '.join(runtimes)}, BF16 "
        f"{'native' if bf16 else 'not native on this CPU (not tried)'}; p99 ≤ {options.slo_p99_ms:g} ms at "
        f"concurrency {options.concurrency}, budget {options.budget_s / 60:g} min",
        file=sys.stderr,
    )
    checked = parity.check(variants, options.model, cores, options.tolerances)
    for p in checked:
        print(f"  parity {p.variant.label}: {'ok' if p.ok else 'REFUSED'}, {p.detail}", file=sys.stderr)
    passing = [p.variant for p in checked if p.ok]
    if not passing:
        raise TuneError("every variant failed its parity check (above); nothing to measure")

    load = LoadSettings(
        options.concurrency,
        options.protocol,
        options.images,
        timing=Timing(
            warmup_s=1.0, window_s=options.window_s, max_s=8 * options.window_s, tolerance=0.10, drain_s=5.0
        ),
    )
    settings = _signature(options, cores, load)
    options.out.mkdir(parents=True, exist_ok=True)
    state = search.State(options.out / "state.jsonl", settings, options.fresh)
    progress = tqdm(total=0, unit="candidate", file=sys.stderr, disable=None, leave=False)

    def measured(m: Measurement, done: int, planned: int) -> None:
        progress.total = planned
        progress.n = done
        progress.set_description(m.stage)
        progress.refresh()
        what = f"failed: {m.failed}" if m.failed else f"{m.throughput:.1f}/s, p99 {m.p99_ms:.1f} ms"
        tqdm.write(f"  [{m.stage}] {m.candidate.key}: {what}", file=sys.stderr)

    measurer = measurer or ServerMeasurer(options.model_name, load, options.out)
    run = search.Search(
        measurer,
        state,
        options.slo_p99_ms,
        options.budget_s,
        cores,
        options.concurrency,
        on_measured=measured,
    )
    try:
        outcome = run.run(passing)
    finally:
        progress.close()
    scored = run.scored()
    choice = search.choose(scored, options.slo_p99_ms)
    doc = report.document(settings, checked, outcome, scored, choice)
    written = [options.out / "tune.json"]
    write_json_atomic(written[0], doc)
    title = f"tune {options.model_name}: concurrency {options.concurrency}, p99 ≤ {options.slo_p99_ms:g} ms"
    written.append(report.plot(scored, choice, options.slo_p99_ms, options.out / "tune.png", title))
    print(report.table(scored, choice, options.slo_p99_ms))
    if outcome.skipped:
        print(
            f"budget: {len(outcome.skipped)} planned candidates not measured; run again with the same --out "
            f"and a larger --budget-min to resume",
            file=sys.stderr,
        )
    print(f"bound by {choice.bound_by}", file=sys.stderr)
    if choice.winner is not None:
        w = choice.winner
        comment = (
            f"resnet-serve tune: {w.throughput:.1f} infer/s, p99 {w.p99_ms:.1f} ms at concurrency "
            f"{options.concurrency} (SLO p99 ≤ {options.slo_p99_ms:g} ms)\nbound by {choice.bound_by}"
        )
        toml = write_server_toml(options.out / "tune.toml", options.model_name, w.candidate, comment)
        written.append(toml)
        if options.repository is not None:
            written.append(report.update_repository(options.repository, options.model_name, w))
        print(
            f"chosen: {w.candidate.key}; serve it with: resnet-serve serve --config {toml}", file=sys.stderr
        )
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if choice.winner is not None else 1


def _signature(options: TuneOptions, cores: int, load: LoadSettings) -> dict[str, Any]:
    """What must match for an earlier run's measurements to be re-used."""
    return {
        "model": sha256_file(options.model),
        "int8": sha256_file(options.int8) if options.int8 else None,
        "name": options.model_name,
        "cores": cores,
        "concurrency": load.concurrency,
        "protocol": load.protocol,
        "images": load.images,
        "timing": asdict(load.timing),
    }
