"""Registry of checkpoint formats: name -> lazily imported class.

Built-in formats are listed here; third parties add theirs through the ``git_theta.formats``
entry-point group. A name is registered once: a plugin cannot silently replace a format.
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path

from git_theta.errors import NotACheckpointError, UnsupportedError
from git_theta.formats.base import Checkpoint, Format, TensorData

__all__ = ["Checkpoint", "Format", "TensorData", "detect", "get", "names"]

_BUILTIN = {
    "safetensors": "git_theta.formats.safetensors:SafetensorsFormat",
    "pytorch": "git_theta.formats.pytorch:PyTorchFormat",
}
SNIFF_BYTES = 64 * 1024


@cache
def _plugins() -> dict[str, str]:
    """Formats from the ``git_theta.formats`` entry points; a plugin cannot replace a
    built-in format (no silent override)."""
    from importlib.metadata import entry_points  # 10 ms of imports, paid only when used

    return {
        ep.name: ep.value
        for ep in entry_points(group="git_theta.formats")
        if ep.name not in _BUILTIN
    }


def _targets() -> dict[str, str]:
    return {**_BUILTIN, **_plugins()}


def names() -> list[str]:
    """Names of every registered format, built-ins first."""
    return list(_targets())


@cache
def get(name: str) -> Format:
    """The format called ``name``."""
    try:
        target = _BUILTIN[name] if name in _BUILTIN else _plugins()[name]
    except KeyError:
        raise UnsupportedError(
            f"checkpoint format `{name}` is not known to this git-theta: install the plugin "
            "that provides it, or upgrade git-theta"
        ) from None
    module, _, attr = target.partition(":")
    fmt: Format = getattr(importlib.import_module(module), attr)()
    return fmt


def detect(path: Path, display_name: str) -> Format:
    """The format of the file at ``path``, from its content (never from its name)."""
    size = path.stat().st_size
    if size == 0:
        raise NotACheckpointError(display_name, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    for group in (lambda: _BUILTIN, _plugins):  # plugins are scanned only if no built-in matches
        for name in group():
            fmt = get(name)
            if fmt.sniff(head, size):
                return fmt
    raise NotACheckpointError(
        display_name, f"its content is not in any known format ({', '.join(names())})"
    )
