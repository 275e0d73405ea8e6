"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def scope_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--global (the default) / --local: which git config a command writes."""
    f = click.option(
        "--local", "scope", flag_value="local", help="This repository's git config (.git/config)."
    )(f)
    return click.option(
        "--global",
        "scope",
        flag_value="global",
        default=True,
        help="The user's git config (~/.gitconfig). The default.",
    )(f)
