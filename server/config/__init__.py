"""The server's settings: declared once (settings.py), spelled everywhere from that (options.py), merged
from defaults, a TOML file, RESNET_SERVE_* variables and flags (load.py).

Adding a setting is a one-place change: add a field to the model it belongs to in settings.py
(`ServerConfig` for the server, `ModelSettings` or `BatchingConfig` for every model), declared with
`option(default, METAVAR, help, ge=..., le=...)` and a type from options.py (`Int`, `Float`, `IntList`, or
`Annotated[str, one_of(CHOICES)]`); cross-field rules go in the model's `model_validator`. Its flag
(`--my-option`), variable (`RESNET_SERVE_MY_OPTION`), TOML key (`my_option` in `[server]`, or in
`[model_defaults]` / `[models.NAME]`), `serve --help` line and checks follow from that field;
tests/test_server_config.py walks every source for it (a string with fixed choices needs a valid sample in
its CHOSEN), and fails until docs/server.md's table has the option's row.
"""

from resnet_serve.formats.environment import ENV_PREFIX
from resnet_serve.server.config.load import (
    INPUT_OPTIONS,
    LOG_OPTIONS,
    MODEL_OPTIONS,
    OPTIONS,
    SERVER_OPTIONS,
    Given,
    from_env,
    image_formats,
    load_config,
    model_settings,
    option,
    read_sources,
    unknown_env,
    with_values,
    worker_count,
)
from resnet_serve.server.config.options import ConfigError, Option
from resnet_serve.server.config.settings import (
    BatchingConfig,
    Inputs,
    LogSettings,
    ModelSettings,
    ServerConfig,
)

__all__ = [
    "ENV_PREFIX",
    "INPUT_OPTIONS",
    "LOG_OPTIONS",
    "MODEL_OPTIONS",
    "OPTIONS",
    "SERVER_OPTIONS",
    "BatchingConfig",
    "ConfigError",
    "Given",
    "Inputs",
    "LogSettings",
    "ModelSettings",
    "Option",
    "ServerConfig",
    "from_env",
    "image_formats",
    "load_config",
    "model_settings",
    "option",
    "read_sources",
    "unknown_env",
    "with_values",
    "worker_count",
]
