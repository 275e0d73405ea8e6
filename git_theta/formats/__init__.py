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

__all__ = ["Checkpoint", "Format", "TensorData", "Unclaimed", "detect", "get", "names"]

_BUILTIN = {
    "safetensors": "git_theta.formats.safetensors:SafetensorsFormat",
    "pytorch": "git_theta.formats.pytorch:PyTorchFormat",
    "numpy": "git_theta.formats.npy:NumpyFormat",
    "gguf": "git_theta.formats.gguf:GgufFormat",
    "flax": "git_theta.formats.flax:FlaxFormat",
}
# formats no file is detected as: chosen by the filter for what no format claims
_FALLBACK = {"file": "git_theta.formats.whole:WholeFile"}
SNIFF_BYTES = 64 * 1024


@cache
def _plugins() -> dict[str, str]:
    """Formats from the ``git_theta.formats`` entry points; a plugin cannot replace a
    built-in format (no silent override)."""
    from importlib.metadata import entry_points  # 10 ms of imports, paid only when used

    return {
        ep.name: ep.value
        for ep in entry_points(group="git_theta.formats")
        if ep.name not in _BUILTIN and ep.name not in _FALLBACK
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
        builtin = {**_BUILTIN, **_FALLBACK}
        target = builtin[name] if name in builtin else _plugins()[name]
    except KeyError:
        raise UnsupportedError(
            f"checkpoint format `{name}` is not known to this git-theta: install the plugin "
            "that provides it, or upgrade git-theta"
        ) from None
    module, _, attr = target.partition(":")
    if name in _BUILTIN or name in _FALLBACK:
        fmt: Format = getattr(importlib.import_module(module), attr)()
        return fmt
    try:  # a plugin's own code: whatever goes wrong there is named as the plugin's
        plugin: Format = getattr(importlib.import_module(module), attr)()
    except Exception as exc:
        raise UnsupportedError(
            f"checkpoint format plugin `{name}` ({target}) cannot be loaded "
            f"({type(exc).__name__}: {exc}): fix or uninstall it"
        ) from exc
    return plugin


def detect(path: Path, display_name: str) -> Format:
    """The format of the file at ``path``, from its content (never from its name): every
    registered format, built-in or plugin, is asked whether it claims the file; exactly one
    must."""
    size = path.stat().st_size
    if size == 0:
        raise Unclaimed(display_name, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    claims = [name for name in names() if get(name).sniff(head, size)]
    if len(claims) > 1:
        raise NotACheckpointError(
            display_name,
            f"its content is claimed by several formats ({', '.join(claims)}): uninstall the "
            "format plugin that should not claim it",
        )
    if claims:
        return get(claims[0])
    raise Unclaimed(display_name, f"its content is not in any known format ({', '.join(names())})")


class Unclaimed(NotACheckpointError):
    """No format claims the file (it may be kept whole: see ``filter.clean``)."""
