"""Every setting git-theta reads: ``theta.*`` git config keys, overridden by ``GIT_THETA_*``.

| git config            | environment                   | meaning                              | default     |
|-----------------------|-------------------------------|--------------------------------------|-------------|
| theta.threads         | GIT_THETA_THREADS             | worker threads for hashing/encoding  | CPU count   |
| theta.compression     | GIT_THETA_COMPRESSION         | auto, planes, lz4 or zstd (below)    | auto        |
| theta.compressionLevel| GIT_THETA_COMPRESSION_LEVEL   | its level (1-9)                      | lz4 5, zstd 1, planes 1 |
| theta.skipSmudge      | GIT_THETA_SKIP_SMUDGE         | checkout leaves manifests in place   | false       |
| theta.updateType      | GIT_THETA_UPDATE_TYPE         | auto, dense, xor or sparse (below)   | auto        |
| theta.maxChainDepth   | GIT_THETA_MAX_CHAIN_DEPTH     | updates between a tensor and a dense copy (0-64) | 8 |

``auto`` picks per tensor: blosc byte shuffle + zstd (``zstd``) for floats of 4 KiB or more
when that saves at least 2%, else blosc lz4; ``lz4``, ``zstd`` or ``planes`` (byte planes
through zarr's transpose codec, then zstd: as small as ``zstd``, slower to decode) use that
one for every tensor.

``theta.updateType`` says how a changed tensor is stored when the checkpoint's previous
version (the manifest being replaced) has a tensor of the same name, dtype and shape:
``auto`` stores the smallest of the whole tensor (``dense``), its words XOR the previous
ones (``xor``) and the words that changed (``sparse``); ``dense``, ``xor`` or ``sparse``
store that one. A tensor whose previous version already lies ``theta.maxChainDepth``
updates from a dense copy is stored dense.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from git_theta.codec import COMPRESSORS, DEFAULT_LEVEL
from git_theta.errors import UsageError

UPDATE_TYPES = ("dense", "xor", "sparse")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(key: str, value: str) -> bool:
    """git's spelling of booleans; raises UsageError for anything else."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise UsageError(f"{key}={value!r} is not a boolean (use true or false)")


def parse_int(key: str, value: str, low: int, high: int) -> int:
    """An integer in [low, high]; raises UsageError otherwise."""
    try:
        number = int(value.strip())
    except ValueError:
        raise UsageError(f"{key}={value!r} is not a whole number") from None
    if not low <= number <= high:
        raise UsageError(f"{key}={number} is out of range ({low} to {high})")
    return number


@dataclass(frozen=True)
class Config:
    threads: int
    compression: str  # auto, or one of codec.COMPRESSORS
    compression_level: int | None  # None: each compressor's default
    skip_smudge: bool
    update_type: str = "auto"  # auto, or one of UPDATE_TYPES
    max_chain_depth: int = 8


def load(git_config: Mapping[str, str]) -> Config:
    """The configuration from a repository's git config values (``gitio.git.read_config``),
    each overridden by its environment variable."""
    values = {key.lower(): value for key, value in git_config.items() if key.startswith("theta.")}

    def pick(key: str, env: str) -> tuple[str, str] | None:
        if env in os.environ:
            return env, os.environ[env]
        if key.lower() in values:
            return key, values[key.lower()]
        return None

    threads = pick("theta.threads", "GIT_THETA_THREADS")
    level = pick("theta.compressionLevel", "GIT_THETA_COMPRESSION_LEVEL")
    cname = pick("theta.compression", "GIT_THETA_COMPRESSION")
    compression = "auto"
    if cname is not None:
        compression = cname[1].strip().lower()
        if compression not in ("auto", *COMPRESSORS):
            raise UsageError(
                f"{cname[0]}={cname[1]!r} is not a compressor (use auto, planes, lz4 or zstd)"
            )
    skip = pick("theta.skipSmudge", "GIT_THETA_SKIP_SMUDGE")
    kind = pick("theta.updateType", "GIT_THETA_UPDATE_TYPE")
    update_type = "auto"
    if kind is not None:
        update_type = kind[1].strip().lower()
        if update_type not in ("auto", *UPDATE_TYPES):
            raise UsageError(
                f"{kind[0]}={kind[1]!r} is not an update type (use auto, "
                f"{', '.join(UPDATE_TYPES[:-1])} or {UPDATE_TYPES[-1]})"
            )
    chain = pick("theta.maxChainDepth", "GIT_THETA_MAX_CHAIN_DEPTH")
    return Config(
        threads=parse_int(*threads, 1, 256) if threads else max(1, os.cpu_count() or 1),
        compression=compression,
        compression_level=parse_int(*level, 1, 9) if level else DEFAULT_LEVEL.get(compression),
        skip_smudge=parse_bool(*skip) if skip else False,
        update_type=update_type,
        max_chain_depth=parse_int(*chain, 0, 64) if chain else 8,
    )
