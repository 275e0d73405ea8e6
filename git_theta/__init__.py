"""git-theta: version machine-learning checkpoints with plain git, tensor by tensor."""

__version__ = "0.1.0"
