"""Imports run only downward: docs/architecture.md's layer table, checked on every import of every module.

The table is parsed from docs/architecture.md itself, not copied here: the doc is what a newcomer reads, so
the doc and the check cannot drift apart (a row edited there changes what this test enforces; a word this
test does not understand fails it instead of being ignored).

Every import counts: top level, inside functions (lazy), under `if TYPE_CHECKING:`, and strings naming one of
our modules (`importlib.import_module` tables such as runtime/factory.py's). On top of the table:
- a layer whose row calls it torch-free ("torch-free", "never torch") imports torch nowhere, and nothing it
  imports at load time loads torch at load time (followed through our own modules, package __init__s
  included); the server reaches the PyTorch backend (runtime/torch_cuda.py) only from inside a function.
- "Y (lazily)" in a row: that import sits inside a function. "everything, lazily" (the cli): the program's
  entry, cli/main.py, loads no other layer before it knows the subcommand (`resnet-serve --help` is instant
  and `serve` never loads torch); the subcommand modules it loads on demand may import at top level.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "resnet_serve"
NOT_INSTALLED = "lab"  # importable from a checkout only: no installed layer may import it
# Qualifiers the table spells in words, mapped to the files they mean.
QUALIFIER_FILES = {"torch backend only": {"runtime/torch_cuda.py"}}
# Qualifiers that name the only modules of a layer that may be imported.
QUALIFIER_MODULES = {"launch only": {f"{PACKAGE}.server.launch"}}
# The module a layer's "everything, lazily" is asked of: what runs before the subcommand is known.
ENTRY = {"cli": f"{PACKAGE}.cli.main"}
TORCH = "torch"
TORCH_BACKEND = f"{PACKAGE}.runtime.torch_cuda"


@dataclass(frozen=True)
class Allowed:
    layer: str
    installed: bool
    may_import: frozenset[str]  # layers; the layer itself is always allowed
    lazily: frozenset[str]  # of may_import, the ones that must be imported inside a function
    only_from: dict[str, frozenset[str]]  # layer -> the only files (relative to the root) that may import it
    only_modules: dict[str, frozenset[str]]  # layer -> the only modules of it that may be imported
    entry_lazily: bool  # "everything, lazily": the entry module loads no other layer at load time
    torch_free: bool


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    line: int
    target: str  # dotted module name as written (resolved if relative)
    lazy: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`
    dynamic: bool = False  # a string naming one of our modules (import_module tables)

    @property
    def eager(self) -> bool:
        """Runs when the importing module is loaded."""
        return not (self.lazy or self.type_only or self.dynamic)


@dataclass
class Module:
    name: str
    path: Path
    layer: str
    imports: list[Import] = field(default_factory=list)


def _split_top_level(cell: str) -> list[str]:
    """Split a cell on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in cell:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def _table_rows(doc: str, header: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Each row (the line and its cells) of the markdown table whose header starts with `header`."""
    in_table = False
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[: len(header)] == header:
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            return
        if set(line) <= set("|-: "):
            continue
        yield line, cells


def parse_table(doc: str) -> dict[str, Allowed]:
    """docs/architecture.md's layer table: `| layer | folder | what | may import (of ours) |`."""
    rows: list[tuple[str, str, str, str]] = []
    for line, cells in _table_rows(doc, ["layer", "folder"]):
        assert len(cells) == 4, f"docs/architecture.md: a layer-table row without 4 cells: {line!r}"
        level, folder, what, may = cells
        rows.append((level, folder.strip("`").rstrip("/"), what, may))
    assert rows, "docs/architecture.md has no layer table (| layer | folder | what | may import |)"

    installed = [folder for level, folder, _, _ in rows if level.isdigit()]
    table: dict[str, Allowed] = {}
    for level, folder, what, may in rows:
        layers: set[str] = set()
        lazily: set[str] = set()
        only_from: dict[str, frozenset[str]] = {}
        only_modules: dict[str, frozenset[str]] = {}
        entry_lazily = False
        for token in _split_top_level(may):
            m = re.fullmatch(r"([\w ]+?)\s*(?:\((.*)\))?", token)
            assert m, f"docs/architecture.md, row {folder}: cannot read {token!r}"
            word, quals = m.group(1), [q.strip() for q in (m.group(2) or "").split(",") if q.strip()]
            if word == "nothing":
                names: list[str] = []
            elif word == "everything":
                names = installed
            elif word == "anything":
                names = [*installed, NOT_INSTALLED]
            elif word == "lazily":
                assert folder in ENTRY, f"row {folder}: 'lazily' for a layer without an entry module"
                entry_lazily = True
                continue
            else:
                assert word in {r[1] for r in rows}, f"docs/architecture.md, row {folder}: unknown {word!r}"
                names = [word]
            layers.update(names)
            for q in quals:
                if q == "lazily":
                    lazily.update(names)
                elif q in QUALIFIER_FILES:
                    only_from.update({n: frozenset(QUALIFIER_FILES[q]) for n in names})
                elif q in QUALIFIER_MODULES:
                    only_modules.update({n: frozenset(QUALIFIER_MODULES[q]) for n in names})
                else:
                    raise AssertionError(f"docs/architecture.md, row {folder}: unknown qualifier {q!r}")
        table[folder] = Allowed(
            layer=folder,
            installed=level.isdigit(),
            may_import=frozenset(layers),
            lazily=frozenset(lazily),
            only_from=only_from,
            only_modules=only_modules,
            entry_lazily=entry_lazily,
            torch_free="torch-free" in what or "never torch" in what,
        )
    return table


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts and parts[0] == NOT_INSTALLED:
        return ".".join(parts)
    return ".".join([PACKAGE, *parts])


def read_imports(root: Path, path: Path, name: str) -> list[Import]:
    """Every import statement in a file, and every string constant that names a dotted module of ours."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, alias.name, lazy, type_only))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from a import b` loads a.b when b is a module; resolve() keeps the longest existing name.
                found.append(Import(path, node.lineno, f"{base}.{alias.name}", lazy, type_only))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(rf"({PACKAGE}|{NOT_INSTALLED})(\.\w+)+", node.value)
        ):
            found.append(Import(path, node.lineno, node.value, True, type_only, dynamic=True))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            lazy = True
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                visit(child, lazy, True)
            else:
                visit(child, lazy, type_only)

    visit(tree, False, False)
    return found


def collect(root: Path, table: dict[str, Allowed]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for layer in table:
        for path in sorted((root / layer).rglob("*.py")):
            name = _module_name(root, path)
            modules[name] = Module(name, path, layer)
    for module in modules.values():
        module.imports = read_imports(root, module.path, module.name)
    return modules


def resolve(target: str, modules: dict[str, Module]) -> list[str]:
    """Our modules an import loads: each existing package on the way, then the module itself."""
    parts = target.split(".")
    return [n for n in (".".join(parts[: i + 1]) for i in range(len(parts))) if n in modules]


def layer_of(target: str, table: dict[str, Allowed]) -> str | None:
    parts = target.split(".")
    if parts[0] == NOT_INSTALLED:
        return NOT_INSTALLED
    if parts[0] == PACKAGE and len(parts) > 1 and parts[1] in table:
        return parts[1]
    return None


def eager_closure(start: str, modules: dict[str, Module]) -> dict[str, tuple[str, ...]]:
    """Every module (ours and third-party top-level names) loaded when `start` is, with one chain to it."""
    chains: dict[str, tuple[str, ...]] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(n, (n,)) for n in resolve(start, modules)]
    while todo:
        name, chain = todo.pop()
        if name in chains:
            continue
        chains[name] = chain
        for imp in modules[name].imports:
            if not imp.eager:
                continue
            ours = resolve(imp.target, modules)
            if ours:
                todo.extend((n, (*chain, n)) for n in ours if n not in chains)
            elif imp.target.split(".")[0] not in (PACKAGE, NOT_INSTALLED):
                chains.setdefault(imp.target.split(".")[0], (*chain, imp.target))
    return chains


def check(root: Path, doc: str) -> list[str]:
    """Every import that runs against the table, as 'file:line: what, rule'."""
    table = parse_table(doc)
    modules = collect(root, table)
    problems: list[str] = []

    def where(imp: Import) -> str:
        return f"{imp.path.relative_to(root)}:{imp.line}"

    for module in modules.values():
        allowed = table[module.layer]
        rel = module.path.relative_to(root).as_posix()
        for imp in module.imports:
            if imp.dynamic and not resolve(imp.target, modules):
                continue  # a string that only looks like a module name (a metadata key, a logger)
            if imp.target.split(".")[0] in set(table) - {NOT_INSTALLED} and not imp.dynamic:
                # The spelling from before the one installed name: in a user's project it would import the
                # user's own `server/` or `models/` folder, and installed it finds nothing.
                problems.append(f"{where(imp)}: imports {imp.target} without the {PACKAGE}. prefix")
                continue
            if imp.target.split(".")[0] == TORCH and allowed.torch_free:
                problems.append(f"{where(imp)}: imports torch; {module.layer}/ is torch-free (the table)")
            target_layer = layer_of(imp.target, table)
            if target_layer is None or target_layer == module.layer:
                continue
            shown = (resolve(imp.target, modules) or [imp.target])[
                -1
            ]  # the module, not the name taken from it
            rule = f"{module.layer}/ may import only: {', '.join(sorted(allowed.may_import)) or 'nothing'}"
            if target_layer not in allowed.may_import:
                problems.append(f"{where(imp)}: imports {shown} (layer {target_layer}/); {rule}")
            elif target_layer in allowed.only_from and rel not in allowed.only_from[target_layer]:
                files = ", ".join(sorted(allowed.only_from[target_layer]))
                problems.append(f"{where(imp)}: imports {shown}; only {files} may import {target_layer}/")
            elif target_layer in allowed.only_modules and shown not in allowed.only_modules[target_layer]:
                modules_ = ", ".join(sorted(allowed.only_modules[target_layer]))
                problems.append(f"{where(imp)}: imports {shown}; of {target_layer}/ only {modules_} may be")
            elif target_layer in allowed.lazily and imp.eager:
                problems.append(
                    f"{where(imp)}: imports {shown} at load time; {module.layer}/ may import "
                    f"{target_layer}/ only inside a function"
                )

        if allowed.torch_free:
            # At load time nothing may load torch or the PyTorch backend; inside a function the PyTorch
            # backend may be loaded (that is how a server serves a checkpoint), nothing else that loads torch.
            # A module of the same layer is judged itself, so only imports leaving the layer are followed.
            for imp in module.imports:
                ours = resolve(imp.target, modules)
                if imp.type_only or not ours or layer_of(imp.target, table) == module.layer:
                    continue
                chains = eager_closure(imp.target, modules)
                for bad in (TORCH, TORCH_BACKEND):
                    if bad not in chains or (not imp.eager and TORCH_BACKEND in chains[bad]):
                        continue
                    problems.append(
                        f"{where(imp)}: importing {ours[-1]} loads {bad} ({' -> '.join(chains[bad])}); "
                        f"{module.layer}/ is torch-free and reaches the PyTorch backend only in a function"
                    )

    for layer, entry in ENTRY.items():
        if not table[layer].entry_lazily or entry not in modules:
            continue
        for name, chain in eager_closure(entry, modules).items():
            other = layer_of(name, table)
            if other is not None and other != layer:
                problems.append(
                    f"{modules[entry].path.relative_to(root)}: loads {name} at load time "
                    f"({' -> '.join(chain)}); {layer}/ imports everything else lazily (the table)"
                )
    return sorted(set(problems))


# ---------------------------------------------------------------------------------------- inside server/

SERVER = "server"


def parse_server_table(doc: str) -> dict[str, int]:
    """docs/architecture.md's "Inside server/" table: `| level | units | what |` → unit name → level."""
    levels: dict[str, int] = {}
    for line, cells in _table_rows(doc, ["level", "units"]):
        assert len(cells) == 3 and cells[0].isdigit(), f"docs/architecture.md, Inside server/: {line!r}"
        for unit in cells[1].split(","):
            name = unit.strip().strip("`")
            assert name not in levels, f"docs/architecture.md, Inside server/: {name!r} listed twice"
            levels[name] = int(cells[0])
    assert levels, "docs/architecture.md has no 'Inside server/' table (| level | units | what |)"
    return levels


def _server_unit(name: str) -> str | None:
    """The unit of server/ a dotted module name is in: its subpackage, or its own module name."""
    parts = name.split(".")
    return parts[2] if parts[:2] == [PACKAGE, SERVER] and len(parts) > 2 else None


def check_server(root: Path, doc: str) -> list[str]:
    """Every import between units of server/ that does not run to a lower level of the table."""
    levels = parse_server_table(doc)
    modules = {n: m for n, m in collect(root, parse_table(doc)).items() if m.layer == SERVER}
    units = {u for u in map(_server_unit, modules) if u is not None}
    problems = [
        f"server/{u}: a unit of server/ missing from docs/architecture.md's table"
        for u in units - set(levels)
    ]
    problems += [f"{u}: in docs/architecture.md's server table, not in server/" for u in set(levels) - units]
    for module in modules.values():
        unit = _server_unit(module.name)
        if unit not in levels:
            continue
        for imp in module.imports:
            for target in resolve(imp.target, modules)[-1:]:
                other = _server_unit(target)
                if other is None or other == unit or other not in levels or levels[other] < levels[unit]:
                    continue
                where = f"{imp.path.relative_to(root)}:{imp.line}"
                problems.append(
                    f"{where}: {unit} (level {levels[unit]}) imports {target} ({other}, level "
                    f"{levels[other]}); a unit of server/ imports only lower levels"
                )
    return sorted(set(problems))


def test_units_inside_server_import_only_lower_levels() -> None:
    problems = check_server(ROOT, (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert not problems, "imports against docs/architecture.md's server table:\n" + "\n".join(problems)


def test_imports_follow_the_layer_table() -> None:
    problems = check(ROOT, (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert not problems, "imports against docs/architecture.md's layer table:\n" + "\n".join(problems)


def test_the_table_covers_every_installed_folder() -> None:
    """A layer folder linked into resnet_serve/ but missing from the table would go unchecked."""
    table = parse_table((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    linked = {p.name for p in (ROOT / PACKAGE).iterdir() if p.is_symlink()}
    assert linked == {layer for layer, row in table.items() if row.installed}
    assert table["server"].torch_free and table["formats"].torch_free
    assert table["formats"].may_import == frozenset()


# The checker itself, on a synthetic house: it must fail on an import running back up and pass without it.

DOC = """\
| layer | folder | what | may import (of ours) |
|---|---|---|---|
| 0 | `formats/` | contracts. torch-free | nothing |
| 1 | `models/` | the library | formats |
| 2 | `runtime/` | backends | models (torch backend only, lazily), formats |
| 3 | `server/` | the server. **never torch** | runtime, formats |
| 4 | `bench/` | the tools | server (launch only), formats |
| 5 | `cli/` | the program | everything, lazily |
| – | `lab/` | experiments | anything |
"""


def _house(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {
        "formats/__init__.py": "",
        "formats/keys.py": "import json\n",
        "models/__init__.py": "",
        "models/net.py": "import torch\nfrom resnet_serve.formats import keys\n",
        "runtime/__init__.py": "",
        "runtime/factory.py": 'TABLE = {"torch": "resnet_serve.runtime.torch_cuda"}\n',
        "runtime/torch_cuda.py": "def load():\n    import torch\n    from resnet_serve.models import net\n",
        "server/__init__.py": "",
        "server/app.py": "from resnet_serve.runtime import factory\nfrom resnet_serve.formats import keys\n",
        "server/launch.py": "import subprocess\nfrom resnet_serve.formats import keys\n",
        "bench/__init__.py": "",
        "bench/tune.py": "from resnet_serve.server.launch import wait_ready\n",
        "cli/__init__.py": "",
        "cli/main.py": "import argparse\n\ndef run():\n    from resnet_serve.server import app\n",
        "cli/demo.py": "from resnet_serve.server import app\n",
        "lab/__init__.py": "",
        "lab/exp.py": "from resnet_serve.models import net\n",
    }
    for rel, text in {**base, **files}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_checker_passes_a_house_in_order(tmp_path: Path) -> None:
    assert check(_house(tmp_path, {}), DOC) == []


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        # an upward import, at top level and inside a function
        (
            {"formats/keys.py": "from resnet_serve.server import app\n"},
            "formats/keys.py:1: imports resnet_serve.server.app (layer server/); formats/ may import only",
        ),
        (
            {"formats/keys.py": "def f():\n    import resnet_serve.models.net\n"},
            "formats/keys.py:2: imports resnet_serve.models.net (layer models/)",
        ),
        # a relative import is resolved before it is judged
        ({"models/net.py": "from ..server import app\n"}, "models/net.py:1: imports resnet_serve.server.app"),
        # sideways: models and formats only, not runtime beside... nor lab from an installed layer
        ({"server/app.py": "import lab.exp\n"}, "server/app.py:1: imports lab.exp (layer lab/)"),
        # the old spelling, without the installed name
        (
            {"server/app.py": "from server.batcher import x\n"},
            "server/app.py:1: imports server.batcher.x without the resnet_serve. prefix",
        ),
        (
            {"cli/demo.py": "import models\n"},
            "cli/demo.py:1: imports models without the resnet_serve. prefix",
        ),
        # a module name in an import_module table counts
        (
            {"models/net.py": 'WHERE = "resnet_serve.server.app"\n'},
            "models/net.py:1: imports resnet_serve.server.app (layer server/)",
        ),
        # torch-free layers
        (
            {"formats/keys.py": "import torch.nn\n"},
            "formats/keys.py:1: imports torch; formats/ is torch-free",
        ),
        ({"server/app.py": "def f():\n    import torch\n"}, "server/app.py:2: imports torch"),
        (
            {"server/app.py": "from resnet_serve.runtime import torch_cuda\n"},
            "server/app.py:1: importing resnet_serve.runtime.torch_cuda loads resnet_serve.runtime.torch_",
        ),
        (
            {"runtime/factory.py": "from resnet_serve.runtime import torch_cuda\n"},
            "server/app.py:1: importing resnet_serve.runtime.factory loads resnet_serve.runtime.torch_cuda",
        ),
        (
            {
                "runtime/torch_cuda.py": "import torch\n",
                "runtime/factory.py": "import resnet_serve.runtime.torch_cuda\n",
            },
            "server/app.py:1: importing resnet_serve.runtime.factory loads torch",
        ),
        # the table's qualifiers: "(torch backend only, lazily)" and "everything, lazily"
        (
            {"runtime/torch_cuda.py": "from resnet_serve.models import net\n"},
            "runtime/torch_cuda.py:1: imports resnet_serve.models.net at load time",
        ),
        (
            {"runtime/factory.py": "def f():\n    from resnet_serve.models import net\n"},
            "runtime/factory.py:2: imports resnet_serve.models.net; only runtime/torch_cuda.py may import",
        ),
        # "(launch only)": of that layer, only the modules the qualifier names
        (
            {"bench/tune.py": "from resnet_serve.server import app\n"},
            "bench/tune.py:1: imports resnet_serve.server.app; of server/ only resnet_serve.server.launch",
        ),
        (
            {"cli/main.py": "from resnet_serve.cli import demo\n"},
            "cli/main.py: loads resnet_serve.server.app at load time",
        ),
    ],
)
def test_checker_reports_an_import_against_the_table(
    tmp_path: Path, files: dict[str, str], needle: str
) -> None:
    problems = check(_house(tmp_path, files), DOC)
    assert any(needle in p for p in problems), problems


SERVER_DOC = (
    DOC
    + """
| level | units | what |
|---|---|---|
| 0 | `errors`, `launch` | errors |
| 1 | `models`, `extra` | models |
| 2 | `app` | the server |
"""
)


def _server_house(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {
        "server/errors.py": "",
        "server/models/__init__.py": "",
        "server/models/manager.py": "from resnet_serve.server import errors\n",
        "server/extra.py": "",
        "server/app.py": "from resnet_serve.server.models import manager\n",
    }
    return _house(tmp_path, {**base, **files})


def test_server_checker_passes_units_in_order(tmp_path: Path) -> None:
    assert check_server(_server_house(tmp_path, {}), SERVER_DOC) == []


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        # a cycle: errors (0) back up to models (1), also lazily
        (
            {"server/errors.py": "def f():\n    from resnet_serve.server.models import manager\n"},
            "server/errors.py:2: errors (level 0) imports resnet_serve.server.models.manager (models, level",
        ),
        # sideways, within a level
        (
            {"server/extra.py": "from resnet_serve.server.models.manager import x\n"},
            "server/extra.py:1: extra (level 1) imports resnet_serve.server.models.manager (models, level 1)",
        ),
        # a new unit must be placed in the table
        ({"server/new.py": ""}, "server/new: a unit of server/ missing from docs/architecture.md's table"),
        # a real import (annotations count too: the test below)
        (
            {"server/errors.py": "from resnet_serve.server import app\n"},
            "server/errors.py:1: errors (level 0) imports resnet_serve.server.app (app, level 2)",
        ),
    ],
)
def test_server_checker_reports_an_import_against_the_table(
    tmp_path: Path, files: dict[str, str], needle: str
) -> None:
    problems = check_server(_server_house(tmp_path, files), SERVER_DOC)
    assert any(needle in p for p in problems), problems


def test_server_checker_counts_an_annotation_that_points_up(tmp_path: Path) -> None:
    """An import under `if TYPE_CHECKING:` never runs, but it is a dependency all the same: a unit whose
    annotations name a higher unit is refused like one that imports it."""
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from resnet_serve.server import app\n"
    problems = check_server(_server_house(tmp_path, {"server/errors.py": typed}), SERVER_DOC)
    assert any("server/errors.py:3: errors (level 0) imports resnet_serve.server.app" in p for p in problems)


def test_checker_refuses_a_table_word_it_does_not_know() -> None:
    with pytest.raises(AssertionError, match="unknown qualifier 'on Tuesdays'"):
        parse_table(DOC.replace("(torch backend only, lazily)", "(on Tuesdays)"))
    with pytest.raises(AssertionError, match="unknown 'gateway'"):
        parse_table(DOC.replace("runtime, formats |", "gateway, formats |"))
