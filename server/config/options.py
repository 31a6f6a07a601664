"""How a setting is declared, and the views derived from that one declaration.

A setting is one field of a pydantic model, declared with `option(...)`: its type, default, limits and help
(server/config/settings.py). From that field come its command-line flag (`--grpc-port`, built by
cli/flags.py), its environment variable (`RESNET_SERVE_GRPC_PORT`, found by pydantic-settings in
`read_env`), its TOML key (`grpc_port`, server/config/load.py), its `--help` line and its row in
docs/server.md. Whichever way a value comes, it is checked by the same validator (`Option.value`), so a bad
value gets the same one-line error, naming the option, the value and where it came from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from resnet_serve.formats.environment import env_of
from resnet_serve.formats.errors import UserError

if TYPE_CHECKING:  # a type only: pydantic_core is pydantic's, not a dependency of ours
    from pydantic_core import ErrorDetails

_EXTRA: Final = (
    "x-resnet-serve"  # where option() keeps the spelling details, in the field's json_schema_extra
)


class ConfigError(UserError, ValueError):
    """The configuration is invalid; the message names the option and what it expects."""


# ------------------------------------------------------------------------------------------------ types


def _no_bool(value: Any) -> Any:
    """pydantic's lax mode reads true as 1; a number option given true or false is a mistake."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true or false")
    return value


def _split(value: Any) -> Any:
    """A list given as text, "4,8", "4, 8" or "4 8", or as several such texts (a flag's words); one number is
    a list of one."""
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [part for v in value for part in v.replace(",", " ").split()]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool), AllowInfNan(False)]
IntList = Annotated[tuple[Int, ...], BeforeValidator(_split)]


class _OneOf:
    """A string that must be one of `choices` (lower-cased first with `fold_case`); `--help` lists them."""

    def __init__(self, choices: Sequence[str], fold_case: bool) -> None:
        self.choices = tuple(choices)
        self.fold_case = fold_case

    def __call__(self, value: str) -> str:
        chosen = value.strip().lower() if self.fold_case else value
        if chosen not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return chosen


def one_of(choices: Sequence[str], fold_case: bool = False) -> AfterValidator:
    """A validator for a string that must be one of `choices` (lower-cased first with `fold_case`)."""
    return AfterValidator(_OneOf(choices, fold_case))


# --------------------------------------------------------------------------------------------- declaring


@dataclass(frozen=True)
class Alias:
    """Another spelling of an option in another unit: `max_queue_delay_ms` for `max_queue_delay_us` (×1000).
    Its flag, environment variable and TOML key are derived from `key` as the option's own are."""

    key: str
    factor: int  # the option's value = round(given × factor)
    metavar: str
    unit: str  # for --help: "milliseconds"

    def convert(self, given: Any, where: str) -> Any:
        try:
            number = float(given) if isinstance(given, str) else given
            if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                raise ValueError
        except ValueError:
            raise ConfigError(f"{self.key}: expected a finite number, got {given!r} ({where})") from None
        return round(number * self.factor)


def option(
    default: Any,
    metavar: str,
    help: str,
    *,
    flag: bool = True,
    toml: bool = True,
    repeat: bool = False,
    alias: Alias | None = None,
    secret: bool = False,
    **limits: Any,
) -> Any:
    """Declare one setting: its default, the flag's METAVAR, its help, and pydantic's limits (ge=, le=).
    `flag=False`: no command-line flag (a secret would show in `ps`); `toml=False`: no config-file key;
    `repeat`: the flag may be given several times; `alias`: a second spelling in another unit; `secret`:
    an error never repeats the value."""
    spelling: dict[str, Any] = {
        "metavar": metavar,
        "flag": flag,
        "toml": toml,
        "repeat": repeat,
        "secret": secret,
    }
    if alias is not None:
        spelling["alias"] = [alias.key, alias.factor, alias.metavar, alias.unit]
    return Field(default, description=help, json_schema_extra={_EXTRA: spelling}, **limits)


@dataclass(frozen=True, eq=False)
class Option:
    """One declared setting, seen from the outside: its names in every source, and its validator."""

    key: str
    scope: str  # which table holds it in the TOML file: "server", "model" (or "" for none)
    info: FieldInfo

    @property
    def _spelling(self) -> dict[str, Any]:
        extra = self.info.json_schema_extra
        assert isinstance(extra, dict)
        spelling = extra[_EXTRA]
        assert isinstance(spelling, dict)
        return spelling

    @property
    def help(self) -> str:
        return self.info.description or ""

    @property
    def choices(self) -> tuple[str, ...]:
        """The values a `one_of` option takes (empty for any other)."""
        for item in self.info.metadata:
            if isinstance(item, AfterValidator) and isinstance(item.func, _OneOf):
                return item.func.choices
        return ()

    @property
    def metavar(self) -> str:
        return str(self._spelling["metavar"])

    @property
    def default(self) -> Any:
        return self.info.get_default(call_default_factory=True)

    @property
    def shown_default(self) -> str:
        """The default as `--help` and docs/server.md show it: `8001`, `true`, `4,8`, `none` for empty."""
        default = self.default
        if isinstance(default, bool):
            return str(default).lower()
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        return str(default) if default != "" else "none"

    @property
    def flag(self) -> str:
        return flag_of(self.key)

    @property
    def env(self) -> str:
        return env_of(self.key)

    @property
    def has_flag(self) -> bool:
        return bool(self._spelling["flag"])

    @property
    def in_toml(self) -> bool:
        return bool(self._spelling["toml"]) and bool(self.scope)

    @property
    def repeat(self) -> bool:
        return bool(self._spelling["repeat"])

    @property
    def secret(self) -> bool:
        return bool(self._spelling["secret"])

    @property
    def is_list(self) -> bool:
        return isinstance(self.default, tuple)

    @property
    def alias(self) -> Alias | None:
        given = self._spelling.get("alias")
        return Alias(*given) if given else None

    @functools.cached_property
    def _model(self) -> type[BaseModel]:
        annotation: Any = self.info.annotation
        return create_model(f"Option_{self.key}", value=(annotation, self.info))

    def value(self, given: Any, where: str) -> Any:
        """`given` (a flag's or variable's text, a TOML value, a Python value) checked and converted; a
        ConfigError naming the option, the value and `where` it came from otherwise."""
        try:
            one: Any = self._model.model_validate({"value": given})
            return one.value
        except ValidationError as exc:
            error = exc.errors()[0]
            text = describe(error, None if self.secret else given)
            sep = " " if text.startswith("must ") else ": "  # "max_batch_size must be >= 1, got 0"
            raise ConfigError(f"{self.key}{sep}{text} ({where})") from None

    def parse(self, text: Any) -> Any:
        """`value` for the option's environment variable."""
        return self.value(text, self.env)


def flag_of(key: str) -> str:
    """The command-line flag of an option or alias key: `--grpc-port`."""
    return "--" + key.replace("_", "-")


def options_of(model: type[BaseModel], scope: str) -> tuple[Option, ...]:
    """The options a model declares (its fields made with `option`), in declaration order."""
    return tuple(
        Option(name, scope, info)
        for name, info in model.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and _EXTRA in info.json_schema_extra
    )


def describe(error: ErrorDetails, given: Any = None) -> str:
    """A pydantic error as a short phrase: "must be >= 1, got 0", "expected a whole number, got 'x'"."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error":
        text = str(ctx.get("error", error["msg"])).removeprefix("Value error, ")
    elif kind in ("int_parsing", "int_type", "int_from_float"):
        text = "expected a whole number"
    elif kind in ("float_parsing", "float_type", "finite_number"):
        text = "expected a finite number"
    elif kind in ("bool_parsing", "bool_type"):
        text = "expected true or false"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
        bound = next(iter(ctx.values()))
        text = f"must be {sign[kind]} {bound}"
    elif kind in ("tuple_type", "list_type", "iterable_type"):
        text = "expected a list"
    elif kind == "string_type":
        text = "expected a string"
    else:
        text = error["msg"][:1].lower() + error["msg"][1:]
    if "got " in text or given is None:
        return text
    shown = error.get("input", given) if error["loc"][1:] else given
    return f"{text}, got {_shown(shown)}"


def _shown(value: Any) -> str:
    if isinstance(value, str) and _is_number(value):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return repr(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def first_error(exc: ValidationError) -> str:
    """A model's ValidationError as one line: the first error, with the field it is about."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    text = describe(error, error.get("input") if where else None)
    if not where or error["type"] == "value_error":
        return text
    return f"{where}{' ' if text.startswith('must ') else ': '}{text}"


# ------------------------------------------------------------------------------------------- environment


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping: os.environ when serving, a test's dict.
    It overrides `_load_env_vars`, as pydantic-settings' own DotEnvSettingsSource does (the version is pinned
    in constraints.txt; tests/test_server_config.py reads every option through it)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(settings_cls, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._given, case_sensitive=True)


@functools.cache
def _env_settings(keys: tuple[str, ...]) -> type[BaseSettings]:
    # Every variable is read as text: the option's own validator converts it, as it does a flag's text.
    # Each named exactly (validation_alias): RESNET_SERVE_GRPC_PORT, never resnet_serve_grpc_port.
    fields: dict[str, Any] = {key: (str | None, Field(None, validation_alias=env_of(key))) for key in keys}
    return create_model("Environment", __base__=BaseSettings, **fields)


def env_keys(options: Iterable[Option]) -> tuple[str, ...]:
    """The keys whose variables `read_env` looks for: each option's, and its alias's."""
    return tuple(k for o in options for k in (o.key, *((o.alias.key,) if o.alias else ())))


def read_env(options: Iterable[Option], env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `options` (and of their aliases) set in `env`, as text, keyed by option key."""
    keys = env_keys(options)
    found = _MappingEnvSource(_env_settings(keys), env)()  # keyed by the variables' names
    return {key: found[env_of(key)] for key in keys if found.get(env_of(key)) is not None}


def checked(
    options: Iterable[Option], given: Mapping[str, Any], where: Callable[[str], str]
) -> dict[str, Any]:
    """One source's values (keyed by option or alias key) checked by their options' validators, aliases
    converted to the option's unit. Giving an option and its alias in one source is an error."""
    values: dict[str, Any] = {}
    for opt in options:
        alias = opt.alias
        if alias is not None and alias.key in given:
            if opt.key in given:
                raise ConfigError(f"{where(opt.key)} and {where(alias.key)} set the same option: give one")
            values[opt.key] = opt.value(alias.convert(given[alias.key], where(alias.key)), where(alias.key))
        elif opt.key in given:
            values[opt.key] = opt.value(given[opt.key], where(opt.key))
    return values
