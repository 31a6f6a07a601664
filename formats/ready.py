"""The ready file: how a started server says that it is ready, and where each of its endpoints listens.

`resnet-serve serve --ready-file PATH` writes it atomically once every endpoint listens and the models are
loaded (the moment it logs its "ready:" line), and removes it when it exits. Whoever started the server
(tests, `resnet-serve tune`, lab/ benchmarks, a supervisor) reads it instead of parsing a log line, with
`read_ready` here or `server/launch.py`'s `wait_ready`. Standard library only, like the rest of formats/.

    {"format": "resnet-serve-ready/1", "pid": 4242,
     "grpc": {"host": "127.0.0.1", "port": 8001}, "http": {"host": "127.0.0.1", "port": 8000},
     "metrics": {"host": "127.0.0.1", "port": 8002},
     "models": [{"name": "digits", "version": "1", "state": "READY"}]}

Each endpoint has its own address (`--grpc-address`, ... else `--host`); one the server does not open
(`--http-port -1`, `--allow-grpc false`, ...) is null.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from resnet_serve.formats.files import write_json_atomic

FORMAT: Final = "resnet-serve-ready/1"
ENDPOINTS: Final = ("grpc", "http", "metrics")
# An endpoint listening on every address is reached on loopback by whoever started the server.
_ANY_ADDRESS: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
WILDCARD_ADDRESSES: Final = frozenset(_ANY_ADDRESS)  # listening on every address


@dataclass(frozen=True)
class Endpoint:
    host: str  # the address it listens on, as configured
    port: int

    @property
    def address(self) -> str:
        """host:port to connect to ([v6]:port; loopback for a wildcard address)."""
        host = _ANY_ADDRESS.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True)
class ReadyModel:
    name: str
    version: str
    state: str


@dataclass(frozen=True)
class Ready:
    pid: int
    grpc: Endpoint | None
    http: Endpoint | None
    metrics: Endpoint | None
    models: tuple[ReadyModel, ...] = ()

    @property
    def grpc_port(self) -> int | None:
        return None if self.grpc is None else self.grpc.port

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics is None else self.metrics.port

    @property
    def grpc_target(self) -> str:
        """host:port for a gRPC channel; ValueError when the server serves no gRPC."""
        if self.grpc is None:
            raise ValueError("the server does not serve gRPC (its ready file says grpc: null)")
        return self.grpc.address

    @property
    def http_url(self) -> str | None:
        return None if self.http is None else f"http://{self.http.address}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics is None else f"http://{self.metrics.address}/metrics"

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @staticmethod
    def from_json(data: object) -> Ready:
        """Raises ValueError for anything but a ready file of this format."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a {FORMAT} ready file (format {found!r})")
        try:
            endpoints = {key: _endpoint(key, data[key]) for key in ENDPOINTS}
            models = tuple(
                ReadyModel(str(m["name"]), str(m["version"]), str(m["state"])) for m in data["models"]
            )
            return Ready(int(data["pid"]), models=models, **endpoints)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a {FORMAT} ready file without a valid {exc}") from None


def _endpoint(key: str, value: object) -> Endpoint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object with host and port, or null, got {value!r}")
    port = value["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"{key}: port must be an integer in 1..65535, got {port!r}")
    return Endpoint(str(value["host"]), port)


def check_ready_path(path: str | os.PathLike[str]) -> None:
    """Raise OSError now if `write_ready` could not write `path` later (a folder, a folder that cannot be
    made or written to): a server checks before it loads its models rather than fail once it is ready."""
    where = Path(path)
    if where.is_dir():
        raise IsADirectoryError(errno.EISDIR, "it is a folder", str(where))
    where.parent.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f".{where.name}.", suffix=".check", dir=where.parent)
    os.close(fd)
    os.unlink(probe)


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
