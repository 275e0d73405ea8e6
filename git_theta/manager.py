"""A checkpoint manager on a git branch: every step a commit, the last N and the best kept.

Each ``save`` is one commit (``git_theta.save``) on the manager's branch whose trailers hold
the step and its metrics. Retention rewrites the branch to hold only the kept steps: each
commit holds a complete manifest (an update's manifest lists every object of its chain), so
the kept commits are made again on top of one another with the same trees, nothing
recomputed, and ``git theta gc`` then frees what only the dropped steps needed. The
branch's reflog entries for the dropped commits are expired with them: dropping is what
retention asks for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from git_theta import experiments
from git_theta.errors import GitError, UsageError

MODES = ("min", "max")


@dataclass(frozen=True)
class Step:
    step: int
    commit: str
    metrics: dict[str, Any]


class CheckpointManager:
    """Checkpoints of ``path`` on ``branch`` (default ``checkpoints/<file stem>``).

    ``keep_last``: keep the newest N steps; ``keep_best``: the best N by ``metric`` (lowest
    when ``mode`` is ``"min"``); ``keep_every_steps``: every step divisible by it. With none
    of them set every step is kept."""

    def __init__(
        self,
        path: str,
        repo: str | os.PathLike[str] = ".",
        branch: str | None = None,
        keep_last: int | None = None,
        keep_best: int | None = None,
        metric: str | None = None,
        mode: str = "max",
        keep_every_steps: int | None = None,
    ) -> None:
        from git_theta import api

        if mode not in MODES:
            raise UsageError(f"mode `{mode}` is not `min` or `max`")
        if keep_best is not None and metric is None:
            raise UsageError("keep_best needs metric=: the metric that says which step is best")
        for name, value in (
            ("keep_last", keep_last),
            ("keep_best", keep_best),
            ("keep_every_steps", keep_every_steps),
        ):
            if value is not None and (type(value) is not int or value < 1):
                raise UsageError(f"{name} must be a positive integer, not {value!r}")
        self.path = path
        self.repo = api._local(repo)
        self.repo_arg = repo
        self.branch = branch or f"checkpoints/{Path(path).stem}"
        self.keep_last, self.keep_best, self.keep_every = keep_last, keep_best, keep_every_steps
        self.metric, self.mode = metric, mode

    # ------------------------------------------------------------------ reading

    def _log(self) -> list[tuple[str, dict[str, Any]]]:
        """(commit, trailers) of the branch's first-parent history, oldest first."""
        ref = f"refs/heads/{self.branch}"
        proc = self.repo.git(["log", "--first-parent", "--format=%H%x00%B%x00", ref], check=False)
        if proc.returncode != 0:
            return []
        fields = proc.stdout.decode(errors="replace").split("\0")
        entries = [
            (fields[i].strip(), experiments.parse_trailers(fields[i + 1]))
            for i in range(0, len(fields) - 1, 2)
        ]
        return entries[::-1]

    def _history(self) -> list[Step]:
        """Every saved step on the branch, oldest first (a step saved again: its last)."""
        found: dict[int, Step] = {}
        for commit, meta in self._log():
            step = meta.get("step")
            if type(step) is int:
                found.pop(step, None)
                metrics = meta.get("metrics")
                found[step] = Step(step, commit, dict(metrics) if isinstance(metrics, dict) else {})
        return list(found.values())

    def steps(self) -> list[int]:
        """The saved steps, in the order they were saved."""
        return [s.step for s in self._history()]

    def _find(self, step: int | None) -> Step:
        history = self._history()
        if not history:
            raise UsageError(f"branch `{self.branch}` holds no saved step yet")
        if step is None:
            return max(history, key=lambda s: s.step)
        for item in history:
            if item.step == step:
                return item
        raise UsageError(
            f"step {step} is not kept on `{self.branch}`: it has {[s.step for s in history]}"
        )

    def latest(self) -> int | None:
        history = self._history()
        return max(s.step for s in history) if history else None

    def _ranked(self, history: list[Step]) -> list[Step]:
        metric = self.metric
        if metric is None:
            raise UsageError("best needs the manager's metric=")
        scored = [s for s in history if isinstance(s.metrics.get(metric), (int, float))]
        sign = 1 if self.mode == "min" else -1
        return sorted(scored, key=lambda s: (sign * s.metrics[metric], -s.step))

    def best(self) -> int | None:
        """The step whose ``metric`` is lowest (``mode="min"``) or highest; the later of
        equal ones."""
        ranked = self._ranked(self._history())
        return ranked[0].step if ranked else None

    def metrics(self, step: int) -> dict[str, Any]:
        return dict(self._find(step).metrics)

    def commit(self, step: int | None = None) -> str:
        """The commit holding ``step`` (default: the latest)."""
        return self._find(step).commit

    def restore(self, step: int | None = None, framework: str = "torch") -> Any:
        """The state saved at ``step`` (default: the latest), as ``git_theta.load`` gives it."""
        from git_theta import api

        return api.load(self.path, rev=self.commit(step), repo=self.repo_arg, framework=framework)

    # ------------------------------------------------------------------ writing

    def save(self, state: Any, step: int, metrics: dict[str, Any] | None = None) -> str:
        """Commit ``state`` as ``step`` with its ``metrics``; then drop what retention does
        not keep. Returns the commit id."""
        from git_theta import api

        if type(step) is not int or step < 0:
            raise UsageError(f"step must be a non-negative integer, not {step!r}")
        sha = api.save(
            state,
            self.path,
            repo=self.repo_arg,
            message=f"step {step}",
            branch=self.branch,
            metadata={"step": step, "metrics": metrics or {}},
        )
        self._retain()
        return sha

    def _kept(self, history: list[Step]) -> set[int]:
        if self.keep_last is None and self.keep_best is None and self.keep_every is None:
            return {s.step for s in history}
        kept: set[int] = set()
        if self.keep_last:
            kept |= {s.step for s in sorted(history, key=lambda s: s.step)[-self.keep_last :]}
        if self.keep_best:
            kept |= {s.step for s in self._ranked(history)[: self.keep_best]}
        if self.keep_every:
            kept |= {s.step for s in history if s.step % self.keep_every == 0}
        return kept

    def _retain(self) -> None:
        history = self._history()
        kept = self._kept(history)
        if kept == {s.step for s in history}:
            return
        from git_theta.gitio import git

        ref = f"refs/heads/{self.branch}"
        old = self.repo.git(["rev-parse", "--verify", ref]).stdout.decode().strip()
        saved = [commit for commit, meta in self._log() if type(meta.get("step")) is int]
        parent = self._parent(saved[0])  # what the branch grew from stays its base
        for item in history:
            if item.step not in kept:
                continue
            message = self.repo.git(["log", "-1", "--format=%B", item.commit]).stdout
            args = ["commit-tree", f"{item.commit}^{{tree}}", *(["-p", parent] if parent else [])]
            env = self._dates(item.commit)
            made = git.run([*args, "-F", "-"], self.repo.top, input=message, env=env)
            parent = made.stdout.decode().strip()
        if parent is None:
            return
        if self.repo.git(["update-ref", ref, parent, old], check=False).returncode != 0:
            raise GitError(f"`{self.branch}` moved while dropping old steps: save again")
        self.repo.git(["reflog", "expire", "--expire-unreachable=now", ref], check=False)

    def _parent(self, commit: str) -> str | None:
        proc = self.repo.git(["rev-parse", "--verify", "--quiet", f"{commit}^"], check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def _dates(self, commit: str) -> dict[str, str]:
        """The commit's author and committer, so a rewritten step keeps who and when."""
        fmt = "%an%x00%ae%x00%ad%x00%cn%x00%ce%x00%cd"
        out = self.repo.git(["log", "-1", f"--format={fmt}", "--date=raw", commit])
        an, ae, ad, cn, ce, cd = out.stdout.decode().rstrip("\n").split("\0")
        return {
            "GIT_AUTHOR_NAME": an,
            "GIT_AUTHOR_EMAIL": ae,
            "GIT_AUTHOR_DATE": ad,
            "GIT_COMMITTER_NAME": cn,
            "GIT_COMMITTER_EMAIL": ce,
            "GIT_COMMITTER_DATE": cd,
        }
