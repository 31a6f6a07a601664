"""Command-line flags derived from declared settings (server/config/options.py): one flag per option, its
help, default and environment variable taken from the option's declaration."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from resnet_serve.formats.environment import env_of
from resnet_serve.server.config import ConfigError, Option
from resnet_serve.server.config.options import flag_of


def add_flags(
    group: argparse._ActionsContainer, options: Iterable[Option], env: Mapping[str, str] | None = None
) -> None:
    """Add each option's flag (and its alias's) to `group`.

    Without `env` a flag is kept as the text given, and left out of the namespace when absent: the loader
    (server/config/load.py) checks it and layers it over the config file and the environment. With `env`
    (for settings read before any file: logging, the entrypoint's engines) the option's default is its
    variable in `env` when set, and argparse checks the value, given or default, with the option's validator.
    """
    for opt in options:
        if not opt.has_flag:
            continue
        shown = "%(default)s" if env is not None else opt.shown_default
        kwargs: dict[str, Any] = {"metavar": opt.metavar, "default": argparse.SUPPRESS}
        if opt.repeat:
            kwargs["action"] = "append"
        elif opt.is_list:
            kwargs["nargs"] = "+"  # 4 8 or 4,8
        elif isinstance(opt.default, bool):
            kwargs |= {"nargs": "?", "const": "true"}  # --warmup alone means true
        if env is not None:
            default = opt.shown_default if isinstance(opt.default, bool) else opt.default  # shown as false
            kwargs |= {"type": _checked_by(opt), "default": env.get(opt.env, default)}
        values = f"; one of {', '.join(opt.choices)}" if opt.choices else ""
        group.add_argument(
            opt.flag, dest=opt.key, help=f"{opt.help}{values} (default: {shown}; env {opt.env})", **kwargs
        )
        if opt.alias is not None:
            alias = opt.alias
            group.add_argument(
                flag_of(alias.key),
                dest=alias.key,
                metavar=alias.metavar,
                default=argparse.SUPPRESS,
                help=f"the same as {opt.flag}, in {alias.unit} (env {env_of(alias.key)})",
            )


def _checked_by(opt: Option) -> Callable[[str], Any]:
    def check(text: str) -> Any:
        try:
            return opt.value(text, f"{opt.flag} or env {opt.env}")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check
