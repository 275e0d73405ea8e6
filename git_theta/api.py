"""git-theta from Python: a checkpoint of any revision, from any repository, without a
checkout, reading and fetching only the tensors asked for.

``repo`` is a work tree, a bare repository, or a git URL. A URL is cloned once, bare and
partial (``--filter=blob:none``), under the user's cache directory
(``$XDG_CACHE_HOME/git-theta/repos``, else ``~/.cache/git-theta/repos``): a load fetches
the manifest's blob and then only the objects it needs, and a second load from the same URL
reuses what the first fetched. Nothing here prints; every error is a ``git_theta.errors``
exception.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from git_theta.errors import GitError, ManifestError, UsageError
from git_theta.gitio import git
from git_theta.history import Located
from git_theta.manifest import Manifest, TensorRecord, parse_if_manifest
from git_theta.repo import Repo

FRAMEWORKS = ("numpy", "torch")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^[^/:@]+@[^/:]+:")


def cache_dir() -> Path:
    """Where clones of git URLs are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "git-theta" / "repos"


def repository(repo: str | os.PathLike[str] = ".") -> Repo:
    """The repository ``repo`` names: a work tree or a bare repository on disk, or a git URL
    (its cached bare partial clone, made on first use)."""
    text = os.fspath(repo)
    if _URL.match(text):
        return _cached_clone(text)
    return Repo.open(Path(text), bare_ok=True)


def _cached_clone(url: str) -> Repo:
    root = cache_dir()
    path = root / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".clone-", dir=root))
        try:
            git.run(["clone", "-q", "--bare", "--filter=blob:none", "--", url, str(partial)], root)
        except GitError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise GitError(f"cannot clone {url}", exc.stderr) from exc
        try:
            partial.rename(path)
        except OSError:  # another process made it first: use that one
            shutil.rmtree(partial, ignore_errors=True)
    repo = Repo.open(path, bare_ok=True)
    repo.source_url = url
    return repo


def _commit(repo: Repo, rev: str) -> str:
    """``rev`` as a commit id; in a cached clone, fetched first when it is not there."""
    check = ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"]
    proc = repo.git(check, check=False)
    if proc.returncode != 0 and repo.source_url:
        refs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
        repo.git(["fetch", "-q", "origin", *refs])
        proc = repo.git(check, check=False)
    if proc.returncode != 0:
        where = repo.source_url or str(repo.top)
        raise UsageError(f"revision `{rev}` is not in {where}: name a branch, tag or commit it has")
    return proc.stdout.decode().strip()


def _lfs_settings(repo: Repo, commit: str) -> None:
    """A cached clone takes the ``.lfsconfig`` of the revision it reads (where its objects'
    LFS server is), as git-lfs would from a work tree."""
    if not repo.source_url:
        return
    blob = repo.git(["cat-file", "blob", f"{commit}:.lfsconfig"], check=False)
    if blob.returncode != 0:
        return
    with tempfile.NamedTemporaryFile("wb", suffix=".lfsconfig") as f:
        f.write(blob.stdout)
        f.flush()
        listing = repo.git(["config", "--file", f.name, "--list"], check=False).stdout.decode()
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("lfs.") and repo.git_config.get(key) != value:
            repo.git(["config", "--local", key, value])
    repo.reload_config()


def _manifest(repo: Repo, commit: str, path: str) -> Manifest:
    proc = repo.git(["cat-file", "blob", f"{commit}:{path}"], check=False)
    if proc.returncode != 0:
        raise UsageError(f"`{path}` is not in revision {commit[:12]}: name a file it has")
    manifest = parse_if_manifest(proc.stdout)
    if manifest is None:
        raise UsageError(f"`{path}` at {commit[:12]} is not a checkpoint git-theta stores")
    return manifest


def _fetch(repo: Repo, manifest: Manifest, names: Iterable[str], where: str) -> None:
    """The objects the tensors ``names`` need, fetched in one batch when missing."""
    from git_theta.transfer import fetch_missing

    wanted = {name: manifest.tensors[name] for name in names}
    fetch_missing(repo, [Located(where, Manifest(manifest.format, wanted, {}))])


def numpy_array(record: TensorRecord, words: np.ndarray) -> np.ndarray:
    """A tensor's words as a NumPy array of its dtype and shape (bfloat16 and float8 as
    ml_dtypes' types)."""
    if record.dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes

        dtype = np.dtype(getattr(ml_dtypes, record.dtype))
    else:
        dtype = np.dtype(record.dtype)
    return words.view(dtype).reshape(record.shape)


def torch_tensor(record: TensorRecord, words: np.ndarray) -> Any:
    """A tensor's words as a torch tensor of its dtype and shape (sharing the words)."""
    import torch

    if not words.flags.writeable:
        words = words.copy()
    return torch.from_numpy(words).view(getattr(torch, record.dtype)).reshape(record.shape)


class Checkpoint(Mapping[str, Any]):
    """One checkpoint at one revision, read lazily: names, dtypes and shapes come from its
    manifest, and a tensor's objects are fetched (when missing), read and verified only when
    it is asked for. Aliases (tied weights) are names too, giving their target's tensor."""

    def __init__(
        self, repo: Repo, commit: str, path: str, manifest: Manifest, framework: str
    ) -> None:
        if framework not in FRAMEWORKS:
            raise UsageError(f"framework `{framework}` is not one of {', '.join(FRAMEWORKS)}")
        self.repo, self.commit, self.path = repo, commit, path
        self.manifest = manifest
        self.framework = framework
        self.format: dict[str, Any] = manifest.format

    def _target(self, name: str) -> str:
        target = self.manifest.aliases.get(name, name)
        if target not in self.manifest.tensors:
            raise KeyError(name)
        return target

    def dtype(self, name: str) -> str:
        return self.manifest.tensors[self._target(name)].dtype

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.manifest.tensors[self._target(name)].shape)

    def __iter__(self) -> Iterator[str]:
        return iter([*self.manifest.tensors, *self.manifest.aliases])

    def __len__(self) -> int:
        return len(self.manifest.tensors) + len(self.manifest.aliases)

    def __getitem__(self, name: str) -> Any:
        return self.read([name])[name]

    def fetch(self, names: Iterable[str] | None = None) -> None:
        """Fetch, in one batch, the objects of ``names`` (default: every tensor) that are
        not local."""
        targets = {self._target(n) for n in (names if names is not None else self)}
        _fetch(self.repo, self.manifest, sorted(targets), f"{self.commit[:12]}:{self.path}")

    def read(self, names: Iterable[str]) -> dict[str, Any]:
        """The tensors ``names``, their objects fetched in one batch first."""
        from git_theta.filter import load_tensor

        names = list(names)
        for name in names:
            if name not in self.manifest.tensors and name not in self.manifest.aliases:
                raise UsageError(
                    f"`{self.path}` at {self.commit[:12]} has no tensor `{name}`: "
                    f"it has {_some(self.manifest.tensors)}"
                )
        self.fetch(names)
        convert = torch_tensor if self.framework == "torch" else numpy_array
        done: dict[str, Any] = {}
        out = {}
        for name in names:
            target = self._target(name)
            if target not in done:
                record = self.manifest.tensors[target]
                words = load_tensor(target, record, self.repo.store)
                done[target] = convert(record, words)
            out[name] = done[target]
        return out


def _some(names: Iterable[str]) -> str:
    listed = list(names)
    shown = ", ".join(f"`{n}`" for n in listed[:5])
    return shown + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")


def open(  # noqa: A001 - the API's name for it
    path: str, rev: str = "HEAD", repo: str | os.PathLike[str] = ".", framework: str = "numpy"
) -> Checkpoint:
    """The checkpoint ``path`` at ``rev`` in ``repo``, read lazily (see ``Checkpoint``).
    ``path`` is relative to the repository's top."""
    found = repository(repo)
    commit = _commit(found, rev)
    _lfs_settings(found, commit)
    return Checkpoint(found, commit, path, _manifest(found, commit, path), framework)


def load(
    path: str,
    rev: str = "HEAD",
    names: Iterable[str] | None = None,
    repo: str | os.PathLike[str] = ".",
    framework: str = "numpy",
) -> Any:
    """The checkpoint ``path`` at ``rev`` in ``repo``, reading (and fetching) only what it
    returns.

    With ``names``: a dict of those tensors. Without: the whole checkpoint. A PyTorch file
    gives back the object ``torch.load`` would (a state dict, or a training checkpoint's
    dicts, lists and plain values), its tensors with their views and tied weights; other
    formats give a dict of every tensor by name. ``framework`` is ``"numpy"`` or
    ``"torch"`` (torch tensors: a state dict ``load_state_dict`` accepts).
    """
    checkpoint = open(path, rev, repo, framework)
    if names is not None:
        return checkpoint.read(names)
    tensors = checkpoint.read(list(checkpoint.manifest.tensors))
    if checkpoint.format.get("name") != "pytorch":
        return {name: tensors[checkpoint._target(name)] for name in checkpoint}
    return _Tree(tensors, checkpoint.manifest.aliases, framework).build(checkpoint.format["root"])


class _Tree:
    """A PyTorch manifest's tree back as Python objects, tensors shared as in the file."""

    def __init__(self, tensors: Mapping[str, Any], aliases: Mapping[str, str], framework: str):
        self.tensors, self.aliases, self.framework = tensors, aliases, framework
        self._views: dict[str, Any] = {}

    def _tensor(self, node: Mapping[str, Any]) -> Any:
        name = node.get("tensor", node.get("parameter"))
        key = json_key(node)
        if key in self._views:
            return self._views[key]
        base = self.tensors[self.aliases.get(name, name)]
        view = node.get("view")
        if view is not None:
            if self.framework == "torch":
                import torch

                base = torch.as_strided(base, view["shape"], view["stride"], view.get("offset", 0))
            else:
                size = base.dtype.itemsize
                start = base[view.get("offset", 0) :]
                strides = [s * size for s in view["stride"]]
                base = np.lib.stride_tricks.as_strided(
                    start, view["shape"], strides, writeable=False
                )
        if self.framework == "torch" and "parameter" in node:
            import torch

            base = torch.nn.Parameter(base, requires_grad=bool(node["requires_grad"]))
        self._views[key] = base
        return base

    def build(self, node: Any) -> Any:
        if "tensor" in node or "parameter" in node:
            return self._tensor(node)
        kind = next(k for k in node if k != "attrs")
        value = node[kind]
        if kind in ("dict", "odict"):
            built: Any = OrderedDict() if kind == "odict" else {}
            for key, item in value:
                built[key if isinstance(key, str) else self.build(key)] = self.build(item)
            for name, item in node.get("attrs", []):
                setattr(built, name, self.build(item))
            return built
        if kind in ("list", "tuple", "set"):
            items = [self.build(item) for item in value]
            return {"list": list, "tuple": tuple, "set": set}[kind](items)
        if kind == "float":
            return float.fromhex(value)
        if kind == "bytes":
            return base64.b64decode(value)
        if kind in ("none", "bool", "int", "str"):
            return value
        return self._torch_value(kind, value)

    def _torch_value(self, kind: str, value: Any) -> Any:
        if self.framework != "torch":
            return tuple(value) if kind == "torch.Size" else value
        import torch

        if kind == "torch.Size":
            return torch.Size(value)
        if kind == "torch.dtype":
            return getattr(torch, value)
        if kind == "torch.device":
            return (
                torch.device(value[0], value[1]) if value[1] is not None else torch.device(value[0])
            )
        raise ManifestError(f"pytorch manifest has an unknown node kind `{kind}`")


def json_key(node: Mapping[str, Any]) -> str:
    import json

    return json.dumps(node, sort_keys=True)


def _local(repo: str | os.PathLike[str]) -> Repo:
    found = repository(repo)
    if found.source_url:
        raise UsageError(
            f"{found.source_url} is a URL: save, runs, diff and log work in a local clone"
        )
    return found


def save(
    state: Any,
    path: str,
    repo: str | os.PathLike[str] = ".",
    message: str | None = None,
    branch: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Commit ``state`` as the checkpoint ``path`` on ``branch``, leaving the work tree and
    the index alone; returns the commit id.

    ``state`` is written in the format ``path``'s extension names (``.pt``/``.pth``/
    ``.bin``/``.ckpt``: ``torch.save``; ``.safetensors``; ``.npz``; ``.npy``), then stored
    as ``git add`` would (only changed tensors cost objects). ``branch`` is made from HEAD
    when it does not exist; it must not be the branch checked out in this work tree (a bare
    repository saves to HEAD's branch when ``branch`` is None). ``metadata``
    (hyperparameters, metrics: JSON values under keys of letters, digits, ``_``, ``.``,
    ``-``) goes in the commit as trailers, ``Theta-<key>: <JSON>``, which ``runs`` and
    ``git theta runs`` read back. Safe beside a concurrent ``save`` to another branch.
    """
    from git_theta import experiments as runs_lib

    found = _local(repo)
    if branch is None:
        head = found.git(["symbolic-ref", "--quiet", "--short", "HEAD"], check=False)
        if not found.bare or head.returncode != 0:
            raise UsageError(
                "save needs branch=: it never touches the work tree, so it commits to a "
                "branch that is not checked out (made from HEAD when new)"
            )
        branch = head.stdout.decode().strip()
    with tempfile.TemporaryDirectory(prefix="theta-save-") as tmp:
        file = Path(tmp) / Path(path).name
        runs_lib.serialize(state, path, file)
        return runs_lib.save_file(found, file, path, branch, message or f"save {path}", metadata)


def runs(repo: str | os.PathLike[str] = ".", pattern: str | None = None) -> list[Any]:
    """Every branch (matching the glob ``pattern``) with its latest commit's id, date,
    subject and metadata (``save``'s trailers): a table of experiments."""
    from git_theta import experiments as runs_lib

    return runs_lib.runs(_local(repo), pattern)


def diff(
    revs: Iterable[str] = (), paths: Iterable[str] = (), repo: str | os.PathLike[str] = "."
) -> list[Any]:
    """What ``git theta diff REVS -- PATHS`` prints, as data: one ``FileDiff`` per
    checkpoint (tensors added, removed, modified with their figures; values changed)."""
    from git_theta import diffs

    return diffs.diff(_local(repo), list(revs), list(paths), cached=False)


def log(
    revs: Iterable[str] = (), paths: Iterable[str] = (), repo: str | os.PathLike[str] = "."
) -> list[Any]:
    """What ``git theta log REVS -- PATHS`` prints, as data: per commit, the checkpoints it
    changed and the bytes of objects it newly stored."""
    from git_theta import diffs

    return diffs.log(_local(repo), list(revs), list(paths))
