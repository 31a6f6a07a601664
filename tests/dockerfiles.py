"""What a Dockerfile of ours declares (ENV, ENTRYPOINT, HEALTHCHECK, the extras it installs), so that tests
run exactly what the image runs, without a Docker engine."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {name: ROOT / name for name in ("Dockerfile", "Dockerfile.gpu")}


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"no {instruction} in the stage FROM {self.base}"
        return found[-1]


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def stages(path: Path) -> list[Stage]:
    result: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            result.append(Stage(words[0], name))
        elif result:
            result[-1].instructions.append((instruction, args.strip()))
    return result


def env(stage: Stage) -> dict[str, str]:
    """The stage's ENV, in KEY=VALUE form (values without spaces, as ours are)."""
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"ENV {args!r}: use KEY=VALUE"
            values[key] = value
    return values


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD; an AssertionError for the shell form."""
    assert args.startswith("["), f"{args!r} is the shell form: a shell would be PID 1 and swallow SIGTERM"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return [str(v) for v in value]


def healthcheck(stage: Stage) -> list[str]:
    args = stage.last("HEALTHCHECK")
    return exec_form(args[args.index("CMD ") + 4 :].strip())


def installed_extras(stage: Stage) -> set[str]:
    """The extras of the `resnet-serve[...]` the runtime stage installs."""
    found = [m for args in stage.all("RUN") for m in re.findall(r"resnet-serve\[([a-z,]+)\]", args)]
    assert len(found) == 1, found
    return set(found[0].split(","))
