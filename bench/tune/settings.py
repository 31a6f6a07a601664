"""A candidate as a server configuration file: the file each measured server starts from, and the one
`tune` writes for the winner, so what is measured is exactly what is deployed (`resnet-serve serve --config`).

The format is the server's TOML (server/config.py): `[server]` options and one `[models.NAME]` table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resnet_serve.bench.tune.candidates import Candidate
from resnet_serve.formats.files import write_bytes_atomic


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def _table(name: str, values: Mapping[str, Any]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {_value(v)}" for k, v in values.items()), ""]


def server_toml(
    name: str, candidate: Candidate, server: Mapping[str, Any] | None = None, comment: str = ""
) -> str:
    """The TOML text serving `candidate` as model `name` (plus any `[server]` options)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    if server:
        lines += _table("server", server)
    model = {"path": str(Path(candidate.file).resolve()), **candidate.model_settings()}
    lines += _table(f"models.{name}", model)
    return "\n".join(lines)


def write_server_toml(path: Path, name: str, candidate: Candidate, comment: str = "") -> Path:
    write_bytes_atomic(path, server_toml(name, candidate, comment=comment).encode())
    return path
