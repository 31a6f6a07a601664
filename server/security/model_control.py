"""Triton's model control mode: whether clients may load and unload models (RepositoryModelLoad/Unload), and
whether the server follows the repository on its own.

`none` (the default, as in Triton): the server serves what it loaded at start-up, and a load or unload
request is refused with Triton's status, UNAVAILABLE, and a message that starts with Triton's words, so
scripts written against Triton recognise it. `explicit`: clients may load and unload. Unlike Triton's
explicit mode, every configured model is still loaded at start-up. `poll`: the server scans the repository
every `--repository-poll-secs` and loads new models, reloads changed ones and unloads removed ones
(server/models/poll.py); clients may not load or unload (Triton refuses them in this mode too).
"""

from __future__ import annotations

from typing import Final

MODES: Final = ("none", "explicit", "poll")
REFUSED: Final = "explicit model load / unload is not allowed"  # Triton's words


def refusal(mode: str) -> str:
    """The message of a refused load or unload under `mode`."""
    why = "the server follows its repository by polling" if mode == "poll" else "model control is off"
    return (
        f"{REFUSED}: {why} (--model-control-mode {mode}; restart with --model-control-mode explicit to allow "
        "it)"
    )


def parse_mode(text: str) -> str:
    """A mode name, case-insensitive as Triton's (`EXPLICIT`); ValueError for any other."""
    mode = text.strip().lower()
    if mode not in MODES:
        raise ValueError(f"expected none, explicit or poll, got {text!r}")
    return mode


def load_unload_allowed(mode: str) -> bool:
    return mode == "explicit"


def polls(mode: str) -> bool:
    return mode == "poll"
