"""The one access decision both front ends make: may this request, of this protocol group, with these
headers, proceed? Restricted groups (restrict.py) first, then the bearer token for the image API
(tokens.py); health always proceeds.

`AccessRules.refusal(group, headers, grpc=..., image_api=...)` is the contract: None to proceed, else the
`Refusal` to answer with, as a gRPC status (an HTTP front end maps it as its error boundary maps the other
statuses; UNAUTHENTICATED is 401 with `WWW-Authenticate: Bearer`, RFC 6750). HTTP callers pass the group of
`restrict.http_group(path)` and lowercase header names. gRPC callers use `grpc_refusal(method, metadata)`.

Every refusal is reported to the `refused` callback (the server's `ServerMetrics.access_refused`) with the
front end, the group and the refusal's `reason`: names from closed sets, never a header value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import grpc

from resnet_serve.server.security import restrict, tokens
from resnet_serve.server.security.restrict import HEALTH, RestrictedGroups
from resnet_serve.server.security.tokens import TokenSet

IMAGE_SERVICE_PREFIX: Final = "/resnetserve.v1.ImageClassifier/"


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    reason: str  # the `reason` label of resnet_serve_access_refused_total


# Triton answers a restricted protocol UNAVAILABLE; a missing or wrong token is UNAUTHENTICATED (RFC 6750).
RESTRICTED: Final = Refusal(grpc.StatusCode.UNAVAILABLE, restrict.DENIED_MESSAGE, "restricted")
UNAUTHENTICATED: Final = Refusal(grpc.StatusCode.UNAUTHENTICATED, tokens.DENIED_MESSAGE, "unauthenticated")
UNKNOWN_GROUP: Final = "unknown"  # the group label of a refused method that has none (none should exist)

RefusalCounter = Callable[[str, str, str], None]  # (protocol "grpc"/"http", group, reason)


def first_values(metadata: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str | bytes]:
    """gRPC metadata as a dict, the first value of a repeated key winning (as Triton's lookup)."""
    headers: dict[str, str | bytes] = {}
    for key, value in metadata or ():
        headers.setdefault(key, value)
    return headers


class AccessRules:
    """Restricted groups and image-API tokens; `tokens` may be replaced on reload. `refused` counts each
    refusal."""

    def __init__(
        self, groups: RestrictedGroups, image_tokens: TokenSet, refused: RefusalCounter | None = None
    ) -> None:
        self.groups = groups
        self.tokens = image_tokens
        self.refused = refused

    def __bool__(self) -> bool:
        return bool(self.groups) or bool(self.tokens)

    def refusal(
        self, group: str | None, headers: Mapping[str, str | bytes], *, grpc: bool, image_api: bool
    ) -> Refusal | None:
        if group == HEALTH:
            return None
        refusal = None
        if not self.groups.allowed(group, headers, grpc=grpc):
            refusal = RESTRICTED
        elif image_api and not self.tokens.allows(headers.get(tokens.HEADER)):
            refusal = UNAUTHENTICATED
        if refusal is not None and self.refused is not None:
            self.refused("grpc" if grpc else "http", group or UNKNOWN_GROUP, refusal.reason)
        return refusal

    def grpc_refusal(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> Refusal | None:
        group = restrict.grpc_group(method)
        if group == HEALTH or not self:
            return None
        image_api = method.startswith(IMAGE_SERVICE_PREFIX)
        return self.refusal(group, first_values(metadata), grpc=True, image_api=image_api)
