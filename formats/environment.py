"""The environment variables resnet-serve reads: one prefix, and the names both the server and the client use.

Every server option's variable is `ENV_PREFIX` + its name in upper case, derived from its declaration
(server/config/). `TOKEN_ENV` is defined here because the client commands read it too (cli/options.py), and
nothing below the CLI that is not the server may import the server.
"""

from __future__ import annotations

from typing import Final

ENV_PREFIX: Final = "RESNET_SERVE_"
# One bearer token: the server requires it of the image API, the client commands send it. Never a flag (`ps`
# shows flags); the server's option `auth_token` is read from it (server/config/settings.py).
TOKEN_ENV: Final = ENV_PREFIX + "AUTH_TOKEN"  # env_of("auth_token")


def env_of(key: str) -> str:
    """The environment variable of a setting: `grpc_port` → `RESNET_SERVE_GRPC_PORT`."""
    return ENV_PREFIX + key.upper()
