"""The package a build makes does not depend on the links in resnet_serve/.

pyproject.toml lists every subpackage and maps each `resnet_serve.<layer>` to its top-level folder, so a
clone without symlinks (`git -c core.symlinks=false clone`, git's default on Windows: each link becomes a
small file holding its target) builds the same wheel as a checkout with them. The list is written by hand;
the first test keeps it equal to the package folders on disk, the slow ones build from a link-less copy and
compare the wheel's modules with the files on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from support.checkout import REPO, checkout_copy, tracked_files

PACKAGE = "resnet_serve"


def _setuptools() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config


def _package_dir() -> dict[str, str]:
    mapping: dict[str, str] = _setuptools()["package-dir"]
    return mapping


def _packages_on_disk() -> set[str]:
    """resnet_serve plus every folder with an __init__.py under a mapped layer folder, as a dotted name."""
    found = {PACKAGE}
    for name, folder in _package_dir().items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    return found


def test_pyproject_lists_every_package_folder_and_nothing_else() -> None:
    listed = set(_setuptools()["packages"])
    on_disk = _packages_on_disk()
    assert not on_disk - listed, f"package folders missing from pyproject.toml's packages: {on_disk - listed}"
    assert not listed - on_disk, f"pyproject.toml lists packages with no folder: {listed - on_disk}"


def test_package_dir_maps_each_link_in_resnet_serve_to_its_folder() -> None:
    """The links (what the checkout imports) and the mapping (what a build packages) name the same layers."""
    links = {
        f"{PACKAGE}.{entry.name}": os.path.normpath(os.readlink(entry))
        for entry in (REPO / PACKAGE).iterdir()
        if entry.is_symlink()
    }
    expected = {name: os.path.join(os.pardir, folder) for name, folder in _package_dir().items()}
    assert links == expected


def _modules_on_disk() -> set[str]:
    """The wheel paths every committed module must have: resnet_serve/*.py and each layer's .py files."""
    mapped = {folder: name for name, folder in _package_dir().items()}
    modules = set()
    for rel in tracked_files():
        path = Path(rel)
        if path.suffix != ".py" or (REPO / rel).is_symlink():
            continue
        if path.parts[0] == PACKAGE:
            modules.add(rel)
        elif path.parts[0] in mapped:
            modules.add("/".join([*mapped[path.parts[0]].split("."), *path.parts[1:]]))
    return modules


def _build(source: Path, kind: str, out: Path) -> Path:
    """Build a wheel or an sdist of `source` with setuptools' PEP 517 backend (what pip and `build` call)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out / done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_clone_without_links_builds_a_wheel_with_every_module_and_the_license(tmp_path: Path) -> None:
    source = checkout_copy(tmp_path / "source", symlinks=False)
    assert (source / PACKAGE / "server").is_file()  # the link-less checkout it stands for
    wheel = _build(source, "wheel", tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    py = {n for n in names if n.endswith(".py")}
    expected = _modules_on_disk()
    assert len(expected) > 100, len(expected)
    assert py == expected, f"missing: {sorted(expected - py)[:10]}; extra: {sorted(py - expected)[:10]}"
    assert {f"{PACKAGE}/py.typed", f"{PACKAGE}/protos/grpc_service.proto"} <= names
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(license_file) == (REPO / "LICENSE").read_bytes()


@pytest.mark.slow
def test_the_sdist_ships_the_license(tmp_path: Path) -> None:
    sdist = _build(checkout_copy(tmp_path / "source"), "sdist", tmp_path / "dist")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert "LICENSE" in names
    assert "Apache License" in (REPO / "LICENSE").read_text()
