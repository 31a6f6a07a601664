"""What `tune` leaves behind: a table on stdout, tune.json, tune.png and the winner as tune.toml (and, when
asked, in the model repository's config.json)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from resnet_serve.bench.tune.candidates import Candidate
from resnet_serve.bench.tune.parity import ParityResult
from resnet_serve.bench.tune.search import Choice, Outcome, Scored
from resnet_serve.formats.files import sha256_file, write_bytes_atomic, write_json_atomic
from resnet_serve.formats.repository import (
    CONFIG_NAME,
    TRITON_CONFIG_NAME,
    DynamicBatching,
    RepositoryError,
    read_model,
)


def document(
    settings: dict[str, Any],
    parity: list[ParityResult],
    outcome: Outcome,
    scored: list[Scored],
    choice: Choice,
) -> dict[str, Any]:
    return {
        "settings": settings,
        "parity": [
            {
                "runtime": p.variant.runtime,
                "precision": p.variant.precision,
                "file": str(p.variant.file),
                "ok": p.ok,
                "detail": p.detail,
            }
            for p in parity
        ],
        "measurements": [m.to_json() for m in outcome.measurements],
        "candidates": [
            {
                "key": s.candidate.key,
                "candidate": s.candidate.to_json(),
                "throughput": s.throughput,
                "p99_ms": s.p99_ms,
                "meets_slo": s.meets,
                "runs": len(s.runs),
                "failed": s.failed,
            }
            for s in scored
        ],
        "skipped_by_budget": [c.key for c in outcome.skipped],
        "resumed": outcome.resumed,
        "winner": choice.winner.candidate.to_json() if choice.winner else None,
        "winner_key": choice.winner.candidate.key if choice.winner else None,
        "winner_throughput": choice.winner.throughput if choice.winner else None,
        "winner_p99_ms": choice.winner.p99_ms if choice.winner else None,
        "fastest_key": choice.fastest.candidate.key if choice.fastest else None,
        "fastest_throughput": choice.fastest.throughput if choice.fastest else None,
        "bound_by": choice.bound_by,
    }


def table(scored: list[Scored], choice: Choice, slo_p99_ms: float) -> str:
    header = f"{'candidate':<42} {'runs':>4} {'infer/s':>9} {'p99 ms':>8}  SLO"
    lines = [header, "-" * len(header)]
    for s in sorted(scored, key=lambda s: s.throughput, reverse=True):
        mark = "*" if choice.winner is s else " "
        over = sum(1 for m in s.runs if m.p99_ms > slo_p99_ms or m.errors)
        verdict = (
            f"failed: {s.failed[:60]}"
            if s.failed
            else "meets"
            if s.meets
            else f"p99 > {slo_p99_ms:g} ms or errors in {over} of {len(s.runs)} runs"
        )
        lines.append(
            f"{mark}{s.candidate.key:<41} {len(s.runs):>4} {s.throughput:>9.1f} {s.p99_ms:>8.1f}  {verdict}"
        )
    return "\n".join(lines)


def plot(scored: list[Scored], choice: Choice, slo_p99_ms: float, path: Path, title: str) -> Path:
    """Each candidate's p99 against its throughput, the SLO as a line, the winner marked."""
    from resnet_serve.bench.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ok = [s for s in scored if not s.failed]
    for runtime_precision in sorted({(s.candidate.runtime, s.candidate.precision) for s in ok}):
        group = [s for s in ok if (s.candidate.runtime, s.candidate.precision) == runtime_precision]
        ax.scatter([s.throughput for s in group], [s.p99_ms for s in group], s=18,
                   label=" ".join(runtime_precision))  # fmt: skip
    ax.axhline(slo_p99_ms, color="red", linewidth=1, label=f"SLO p99 {slo_p99_ms:g} ms")
    if choice.winner is not None:
        w = choice.winner
        ax.scatter([w.throughput], [w.p99_ms], marker="*", s=220, color="gold", edgecolors="black",
                   zorder=5, label=f"chosen: {w.candidate.key}")  # fmt: skip
    ax.set_xlabel("throughput (inferences/s, closed loop)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, plt, path)


def update_repository(repository: Path, name: str, winner: Scored) -> Path:
    """Write the winner's settings into the repository's config.json for `name`, when the repository's
    latest version is the very file the winner ran (else the settings would describe another model)."""
    model = read_model(repository / name)
    c = winner.candidate
    latest = model.latest()
    if latest.sha256 != sha256_file(c.file):
        raise RepositoryError(
            f"{model.path}: its version {latest.version} is not {c.file} (the {c.precision} file the winner "
            f"ran); package that file first, or serve with the written tune.toml"
        )
    updated = replace(
        model,
        backend=c.runtime,
        instance_count=c.instances,
        intra_op_threads=c.threads,
        inference_precision=c.inference_precision if c.runtime == "openvino" else model.inference_precision,
        max_batch_size=c.max_batch,
        dynamic_batching=DynamicBatching(
            [b for b in model.dynamic_batching.preferred_batch_sizes if b <= c.max_batch],
            round(c.delay_ms * 1000),
        ),
    )
    path = repository / name / CONFIG_NAME
    write_json_atomic(path, updated.to_json())
    if (repository / name / TRITON_CONFIG_NAME).is_file():
        _update_triton_config(repository / name / TRITON_CONFIG_NAME, c)
    return path


def _update_triton_config(path: Path, c: Candidate) -> None:
    """The same settings in a config.pbtxt beside it (it wins over config.json when served), every other
    field kept as written."""
    from google.protobuf import text_format

    from resnet_serve.protos import model_config_pb2 as mc

    text = path.read_text(encoding="utf-8")
    config = text_format.Parse(text, mc.ModelConfig())
    config.max_batch_size = c.max_batch
    batching = config.dynamic_batching
    kept = [b for b in batching.preferred_batch_size if b <= c.max_batch]
    del batching.preferred_batch_size[:]
    batching.preferred_batch_size.extend(kept)
    batching.max_queue_delay_microseconds = round(c.delay_ms * 1000)
    del config.instance_group[:]
    config.instance_group.add(count=c.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    write_bytes_atomic(path, (header + text_format.MessageToString(config)).encode())
