"""git and git-lfs plumbing. Knows nothing of tensors."""
