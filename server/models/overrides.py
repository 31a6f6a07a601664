"""RepositoryModelLoad's overrides, as Triton's model repository extension defines them
(docs/protocol/extension_model_repository.md in triton-inference-server/server; the semantics below follow
core's src/model_repository_manager/model_repository_manager.cc):

* `config`: a JSON ModelConfig (Triton's model_config.proto in JSON, parsed by protobuf's own json_format)
  that replaces the model's configuration for this load. What it leaves out is filled in from the model
  file, as a config.pbtxt that states it would be.
* `file:<path>`: the bytes of a model file for this load. With any file override the model directory is the
  files of the request alone (`config` is then required), written to a temporary model directory; the
  repository's own files are not used.

A load without overrides undoes them: it reads the repository again. Limits come before any byte is written:
at most MAX_FILES files and MAX_FILE_BYTES in all, each path relative, normalised and inside the model
directory (no `..`, no absolute path, no empty or over-long component). Every refusal is INVALID_ARGUMENT and
starts with Triton's "failed to load '<model>', ...".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from google.protobuf import json_format, text_format

from resnet_serve.formats.files import write_bytes_atomic
from resnet_serve.formats.repository import TRITON_CONFIG_NAME
from resnet_serve.protos import model_config_pb2 as mc
from resnet_serve.server.errors import ServeError, echo, invalid_argument

CONFIG_KEY: Final = "config"
FILE_PREFIX: Final = "file:"
MAX_FILES: Final = 64
MAX_FILE_BYTES: Final = 1 << 30  # 1 GiB in all; gRPC's and HTTP's message limits usually bind first
NAME_MAX: Final = 255  # bytes in one path component (Linux's NAME_MAX)
_PARAMETER_TYPES: Final = {
    "bool_param": "BOOL",
    "int64_param": "INT",
    "string_param": "STRING",
    "double_param": "DOUBLE",
    "uint64_param": "UINT",
    "bytes_param": "BYTES",
}


def refused(model: str, why: str) -> ServeError:
    """Triton's wording: "failed to load 'simple', <why>"."""
    return invalid_argument(f"failed to load {echo(model)}, {why}")


@dataclass(frozen=True)
class LoadOverride:
    """What one RepositoryModelLoad asks for instead of the repository's own configuration and files."""

    config: mc.ModelConfig | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # normalised relative path → contents


def parse_override(model: str, parameters: Any) -> LoadOverride | None:
    """The load request's `parameters` (a map of InferParameter) → the override, or None when it asks for
    none. ServeError INVALID_ARGUMENT for anything Triton refuses, and for the limits."""
    config: mc.ModelConfig | None = None
    files: dict[str, bytes] = {}
    total = 0
    for key in sorted(parameters):
        value = parameters[key]
        kind = value.WhichOneof("parameter_choice") or ""
        if key == CONFIG_KEY:
            if kind != "string_param":
                raise refused(model, "config parameter 'config' must have string type for its value")
            config = parse_config(model, value.string_param)
        elif key.startswith(FILE_PREFIX):
            if kind != "bytes_param":
                raise refused(model, f"file parameter {echo(key)} must have bytes type for its value")
            if len(files) >= MAX_FILES:
                raise refused(model, f"more than {MAX_FILES} file overrides")
            total += len(value.bytes_param)
            if total > MAX_FILE_BYTES:
                raise refused(model, f"the file overrides hold more than {MAX_FILE_BYTES} bytes")
            files[normalise(model, key.removeprefix(FILE_PREFIX))] = value.bytes_param
        else:
            type_name = _PARAMETER_TYPES.get(kind, "UNKNOWN")
            raise refused(model, f"unrecognized load parameter {echo(key)} with type '{type_name}'")
    if files and config is None:
        raise refused(model, "load parameter 'config' must be specified for model file override")
    if config is None:
        return None
    return LoadOverride(config, files)


def parse_config(model: str, text: str) -> mc.ModelConfig:
    """A JSON ModelConfig, parsed as Triton parses it (protobuf's JSON mapping, unknown fields refused)."""
    if not text.lstrip().startswith("{"):  # json_format takes [] as an empty config, 1 as a TypeError
        got = echo(text[:40])
        raise refused(model, f"failed to parse the config override: it must be a JSON object, got {got}")
    try:
        config = json_format.Parse(text, mc.ModelConfig())
    except json_format.ParseError as exc:
        raise refused(model, f"failed to parse the config override (a JSON ModelConfig): {exc}") from None
    if config.name and config.name != model:
        raise refused(model, f"the config override names the model {echo(config.name)}")
    return config


def normalise(model: str, path: str) -> str:
    """A file override's path: relative, inside the model directory, every component a plain name."""
    where = f"file parameter {echo(FILE_PREFIX + path)}"
    if not path or "\x00" in path or "\\" in path:
        raise refused(model, f"{where} must name a file by a relative path")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise refused(model, f"{where} must be relative to the model directory, not absolute")
    parts = [p for p in pure.parts if p != "."]
    if not parts or any(p == ".." for p in parts):
        raise refused(model, f"{where} must stay within the model directory (no '..')")
    if any(len(p.encode("utf-8", "surrogatepass")) > NAME_MAX for p in parts):
        raise refused(model, f"{where} has a path component longer than {NAME_MAX} bytes")
    if parts == [TRITON_CONFIG_NAME]:
        raise refused(model, f"{where}: the configuration comes from the 'config' parameter")
    return "/".join(parts)


def materialize(name: str, override: LoadOverride, repository_path: Path | None) -> Path:
    """The temporary model directory `<tmp>/<name>/` this load reads: config.pbtxt from the override's
    config, and either the request's files (a file override) or links to the repository model's own files
    (a config override alone). The caller removes it with `discard` when the load is undone."""
    config = override.config if override.config is not None else mc.ModelConfig()
    root = Path(tempfile.mkdtemp(prefix="resnet-serve-override-"))
    model_dir = root / name
    try:
        model_dir.mkdir()
        if override.files:
            for relative, data in override.files.items():
                target = model_dir / relative
                if target.is_dir():
                    raise refused(name, f"file parameter {echo(FILE_PREFIX + relative)} names a directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(target, data)
        elif repository_path is not None:
            _link_repository_files(repository_path, model_dir)
        text = text_format.MessageToString(config)
        write_bytes_atomic(model_dir / TRITON_CONFIG_NAME, text.encode("utf-8"))
    except OSError as exc:
        discard(model_dir)
        raise refused(name, f"cannot write the override files: {exc.strerror or exc}") from None
    except ServeError:
        discard(model_dir)
        raise
    return model_dir


def _link_repository_files(source: Path, model_dir: Path) -> None:
    """Everything the repository model has except its configuration, as symbolic links (nothing copied)."""
    if source.is_file():  # a model file served as version 1
        (model_dir / "1").mkdir()
        os.symlink(source.resolve(), model_dir / "1" / f"model{source.suffix}")
        return
    for entry in source.iterdir():
        if entry.name != TRITON_CONFIG_NAME:
            os.symlink(entry.resolve(), model_dir / entry.name)


def discard(model_dir: Path | None) -> None:
    """Remove a temporary model directory `materialize` made (its parent, made for it alone)."""
    if model_dir is not None:
        shutil.rmtree(model_dir.parent, ignore_errors=True)
