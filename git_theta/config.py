"""Every setting git-theta reads: ``theta.*`` git config keys, overridden by ``GIT_THETA_*``.

| git config            | environment                   | meaning                              | default     |
|-----------------------|-------------------------------|--------------------------------------|-------------|
| theta.threads         | GIT_THETA_THREADS             | worker threads for hashing/encoding  | CPU count   |
| theta.compression     | GIT_THETA_COMPRESSION         | auto, planes, lz4 or zstd (below)    | auto        |
| theta.compressionLevel| GIT_THETA_COMPRESSION_LEVEL   | its level (1-9)                      | lz4 5, zstd 1, planes 1 |
| theta.skipSmudge      | GIT_THETA_SKIP_SMUDGE         | checkout leaves manifests in place   | false       |

``auto`` picks per tensor: blosc byte shuffle + zstd (``zstd``) for floats of 4 KiB or more
when that saves at least 2%, else blosc lz4; ``lz4``, ``zstd`` or ``planes`` (byte planes
through zarr's transpose codec, then zstd: as small as ``zstd``, slower to decode) use that
one for every tensor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from git_theta.codec import COMPRESSORS, DEFAULT_LEVEL
from git_theta.errors import UsageError

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
    return Config(
        threads=parse_int(*threads, 1, 256) if threads else max(1, os.cpu_count() or 1),
        compression=compression,
        compression_level=parse_int(*level, 1, 9) if level else DEFAULT_LEVEL.get(compression),
        skip_smudge=parse_bool(*skip) if skip else False,
    )
