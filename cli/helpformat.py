"""`--help` layout for every subcommand (cli/main.py): examples kept as written, each default shown once."""

from __future__ import annotations

import argparse
import re

# A help text that already says its default, in our spelling "(default: X)" or in prose ("default 8").
_STATES_DEFAULT = re.compile(r"\bdefaults?\b", re.IGNORECASE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description's examples stay line-broken as written. An option whose default is a value shows it
    as "(default: X)", unless its help already states the default; a flag, an option without a value
    default (None: "not given", which the help explains) and a positional show none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if not text or "%(default)" in text or _STATES_DEFAULT.search(text):
            return text
        flag = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        flag = flag or isinstance(action, argparse.BooleanOptionalAction | argparse._StoreConstAction)
        if action.default in (None, argparse.SUPPRESS, [], ()) or flag or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"
