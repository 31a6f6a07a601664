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


# ------------------------------------------------------------------- what the README's commands create


def _readme_commands() -> list[str]:
    return [line for _, line in _fenced_lines(ROOT / "README.md")]


def _created_repositories() -> set[str]:
    """The model repositories the README's commands write (`package ... --repo DIR`)."""
    return {m for line in _readme_commands() for m in re.findall(r"--repo (\S+)", line)}


def test_the_readme_serve_line_names_every_port_the_server_opens() -> None:
    from resnet_serve.server.config import ServerConfig

    defaults = ServerConfig()
    # The tour's serve line, the one that says where the server listens.
    (serve,) = [line for line in _readme_commands() if line.startswith("resnet-serve serve ") and "#" in line]
    for name, port in (
        ("gRPC", defaults.grpc_port),
        ("HTTP", defaults.http_port),
        ("metrics", defaults.metrics_port),
    ):
        assert f"{name} :{port}" in serve, (name, serve)


def test_every_repository_a_doc_serves_or_packages_into_is_one_the_readme_creates() -> None:
    created = _created_repositories()
    assert created
    used = re.compile(r'(?:--model-repository|--repo|model_repository =) "?([\w./-]+)')
    stale = [
        f"{doc.name}:{number}: {path}"
        for doc in DOCS
        for number, line in enumerate(doc.read_text().splitlines(), 1)
        for path in used.findall(line)
        if path not in created and not path.startswith(("/", "$")) and path not in {"DIR", "R", "REPO"}
    ]
    assert not stale, f"repositories nothing creates (the README's: {sorted(created)}):\n" + "\n".join(stale)


def test_git_ignores_what_the_readmes_commands_write() -> None:
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = {*_created_repositories()}
    written |= {m.strip("'\"") for line in _readme_commands() for m in re.findall(r"--out (\S+)", line)}
    assert "model_repository" in written
    for path in sorted(written):
        probe = path.rstrip("/") + "/probe" if "." not in Path(path).name else path
        done = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT, timeout=30)
        assert done.returncode == 0, f"{path} (written by a README command) is not in .gitignore"


# ----------------------------------------------------------------------------- no duplicated text


def _prose_paragraphs(doc: Path) -> list[tuple[int, str]]:
    """(first line, text) of each paragraph outside code fences and tables."""
    paragraphs: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    in_fence = False
    for number, line in enumerate([*doc.read_text().splitlines(), ""], 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        prose = not in_fence and line.strip() and not line.lstrip().startswith(("|", "```", "#"))
        if prose:
            start = start or number
            current.append(line.strip())
        elif current:
            paragraphs.append((start, " ".join(current)))
            current, start = [], 0
    return paragraphs


def _repeated_run(text: str, words: int = 8) -> str | None:
    tokens = text.split()
    seen: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - words + 1):
        run = tuple(tokens[i : i + words])
        if run in seen:
            return " ".join(run)
        seen.add(run)
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paragraph_repeats_itself_and_no_table_lists_a_row_twice(doc: Path) -> None:
    found = [
        f"{doc.name}:{number}: repeats {run!r}"
        for number, text in _prose_paragraphs(doc)
        if (run := _repeated_run(text)) is not None
    ]
    keys: dict[str, int] = {}
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if not line.startswith("|"):
            keys = {}  # a new table
            continue
        key = line.split("|")[1].strip()
        if key in keys and key.startswith("`"):  # a named row (an option, a field), not a layer number
            found.append(f"{doc.name}:{number}: row {key} again (line {keys[key]})")
        keys.setdefault(key, number)
    assert not found, "\n".join(found)


def test_the_duplication_check_catches_a_repeated_fragment() -> None:
    assert _repeated_run("a b c d e f g h, then a b c d e f g h") is None  # "h," and "h" differ
    assert _repeated_run(
        "one two three four five six seven eight and one two three four five six seven eight"
    )
