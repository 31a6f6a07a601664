"""Merge the sources of the server's settings into one checked ServerConfig.

Precedence, lowest first: the declared defaults < the TOML file's `[server]` and `[model_defaults]` tables <
`RESNET_SERVE_<OPTION>` environment variables < command-line flags. A model's own `[models.NAME]` table
overrides the model defaults for that model only, because it is the more specific statement. `--model`
(and `RESNET_SERVE_MODEL`) add models; the environment's come first.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from resnet_serve.formats.environment import ENV_PREFIX, TOKEN_ENV, env_of
from resnet_serve.runtime.cpus import default_threads
from resnet_serve.server.config.options import (
    ConfigError,
    Option,
    checked,
    env_keys,
    first_error,
    flag_of,
    options_of,
    read_env,
)
from resnet_serve.server.config.settings import (
    BatchingConfig,
    Inputs,
    LogSettings,
    ModelSettings,
    ServerConfig,
)

SERVER_OPTIONS = options_of(ServerConfig, "server")
MODEL_OPTIONS = options_of(ModelSettings, "model") + options_of(BatchingConfig, "model")
OPTIONS = SERVER_OPTIONS + MODEL_OPTIONS  # every setting of the server and of its models
INPUT_OPTIONS = options_of(Inputs, "")  # --config, --model
LOG_OPTIONS = options_of(LogSettings, "")  # --log-format, --log-level: read before everything else
_BATCHING_KEYS = frozenset(BatchingConfig.model_fields) | {"max_queue_delay_ms"}


def option(key: str) -> Option:
    """The option declared as `key`."""
    for opt in (*OPTIONS, *INPUT_OPTIONS, *LOG_OPTIONS):
        if opt.key == key:
            return opt
    raise KeyError(key)


def from_env(key: str, env: Mapping[str, str] | None = None) -> Any:
    """One option's value from its environment variable, checked, or its default when the variable is unset;
    for commands that run beside a server and share its environment (`resnet-serve health`)."""
    opt = option(key)
    given = read_env((opt,), os.environ if env is None else env)
    return checked((opt,), given, _env_at).get(key, opt.default)


@dataclass(frozen=True)
class Given:
    """What the sources set, each value checked by its option and merged by precedence; defaults left out."""

    server: dict[str, Any]  # server options
    model_defaults: dict[str, Any]  # model options for every model
    models: dict[str, dict[str, Any]]  # each model's own table ([models.NAME], --model): its path and options


def read_sources(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Given:
    """Read the TOML file, the environment and the flags. ``flags`` holds the options given on the command
    line only (keyed as the options, plus ``config`` and ``model``), as text or as values."""
    env = os.environ if env is None else env
    flags = flags or {}
    env_inputs = checked(INPUT_OPTIONS, read_env(INPUT_OPTIONS, env), _env_at)
    flag_inputs = _given_flags(INPUT_OPTIONS, flags)
    config_path = str(flag_inputs.get("config") or env_inputs.get("config") or "")
    toml = _read_toml(Path(config_path)) if config_path else {}

    _check_top_level(toml, config_path)
    layers: dict[str, dict[str, Any]] = {"server": {}, "model_defaults": {}}
    for section, options in (("server", SERVER_OPTIONS), ("model_defaults", MODEL_OPTIONS)):
        table = _table(toml, section, f"[{section}]")
        _check_keys(table, options, f"[{section}] of {config_path}")
        layers[section] |= checked(options, table, _toml_at(f"[{section}]", config_path))
        layers[section] |= checked(options, read_env(options, env), _env_at)
        layers[section] |= _given_flags(options, flags)

    models: dict[str, dict[str, Any]] = {}
    for name, table in _table(toml, "models", "[models]").items():
        where = f"[models.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table of model options")
        _check_keys(
            {k: v for k, v in table.items() if k != "path"}, MODEL_OPTIONS, f"{where} of {config_path}"
        )
        if not isinstance(table.get("path", ""), str):
            raise ConfigError(f"path: expected a string, got {table['path']!r} ({where} of {config_path})")
        models[name] = checked(MODEL_OPTIONS, table, _toml_at(where, config_path))
        if "path" in table:
            models[name]["path"] = table["path"]
    for spec in (*env_inputs.get("model", ()), *flag_inputs.get("model", ())):
        name, _, path = spec.partition("=")
        models.setdefault(name, {})["path"] = path
    return Given(layers["server"], layers["model_defaults"], models)


def load_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Merge defaults, the TOML file, env vars and flags (`read_sources`) into a checked ServerConfig."""
    given = read_sources(flags, env)
    for name, values in given.models.items():
        if not values.get("path"):
            raise ConfigError(
                f"model {name!r} has no path (set path in [models.{name}] or --model {name}=PATH)"
            )
    built = tuple(
        model_settings(name, {**given.model_defaults, **values}, frozenset(values) - {"path"})
        for name, values in given.models.items()
    )
    try:
        config = ServerConfig(
            **given.server, models=built, model_defaults=model_settings("", given.model_defaults)
        )
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None
    if not config.models and not config.model_repository:
        raise ConfigError(
            "no models to serve: pass --model NAME=PATH, --model-repository DIR or a config file"
        )
    return config


def model_settings(
    name: str, values: Mapping[str, Any], explicit: frozenset[str] = frozenset()
) -> ModelSettings:
    """A model's settings from flat option keys (as in MODEL_OPTIONS, plus ``path``)."""
    batching = {k: v for k, v in values.items() if k in _BATCHING_KEYS}
    rest = {k: v for k, v in values.items() if k not in _BATCHING_KEYS}
    try:
        return ModelSettings(name=name, batching=BatchingConfig(**batching), explicit=explicit, **rest)
    except ValidationError as exc:
        raise ConfigError(f"{_model_named(name)}: {first_error(exc)}") from None


def with_values(config: ModelSettings, values: Mapping[str, Any]) -> ModelSettings:
    """`config` with some model options replaced (flat keys, as in MODEL_OPTIONS), checked again."""
    base = config.model_dump(exclude={"batching", "name", "explicit"})
    batching = config.batching.model_dump()
    if "max_queue_delay_ms" in values:
        del batching["max_queue_delay_us"]
    return model_settings(config.name, {**base, **batching, **values}, config.explicit)


def worker_count(config: ServerConfig) -> int:
    """How many worker processes `workers` asks for: auto is one per usable core (runtime/cpus.py)."""
    if config.workers == "auto":
        return default_threads()
    return int(config.workers)


def image_formats(config: ServerConfig) -> tuple[str, ...]:
    """`image_formats` as Pillow's format names (JPEG, PNG, ...)."""
    return tuple(f.strip().upper() for f in config.image_formats.split(",") if f.strip())


def _model_named(name: str) -> str:
    return f"model {name!r}" if name else "model defaults"


def _env_at(key: str) -> str:
    return "env " + env_of(key)


def _toml_at(table: str, path: str) -> Callable[[str], str]:
    return lambda key: f"{table} {key} in {path}"


def _given_flags(options: tuple[Option, ...], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags given for `options` (argparse leaves absent ones out), checked."""
    return checked(
        [o for o in options if o.has_flag], {k: v for k, v in flags.items() if v is not None}, flag_of
    )


def _check_keys(table: Mapping[str, Any], options: tuple[Option, ...], where: str) -> None:
    known = {o.key for o in options if o.in_toml} | {o.alias.key for o in options if o.alias}
    for key in table:
        if key in known:
            continue
        _misplaced(key, f"in {where}")
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown option {key!r} in {where}{hint}")


def _misplaced(key: str, where: str) -> None:
    """Refuse `key` where it was found when it is an option of another table (ConfigError naming its own)."""
    other = next((o for o in OPTIONS if o.key == key and o.in_toml), None)
    if other is not None:
        home = "[server]" if other.scope == "server" else "[model_defaults] or [models.NAME]"
        raise ConfigError(f"{key} is a {other.scope} option: set it in {home}, not {where}")


_TABLES = ("server", "model_defaults", "models")


def _check_top_level(toml: Mapping[str, Any], path: str) -> None:
    """The file holds the three tables and nothing else: a misspelt table or an option outside its table
    would otherwise be ignored, the server starting without it."""
    for key in toml:
        if key in _TABLES:
            continue
        _misplaced(key, f"at the top of {path}")
        close = difflib.get_close_matches(key, _TABLES, n=1)
        hint = f" (did you mean [{close[0]}]?)" if close else ""
        raise ConfigError(
            f"unknown table or key {key!r} in {path}{hint}: it holds [server], "
            f"[model_defaults] and [models.NAME]"
        )


def unknown_env(env: Mapping[str, str], others: tuple[Option, ...] = ()) -> list[str]:
    """One line for each `RESNET_SERVE_*` variable in `env` that no setting reads (with `others`, the
    calling command's own options): a misspelt variable is otherwise ignored without a word."""
    known = {env_of(key) for key in env_keys(OPTIONS + INPUT_OPTIONS + LOG_OPTIONS + others)} | {TOKEN_ENV}
    lines = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"{name} is not a setting of resnet-serve; ignored{hint}")
    return lines


def _table(toml: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    table = toml.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    return table


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8 text") from None
