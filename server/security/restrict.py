"""Triton's restricted protocol groups: which RPC (or HTTP path) belongs to which group, the
`--grpc-restricted-protocol=<groups>:<key>=<value>` syntax, and the check of a request's headers.

The group names and their members are Triton's (its docs, "Limit Endpoint Access", and grpc_server.cc's
`RestrictedCategory` per RPC); our image API joins `inference` (Classify*) and `metadata` (ListModels), and
gRPC reflection joins `metadata` (it describes every service). Unlike Triton, `health` cannot be restricted:
probes (kubelet, load balancers) send no headers, and a closed health check takes a healthy server out of
rotation. Triton's gRPC header is `triton-grpc-protocol-<key>` and its HTTP header `<key>`; so are ours, so
tritonclient users pass `headers=` exactly as they do against Triton.

A refused request gets Triton's status, UNAVAILABLE, with a message that names neither the header nor
whether it was missing or wrong. Values are compared as SHA-256 digests with `hmac.compare_digest`, so the
time taken says nothing about the value either.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

HEALTH: Final = "health"
GROUPS: Final = (
    HEALTH,
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
GRPC_HEADER_PREFIX: Final = "triton-grpc-protocol-"
DENIED_MESSAGE: Final = "This protocol is restricted"

_KSERVE = "inference.GRPCInferenceService"
_IMAGE = "resnetserve.v1.ImageClassifier"
_KSERVE_GROUPS: Final = {
    "ServerLive": HEALTH,
    "ServerReady": HEALTH,
    "ModelReady": HEALTH,
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}
GRPC_METHOD_GROUPS: Final[Mapping[str, str]] = {
    **{f"/{_KSERVE}/{name}": group for name, group in _KSERVE_GROUPS.items()},
    f"/{_IMAGE}/Classify": "inference",
    f"/{_IMAGE}/ClassifyBatch": "inference",
    f"/{_IMAGE}/ClassifyStream": "inference",
    f"/{_IMAGE}/ListModels": "metadata",
    "/grpc.health.v1.Health/Check": HEALTH,
    "/grpc.health.v1.Health/Watch": HEALTH,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "metadata",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "metadata",
}
"""Every RPC the server registers, by full method name (tests/test_security_access.py checks that each
service's every method is here, so a new RPC cannot be added open by mistake)."""


def grpc_group(method: str) -> str | None:
    """The group of a full gRPC method name (`/package.Service/Method`); None for a method the server does
    not have (gRPC answers it UNIMPLEMENTED)."""
    return GRPC_METHOD_GROUPS.get(method)


# KServe v2 HTTP/REST paths (Triton's HTTP API) → group, first match wins.
_HTTP_PATHS: Final = (
    (re.compile(r"^/v2/health/(live|ready)$"), HEALTH),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$"), HEALTH),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/(infer|generate|generate_stream)$"), "inference"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/config$"), "model-config"),
    (re.compile(r"^/v2/models/([^/]+(/versions/[^/]+)?/)?stats$"), "statistics"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/trace/setting$"), "trace"),
    (re.compile(r"^/v2/trace/setting$"), "trace"),
    (re.compile(r"^/v2/logging$"), "logging"),
    (re.compile(r"^/v2/repository(/.*)?$"), "model-repository"),
    (re.compile(r"^/v2/(systemsharedmemory|cudasharedmemory)(/.*)?$"), "shared-memory"),
    (re.compile(r"^/v2(/models/[^/]+(/versions/[^/]+)?)?/?$"), "metadata"),
)


def http_group(path: str) -> str | None:
    """The group of a KServe v2 HTTP/REST path (query string removed); None for a path outside the API."""
    path = path.split("?", 1)[0]
    for pattern, group in _HTTP_PATHS:
        if pattern.match(path):
            return group
    return None


def _digest(value: str | bytes) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


@dataclass(frozen=True)
class Restriction:
    """One `--grpc-restricted-protocol` group: its protocols, and the header key and value they require.
    The value never appears in repr() or in an error message."""

    groups: frozenset[str]
    key: str
    value: str = field(repr=False)

    @property
    def grpc_header(self) -> str:
        return GRPC_HEADER_PREFIX + self.key

    @property
    def http_header(self) -> str:
        return self.key

    def matches(self, presented: str | bytes | None) -> bool:
        """Whether `presented` is the value, in time that does not depend on how much of it matches."""
        if presented is None:
            hmac.compare_digest(_digest(b""), _digest(self.value))  # same work as a wrong value
            return False
        return hmac.compare_digest(_digest(presented), _digest(self.value))


# gRPC metadata keys: lowercase letters, digits, "-", "_", "." (HTTP/2 header names are lowercase).
_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def parse_restriction(text: str) -> Restriction:
    """`<group>[,<group>...]:<key>=<value>` (Triton's syntax). Raises ValueError naming what is wrong, never
    echoing the value."""
    groups_text, sep, rest = text.partition(":")
    key, eq, value = rest.partition("=")
    if not sep or not eq:
        raise ValueError(
            "expected <group>[,<group>...]:<key>=<value>, e.g. model-repository:admin-key=SECRET"
        )
    groups = [g.strip().lower() for g in groups_text.split(",") if g.strip()]
    if not groups:
        raise ValueError(f"no protocol group before ':' (groups: {', '.join(GROUPS)})")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown protocol group(s) {', '.join(unknown)} (groups: {', '.join(GROUPS)})")
    if HEALTH in groups:
        raise ValueError("health cannot be restricted: probes send no headers, so it stays open")
    key = key.strip().lower()
    if not _KEY.match(key):
        raise ValueError(f"header key {key!r} must be lowercase letters, digits, '-', '_' or '.'")
    if not value:
        raise ValueError(f"the value for header key {key!r} is empty")
    return Restriction(frozenset(groups), key, value)


def parse_restrictions(text: str) -> tuple[Restriction, ...]:
    """One or more specs separated by ';' (the form an environment variable takes)."""
    return tuple(parse_restriction(part) for part in text.split(";") if part.strip())


def check_disjoint(restrictions: Iterable[Restriction]) -> None:
    """As in Triton, a protocol group may belong to one restriction only."""
    seen: set[str] = set()
    for r in restrictions:
        twice = sorted(r.groups & seen)
        if twice:
            raise ValueError(f"protocol group(s) {', '.join(twice)} restricted more than once")
        seen |= r.groups


class RestrictedGroups:
    """The restrictions in force: `allowed(group, headers)` is the one check both front ends make."""

    def __init__(self, restrictions: Iterable[Restriction] = ()) -> None:
        restrictions = tuple(restrictions)
        check_disjoint(restrictions)
        self._by_group = {g: r for r in restrictions for g in r.groups}

    def __bool__(self) -> bool:
        return bool(self._by_group)

    def restriction(self, group: str | None) -> Restriction | None:
        return None if group is None else self._by_group.get(group)

    def allowed(self, group: str | None, headers: Mapping[str, str | bytes], *, grpc: bool = True) -> bool:
        """Whether a request of `group` with these headers (lowercase names) may proceed. `grpc` picks the
        header form: `triton-grpc-protocol-<key>` for gRPC, `<key>` for HTTP."""
        restriction = self.restriction(group)
        if restriction is None:
            return True
        name = restriction.grpc_header if grpc else restriction.http_header
        return restriction.matches(headers.get(name))
