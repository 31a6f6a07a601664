"""Every extra installs what its commands import, and bench names a missing one before it starts.

Issue 12: `resnet-serve bench` with only `[bench]` installed died with a traceback (no sklearn, then no
matplotlib) after the run had started. The static check walks each command's modules (and every module of
ours they import, lazily or not) for third-party imports and requires each to be installed by the base
dependencies or the command's extras, or to be imported only behind a check that names the missing extra in
one line. The behavioural checks run `resnet-serve bench` with such a package made unimportable.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from resnet_serve.bench import extras
from resnet_serve.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "resnet_serve"


@dataclass(frozen=True)
class Deps:
    extras: tuple[str, ...]  # what the command's install instructions name
    checked: dict[str, str] = field(default_factory=dict)  # import → extra, behind a one-line check


# The one map from a command to what installs it.
COMMAND_DEPS: dict[str, Deps] = {
    "train": Deps(("train",)),
    "export": Deps(("train",)),
    "quantize": Deps(("train",)),
    # The TensorRT column: runtime.tensorrt.require_tensorrt says which package is missing.
    # verify --openvino reports its stages as skipped, naming the extra, where openvino is missing.
    "verify": Deps(("train",), {"tensorrt": "gpu", "cuda": "gpu", "openvino": "openvino"}),
    "package": Deps(("serve",)),
    "build-engine": Deps(("train", "gpu")),
    # runtime.factory turns a backend's missing runtime into one BackendError line; without pynvml the server
    # runs without GPU metrics.
    "serve": Deps(
        ("serve",),
        {"torch": "train", "tensorrt": "gpu", "cuda": "gpu", "pynvml": "gpu", "openvino": "openvino"},
    ),
    "classify": Deps(()),
    # --baseline's runtimes: bench.extras checks them before the run starts.
    "bench": Deps(("bench",), {n.module: n.extra for needs in extras.BASELINE.values() for n in needs}),
    # tune checks parity in-process (onnxruntime) and starts real servers; openvino is tried only where found.
    # Other runtimes come through runtime.factory, which turns a missing one into one BackendError line.
    "tune": Deps(
        ("bench", "serve"), {"torch": "train", "tensorrt": "gpu", "cuda": "gpu", "openvino": "openvino"}
    ),
    "demo": Deps(("train", "serve")),
    "health": Deps(("serve",)),  # the images' HEALTHCHECK: grpcio-health-checking
    # The images' entrypoint: serve, and with --build-engines the TensorRT build (require_tensorrt's line).
    "entrypoint": Deps(
        ("serve",),
        {"torch": "train", "tensorrt": "gpu", "cuda": "gpu", "pynvml": "gpu", "openvino": "openvino"},
    ),
}

# Import name → the distribution that provides it, as pyproject.toml spells it.
DISTRIBUTIONS = {
    "numpy": "numpy",
    "grpc": "grpcio",
    "google": "protobuf",
    "PIL": "pillow",
    "tqdm": "tqdm",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript",
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "prometheus_client": "prometheus-client",
    "aiohttp": "aiohttp",
    "torch": "torch",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tritonclient": "tritonclient",
    "tensorrt": "tensorrt",
    "cuda": "cuda-python",
    "pynvml": "nvidia-ml-py",
    "openvino": "openvino",
    "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings",
}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def installed_by(project: dict[str, object], extra_names: tuple[str, ...]) -> set[str]:
    """Distributions the base install plus these extras bring (our own extras expanded)."""
    table = project["optional-dependencies"]
    assert isinstance(table, dict)
    base = project["dependencies"]
    assert isinstance(base, list)
    found = {_name(r) for r in base}
    todo = list(extra_names)
    seen: set[str] = set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in table[extra]:
            if _name(req) == "resnet-serve":
                todo += re.findall(r"[\w-]+", req[req.index("[") :])
            else:
                found.add(_name(req))
    return found


def _path_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split(".")[1:])
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imports(module: str) -> tuple[set[str], dict[str, str]]:
    """(modules of ours, {third-party top-level name: this module}) imported anywhere in `module`, lazily
    too, and through module-name strings (runtime.factory's BACKENDS); `if TYPE_CHECKING:` blocks aside."""
    path = _path_of(module)
    assert path is not None, module
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    ours: set[str] = set()
    theirs: dict[str, str] = {}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE)
        ):
            names = [node.value] if _path_of(node.value) else []
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == PACKAGE:
                if _path_of(name):
                    ours.add(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                theirs.setdefault(top, module)
    return ours, theirs


def third_party_imports(entry: str) -> dict[str, str]:
    """Every third-party top-level import reachable from `entry`, with one module of ours that imports it."""
    seen: set[str] = set()
    todo = [entry]
    found: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts)) if _path_of(".".join(parts[:i]))]
        ours, theirs = _imports(module)
        todo += ours
        for name, where in theirs.items():
            found.setdefault(name, where)
    return found


def unprovided(command: str, project: dict[str, object]) -> list[str]:
    deps = COMMAND_DEPS[command]
    have = installed_by(project, deps.extras)
    missing = []
    for name, where in sorted(third_party_imports(COMMANDS[command].import_path).items()):
        assert name in DISTRIBUTIONS, f"{where} imports {name}: add it to DISTRIBUTIONS"
        if DISTRIBUTIONS[name] not in have and name not in deps.checked:
            missing.append(f"{command}: {where} imports {name}, which {deps.extras or 'the base'} lacks")
    return missing


@pytest.fixture(scope="module")
def project() -> dict[str, object]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table = doc["project"]
    assert isinstance(table, dict)
    return table


def test_every_command_has_its_extras_named() -> None:
    assert set(COMMAND_DEPS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMAND_DEPS))
def test_each_commands_imports_are_installed_by_its_extras_or_checked(
    command: str, project: dict[str, object]
) -> None:
    assert unprovided(command, project) == []
    for name, extra in COMMAND_DEPS[command].checked.items():  # the check's advice is true
        assert DISTRIBUTIONS[name] in installed_by(project, (extra,)), (command, name, extra)


def test_the_check_catches_the_issue_12_extra(project: dict[str, object]) -> None:
    table = dict(project["optional-dependencies"])  # type: ignore[call-overload]
    table["bench"] = [r for r in table["bench"] if _name(r) != "scikit-learn"]
    missing = unprovided("bench", {**project, "optional-dependencies": table})
    assert missing == ["bench: resnet_serve.bench.workload imports sklearn, which ('bench',) lacks"]


def test_benchs_messages_name_an_extra_that_installs_the_package(project: dict[str, object]) -> None:
    needs = [extras.SKLEARN, extras.TRITONCLIENT, extras.MATPLOTLIB]
    for need in [*needs, *(n for group in extras.BASELINE.values() for n in group)]:
        assert DISTRIBUTIONS[need.module] in installed_by(project, (need.extra,)), need


UNREACHABLE = "127.0.0.1:1"  # a check made after connecting would report the connection instead


@pytest.mark.parametrize(
    ("blocked", "args", "message"),
    [
        ("sklearn", [], "needs scikit-learn, which is not installed: pip install 'resnet-serve[bench]'"),
        ("matplotlib", ["--images", "IMAGES"], "the plots needs matplotlib"),
        ("tritonclient", ["--protocol", "kserve"], "--protocol kserve needs tritonclient"),
        ("onnxruntime", ["--baseline", "MODEL"], "needs onnxruntime, which is not installed: "
         "pip install 'resnet-serve[serve]'"),
    ],
)  # fmt: skip
def test_bench_names_a_missing_extra_in_one_line_before_it_starts(
    blocked: str,
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    args = [
        {"IMAGES": str(tmp_path / "*.png"), "MODEL": str(tmp_path / "model.onnx")}.get(a, a) for a in args
    ]
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` now fails; find_spec says absent
    out = tmp_path / "out"
    assert main(["bench", "--server", UNREACHABLE, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnet-serve bench: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_a_baseline_of_unknown_kind_is_refused_before_the_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"")
    assert main(["bench", "--server", UNREACHABLE, "--baseline", str(model), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"resnet-serve bench: error: --baseline {model}: cannot tell the backend")
        and "\n" not in err
    )
