"""Bearer tokens for the image API: `authorization: Bearer <token>` checked against the configured tokens.

Tokens come from `--auth-token-file` (one per line; blank lines and lines starting with '#' are skipped, so a
rotation can list the old and the new token for a while; re-read on SIGHUP) and from the environment variable
`RESNET_SERVE_AUTH_TOKEN` (one token; never a flag, which `ps` would show). A presented token is hashed and
compared with every configured token's hash by `hmac.compare_digest`, without stopping at a match, so the
time taken says nothing about which token, or how much of one, matched. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final

from resnet_serve.formats.environment import TOKEN_ENV
from resnet_serve.server.security.files import SecurityError, read_secret_file

HEADER: Final = "authorization"
SCHEME: Final = "bearer"
MIN_TOKEN_CHARS: Final = 16  # a guessable token is no token; `openssl rand -hex 32` gives 64
DENIED_MESSAGE: Final = "missing or invalid bearer token"


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def bearer_token(authorization: str | bytes | None) -> bytes | None:
    """The token of an `authorization` header value `Bearer <token>` (scheme case-insensitive, RFC 7235),
    or None."""
    if authorization is None:
        return None
    raw = authorization.encode() if isinstance(authorization, str) else authorization
    scheme, _, token = raw.strip().partition(b" ")
    if scheme.lower() != SCHEME.encode() or not token.strip():
        return None
    return token.strip()


class TokenSet:
    """The tokens that may use the image API; empty means the API is open."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self._digests = tuple(_digest(t) for t in tokens)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"TokenSet({len(self._digests)} tokens)"

    def allows(self, authorization: str | bytes | None) -> bool:
        """Whether the `authorization` header value carries one of the tokens (always True when empty)."""
        if not self._digests:
            return True
        token = bearer_token(authorization)
        presented = _digest(token if token is not None else b"")
        found = False
        for digest in self._digests:  # every comparison runs, match or not
            found |= hmac.compare_digest(presented, digest)
        return found and token is not None


def check_token(token: str, where: str) -> str:
    """`token` stripped, or SecurityError when it is too short to be a secret or holds whitespace."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise SecurityError(f"{where}: a token must have at least {MIN_TOKEN_CHARS} characters")
    if any(c.isspace() for c in token):
        raise SecurityError(f"{where}: a token cannot contain whitespace")
    return token


def read_tokens(path: str, env_token: str = "") -> TokenSet:
    """The tokens of the token file at `path` (if any) and `env_token` (if any)."""
    tokens: list[str] = []
    if path:
        try:
            text = read_secret_file(path, "--auth-token-file", private=True).decode()
        except UnicodeDecodeError:
            raise SecurityError(f"--auth-token-file {path}: not UTF-8 text") from None
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                tokens.append(check_token(line, f"--auth-token-file {path} line {n}"))
        if not tokens:
            raise SecurityError(f"--auth-token-file {path}: holds no token")
    if env_token:
        tokens.append(check_token(env_token, TOKEN_ENV))
    return TokenSet(tokens)
