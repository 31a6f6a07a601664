"""`--help` layout for the export-stage commands: examples kept as written, and real defaults shown."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description's examples stay line-broken as written; options with a value default show it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        boolean = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        if action.default in (None, argparse.SUPPRESS) or boolean or "%(default)" in text or not action.help:
            return action.help
        return f"{text} (default: %(default)s)"
