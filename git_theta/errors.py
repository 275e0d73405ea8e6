"""The one exception hierarchy of git-theta.

Library code raises these; only ``git_theta.cli`` turns them into a message and an exit
code. Every message says what went wrong and, where there is one, the command that fixes it.
"""

from __future__ import annotations


class ThetaError(Exception):
    """Base class of every error git-theta raises on purpose."""

    exit_code = 1

    def __str__(self) -> str:
        # one line, whatever text from a checkpoint or another tool the message quotes
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class FileError(ThetaError):
    """An error about one file of the work tree: its path, then the error (``cause``), whose
    exit code it keeps."""

    def __init__(self, path: str, cause: ThetaError) -> None:
        self.path = path
        self.cause = cause
        self.exit_code = cause.exit_code
        super().__init__(f"{path}: {cause}")


class UsageError(ThetaError, ValueError):
    """Raised when a command is called with arguments that cannot work."""

    exit_code = 2


class NotACheckpointError(ThetaError, ValueError):
    """Raised when a file is not a checkpoint in any format git-theta can read.

    Also raised for truncated or corrupt checkpoints: ``reason`` says what is wrong.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: not a checkpoint git-theta can read: {reason}")


class UnsafeCheckpointError(ThetaError, ValueError):
    """Raised when a pickle inside a checkpoint asks for code that git-theta will not run."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        super().__init__(
            f"{path}: refused to load: its pickle asks for `{name}`, which could run code; "
            "git-theta loads only tensors and plain values"
        )


class UnsupportedError(ThetaError, ValueError):
    """Raised for a checkpoint feature git-theta cannot store faithfully (e.g. a dtype)."""


class ManifestError(ThetaError, ValueError):
    """Raised when a manifest cannot be parsed or has a schema version this release does not know."""


class ObjectMissingError(ThetaError, FileNotFoundError):
    """Raised when an object a manifest needs is not in the local object store."""

    def __init__(self, missing: dict[str, list[str]], hint: str = "") -> None:
        self.missing = missing  # oid -> tensor names that need it
        first = next(iter(missing.items()))
        names = ", ".join(f"`{n}`" for n in first[1][:3])
        more = f" (and {len(missing) - 1} more objects)" if len(missing) > 1 else ""
        fix = hint or "run `git theta checkout`, which fetches missing objects from the remote"
        super().__init__(
            f"object {first[0][:12]}… for tensor {names} is not in the local object store{more}: {fix}"
        )


class CorruptObjectError(ThetaError, ValueError):
    """Raised when a stored object's bytes do not match its oid or cannot be decoded."""


class HashMismatchError(ThetaError, ValueError):
    """Raised when a rebuilt tensor's identity hash differs from the one its manifest records."""


class RemoteError(ThetaError, ConnectionError):
    """Raised when objects cannot be uploaded to or downloaded from a remote's LFS server."""

    def __init__(
        self, remote: str, url: str, direction: str, tensors: list[str], reason: BaseException
    ) -> None:
        self.remote = remote
        self.url = url
        self.tensors = tensors
        shown = ", ".join(f"`{t}`" for t in tensors[:3])
        more = f" and {len(tensors) - 3} more" if len(tensors) > 3 else ""
        local = _local_cause(str(reason))
        if local and direction != "upload":  # the server is fine: this machine's disk is not
            what = f"could not download objects for tensors {shown}{more} from remote `{remote}`"
            super().__init__(f"{what}: {local}, then run `git theta checkout`")
            return
        if direction == "upload":
            fix = "check that the LFS server is reachable and accepts uploads, then push again"
            what = (
                f"could not upload objects for tensors {shown}{more} to remote `{remote}` ({url})"
            )
        else:
            fix = (
                f"check that the LFS server is reachable and has them (`git theta fetch {remote}`), "
                "then run `git theta checkout`"
            )
            what = f"could not download objects for tensors {shown}{more} from remote `{remote}` ({url})"
        super().__init__(f"{what}: {reason}: {fix}")


class HookError(ThetaError, RuntimeError):
    """Raised when git-theta's pre-push hook cannot be installed without losing another."""


class GitError(ThetaError, RuntimeError):
    """Raised when a git or git-lfs command fails; ``stderr`` holds what it said."""

    def __init__(self, message: str, stderr: str = "") -> None:
        self.stderr = stderr
        detail = "; ".join(ln.strip() for ln in stderr.strip().splitlines() if ln.strip())[-600:]
        super().__init__(f"{message}: {detail}" if detail else message)


class GitLfsMissingError(ThetaError, RuntimeError):
    """Raised when the ``git lfs`` command is not available."""

    def __init__(self) -> None:
        super().__init__(
            "git-lfs is not installed (`git lfs version` failed): install it "
            "(e.g. `apt-get install git-lfs`) and run `git theta install` again"
        )


class NotARepositoryError(ThetaError, RuntimeError):
    """Raised when a command that needs a git repository runs outside one."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is not inside a git repository: run `git init` first")


_FREE_SOME = "free some (`git theta gc` deletes objects nothing refers to)"


def _local_cause(text: str) -> str:
    """What git-lfs's words say about this machine's disk, when they say it is full or
    read-only ("" otherwise)."""
    lowered = text.lower()
    if "no space left on device" in lowered or "disk quota exceeded" in lowered:
        return f"no space left on the device holding the repository: {_FREE_SOME}"
    if "read-only file system" in lowered:
        return "the repository's LFS directory is on a read-only file system: make it writable"
    return ""


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error that reached a command (a full disk, a
    read-only or unwritable store): what is wrong, where, and what to do."""
    import errno

    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}: {_FREE_SOME} and run the command again"
    if exc.errno == errno.EROFS:
        return f"read-only file system{where}: make it writable and run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied{where}: run as a user who may write there, or fix its permissions"
        )
    return f"{type(exc).__name__}: {exc.strerror or exc}{where}"
