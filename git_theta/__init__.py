"""git-theta: version machine-learning checkpoints with plain git, tensor by tensor."""

__version__ = "0.1.0"

from typing import Any

# the Python API (git_theta.api), imported on first use: the filter imports this package
# and must not pay for it
_API = ("load", "open", "save", "runs", "diff", "log", "Checkpoint", "repository")


def __getattr__(name: str) -> Any:
    if name in _API:
        from git_theta import api

        return getattr(api, name)
    if name == "CheckpointManager":
        from git_theta.manager import CheckpointManager

        return CheckpointManager
    raise AttributeError(f"module 'git_theta' has no attribute {name!r}")
