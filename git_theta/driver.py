"""The filter driver: git's clean and smudge requests for the files of one repository.

Used by the long-running ``filter-process`` and the one-shot ``clean``/``smudge``
commands alike. It wires the repository's index, store, settings and remote to the pure
``filter.clean`` / ``filter.smudge``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from git_theta import filter as theta_filter
from git_theta.errors import ManifestError, ThetaError
from git_theta.formats.base import private_file
from git_theta.manifest import MAX_MANIFEST_BYTES, Manifest, parse_if_manifest
from git_theta.repo import Repo


class FilterDriver:
    """clean and smudge for the files of ``repo``, as git's filter drivers call them."""

    def __init__(
        self,
        repo: Repo,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[str], theta_filter.Progress | None] | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.repo = repo
        # the last manifest parsed, by its bytes: git asks whether to delay a smudge and
        # then for the smudge, with the same content
        self._parsed: tuple[bytes, Manifest | None] | None = None
        self.warn = warn or (lambda message: None)
        self.note = note or (lambda message: None)
        # progress(stage) -> a callback for one file's progress, or None for none
        self.progress = progress or (lambda stage: None)

    def clean(self, pathname: str, src: Path, out: BinaryIO) -> None:
        """Checkpoint at ``src`` -> its manifest on ``out``, reusing the records of the
        manifest the index holds for ``pathname``. ``src`` is the filter's own copy of
        what git sent, which nothing else changes: its tensors are mapped, not copied."""
        previous = self.repo.index_blob(pathname) if pathname else None
        with private_file(src):
            manifest = theta_filter.clean(
                src,
                previous,
                self.repo.store,
                self.repo.config,
                name=pathname or "<stdin>",
                progress=self.progress(f"storing {pathname}"),
                note=self.note,
            )
        out.write(manifest)

    def smudge(self, pathname: str, src: Path, out: BinaryIO) -> None:
        """Manifest at ``src`` -> the checkpoint on ``out`` (fetching missing objects in one
        batch). Content that is not a manifest, or any content under ``skipSmudge``, is
        written unchanged."""
        data = src.read_bytes()
        try:
            manifest = None if self.repo.config.skip_smudge else self._parse(data)
        except ManifestError:
            if not has_conflict_markers(data):
                raise
            # a merge made where git-theta's merge driver was not configured: git merged
            # the manifests as text; the text stays for the user to resolve
            self.warn(
                f"{pathname} holds a manifest with merge conflict markers (merged where "
                "git-theta's merge driver was not configured), left as text: take one side "
                f"with `git checkout --ours {pathname}` (or `--theirs`), or run "
                "`git theta install`, `git merge --abort` and merge again"
            )
            manifest = None
        if manifest is None:
            out.write(data)
            return

        def fetch(needed: Manifest) -> None:
            from git_theta.history import Located  # only when objects are missing
            from git_theta.transfer import fetch_missing

            fetch_missing(self.repo, [Located(pathname, needed)])

        theta_filter.smudge(
            manifest,
            self.repo.store,
            out,
            self.repo.config,
            fetch=fetch,
            progress=self.progress(f"rebuilding {pathname}"),
        )

    def wants(self, pathname: str, src: Path) -> bool:
        """Delay a smudge whose manifest needs objects that are not local (they are then
        fetched with every other delayed file's, in one transfer: ``ready``)."""
        if self.repo.config.skip_smudge or src.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        try:
            manifest = self._parse(src.read_bytes())
        except ManifestError:
            return False  # answered now, with its error
        return manifest is not None and bool(
            theta_filter.missing_objects(manifest, self.repo.store)
        )

    def ready(self, delayed: list[tuple[str, Path]]) -> None:
        """Fetch what every delayed smudge needs, in one batch. When that fails, each file
        fetches (and fails) on its own when git asks for it again: its error then names
        that file's tensors, one line per file, as without delay."""
        from git_theta.history import Located
        from git_theta.transfer import fetch_missing

        located = []
        for pathname, src in delayed:
            try:
                manifest = parse_if_manifest(src.read_bytes())
            except ManifestError:
                continue  # fails with its own error when asked again
            if manifest is not None:
                located.append(Located(pathname, manifest))
        with contextlib.suppress(ThetaError):
            fetch_missing(self.repo, located)

    def _parse(self, data: bytes) -> Manifest | None:
        """``parse_if_manifest(data)``, kept for the same bytes asked again (manifests are
        never changed once parsed)."""
        if self._parsed is None or self._parsed[0] != data:
            self._parsed = (data, parse_if_manifest(data))
        return self._parsed[1]

    def handle(self, command: str, pathname: str, src: Path, out: BinaryIO) -> None:
        """A filter-process request."""
        if command == "clean":
            self.clean(pathname, src, out)
        else:
            self.smudge(pathname, src, out)


def has_conflict_markers(data: bytes) -> bool:
    """Whether ``data`` holds git's conflict markers (a text merge that conflicted)."""
    return (data.startswith(b"<<<<<<< ") or b"\n<<<<<<< " in data) and b"\n>>>>>>> " in data
