"""The ready file: how a started server says that it is ready, and on which ports.

`resnet-serve serve --ready-file PATH` writes it atomically once every port listens and the models are
loaded (the moment it logs its "ready:" line), and removes it when it exits. Whoever started the server
(tests, `resnet-serve tune`, lab/ benchmarks, a supervisor) reads it instead of parsing a log line, with
`read_ready` here or `server/launch.py`'s `wait_ready`. Standard library only, like the rest of formats/.

    {"format": "resnet-serve-ready/1", "pid": 4242, "host": "127.0.0.1",
     "grpc_port": 8001, "http_port": 8000, "metrics_port": 8002,
     "models": [{"name": "digits", "version": "1", "state": "READY"}]}

A port the server does not open (`--http-port -1`, `--metrics-port -1`) is null.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Final

from resnet_serve.formats.files import write_json_atomic

FORMAT: Final = "resnet-serve-ready/1"
# A server listening on every address is reached on loopback by the one that started it.
_ANY_ADDRESS: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True)
class ReadyModel:
    name: str
    version: str
    state: str


@dataclass(frozen=True)
class Ready:
    pid: int
    host: str  # the address the server listens on, as configured
    grpc_port: int
    http_port: int | None
    metrics_port: int | None
    models: tuple[ReadyModel, ...] = ()

    def _address(self, port: int) -> str:
        host = _ANY_ADDRESS.get(self.host, self.host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def grpc_target(self) -> str:
        """host:port for a gRPC channel."""
        return self._address(self.grpc_port)

    @property
    def http_url(self) -> str | None:
        return None if self.http_port is None else f"http://{self._address(self.http_port)}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://{self._address(self.metrics_port)}/metrics"

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "models": [asdict(m) for m in self.models]}

    @staticmethod
    def from_json(data: object) -> Ready:
        """Raises ValueError for anything but a ready file of this format."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a {FORMAT} ready file (format {found!r})")
        try:
            ports = {k: data[k] for k in ("grpc_port", "http_port", "metrics_port")}
            if not isinstance(ports["grpc_port"], int) or not all(
                p is None or isinstance(p, int) for p in ports.values()
            ):
                raise ValueError(f"ports must be integers or null, got {ports}")
            models = tuple(
                ReadyModel(str(m["name"]), str(m["version"]), str(m["state"])) for m in data["models"]
            )
            return Ready(int(data["pid"]), str(data["host"]), models=models, **ports)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a {FORMAT} ready file without a valid {exc}") from None


def write_ready(path: str | os.PathLike[str], ready: Ready) -> None:
    """Atomically: a reader sees no file or the whole file, never a partial one."""
    write_json_atomic(path, ready.to_json())


def read_ready(path: str | os.PathLike[str]) -> Ready:
    """The ready file at `path`; FileNotFoundError while there is none, ValueError if it is not one."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return Ready.from_json(data)
