"""The docs name only files and code that exist: each `path/in/the/repo` and `layer.module.name` in them.

Docs drift silently when code moves; this reads README.md and docs/*.md, takes each backticked reference that
starts with one of the repository's folders or layers, and checks it against the tree and the importable code.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LAYERS = ("formats", "protos", "models", "training", "runtime", "export", "server", "client", "bench", "cli")
FOLDERS = (*LAYERS, "lab", "tests", "deploy", "scripts", "docs", "resnet_serve", ".ci")
# `resnet_serve.labels` and friends are ONNX metadata keys (formats/metadata.py), `resnet_serve.access` a
# logger name: dotted, but not code.
NOT_CODE = re.compile(r"^resnet_serve\.(labels|preprocess|arch|source_sha256|versions|precision|access)$")

FILE_SUFFIXES = {"json", "csv", "png", "md", "py", "yml", "yaml", "toml", "txt", "onnx", "pt", "log", "proto"}

_TICKED = re.compile(r"`([^`\s]+)`")


def _references(doc: Path) -> list[tuple[int, str]]:
    found = []
    in_fence = False
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for token in _TICKED.findall(line):
            found.append((number, token.rstrip(".,:;")))
    return found


def _path_reference(token: str) -> bool:
    head = token.split("/", 1)[0]
    return "/" in token and head in FOLDERS and "*" not in token and "{" not in token


def _code_reference(token: str) -> str | None:
    """The dotted name under `resnet_serve` that a token names, or None if it names no code of ours."""
    name = token.removesuffix("()")
    if name.rsplit(".", 1)[-1] in FILE_SUFFIXES:  # `bench.json`: a file name, not a module
        return None
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", name) or NOT_CODE.match(name):
        return None
    parts = name.split(".")
    if parts[0] == "resnet_serve" and len(parts) > 1 and parts[1] in LAYERS:
        return name
    if parts[0] in LAYERS:
        return "resnet_serve." + name
    return None


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 1, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_and_module_a_doc_names_exists(doc: Path) -> None:
    stale = []
    for number, token in _references(doc):
        if _path_reference(token) and not (ROOT / token).exists():
            stale.append(f"{doc.name}:{number}: `{token}` is not a file or folder of the repository")
        dotted = _code_reference(token)
        if dotted and not _resolves(dotted):
            stale.append(f"{doc.name}:{number}: `{token}` names no importable module or attribute")
    assert not stale, "stale references in the docs:\n" + "\n".join(stale)


def test_the_reference_checker_catches_a_moved_module() -> None:
    assert _code_reference("server.kserve_wire") == "resnet_serve.server.kserve_wire"
    assert not _resolves("resnet_serve.server.kserve_wire")
    assert _resolves("resnet_serve.server.app")
    assert _code_reference("resnet_serve.labels") is None
    assert _path_reference("server/batcher.py") and not _path_reference("artifacts/model.onnx")


_COMMAND = re.compile(r"(?:^|[\s$;&(])(?:resnet-serve|python3? -m resnet_serve) ([a-z][a-z-]*)")
_MODULE = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")


def _fenced_lines(doc: Path) -> list[tuple[int, str]]:
    lines, in_fence = [], False
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif in_fence:
            lines.append((number, line))
    return lines


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_a_doc_shows_exists(doc: Path) -> None:
    from resnet_serve.cli.main import COMMANDS

    stale = []
    for number, line in _fenced_lines(doc):
        for command in _COMMAND.findall(line):
            if command not in COMMANDS:
                stale.append(f"{doc.name}:{number}: `resnet-serve {command}` is not a command")
        for module in _MODULE.findall(line):
            if module not in ("torch.distributed.run",) and importlib.util.find_spec(module) is None:
                stale.append(f"{doc.name}:{number}: `python -m {module}` names no module")
    assert not stale, "stale commands in the docs:\n" + "\n".join(stale)
