"""numpy, imported where it is first used rather than where it is named.

Checking a PyTorch or safetensors file out needs no numpy: c-blosc decodes each object into
a plain buffer, BLAKE3 verifies it and the writer streams it. Importing numpy costs 50-60 ms
here, about a sixth of checking out a 150 MiB checkpoint, and git starts a new filter for
every command. So the modules on that path name numpy as ``np`` from here:

    if TYPE_CHECKING:
        import numpy as np
    else:
        from git_theta.lazy import np

``np.<name>`` imports numpy the first time any name is looked up, on whichever thread does
it (the import system makes other threads wait for that import to finish), and each name
is then kept on this object, so later lookups cost what a module attribute costs.
"""

from __future__ import annotations

from typing import Any


class _Numpy:
    """Stands for the numpy module; each attribute is numpy's, fetched at its first use."""

    def __getattr__(self, name: str) -> Any:  # called only for names not kept yet
        import numpy

        value = getattr(numpy, name)
        self.__dict__[name] = value
        return value


np = _Numpy()
