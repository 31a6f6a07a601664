"""Triton's model control mode: whether clients may load and unload models (RepositoryModelLoad/Unload).

`none` (the default, as in Triton): the server serves what it loaded at start-up, and a load or unload
request is refused with Triton's status, UNAVAILABLE, and a message that starts with Triton's words, so
scripts written against Triton recognise it. `explicit`: clients may load and unload. Unlike Triton's
explicit mode, every configured model is still loaded at start-up.
"""

from __future__ import annotations

from typing import Final

MODES: Final = ("none", "explicit")
REFUSED: Final = (
    "explicit model load / unload is not allowed: the server runs with --model-control-mode none "
    "(restart it with --model-control-mode explicit to allow it)"
)


def parse_mode(text: str) -> str:
    """A mode name, case-insensitive as Triton's (`EXPLICIT`); ValueError for any other."""
    mode = text.strip().lower()
    if mode == "poll":
        raise ValueError("poll is not supported; use none or explicit")
    if mode not in MODES:
        raise ValueError(f"expected none or explicit, got {text!r}")
    return mode


def load_unload_allowed(mode: str) -> bool:
    return mode == "explicit"
