"""Every error expman raises on purpose.

Each error is one line a user can act on: what is wrong and how to fix it. Each kind has
its own exit code so that scripts can tell refusals apart; only ``cli.main`` turns
errors into output and exit codes.
"""

from __future__ import annotations


class ExpmanError(Exception):
    """Base class: a message for the user and the process exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ExpmanError):
    exit_code = 2


class ConfigError(ExpmanError):
    exit_code = 3


class RunFailedError(ExpmanError):
    """The run itself ended failed (non-zero exit, timeout, OOM)."""

    exit_code = 4


class RunCancelledError(ExpmanError):
    exit_code = 130


# --- git discipline: refused before anything is built or written -------------------


class NotARepositoryError(ExpmanError):
    exit_code = 10


class DirtyTreeError(ExpmanError):
    exit_code = 11


class UntrackedFilesError(ExpmanError):
    exit_code = 12


class WrongBranchError(ExpmanError):
    exit_code = 13


class UnknownRefError(ExpmanError):
    exit_code = 14


class UnreachableCommitError(ExpmanError):
    exit_code = 15


class NotPushedError(ExpmanError):
    exit_code = 16


class UnsupportedContentError(ExpmanError):
    """LFS pointers or submodules: the archive would not hold the real content."""

    exit_code = 17


class GitError(ExpmanError):
    """A git command failed unexpectedly; carries its stderr."""

    exit_code = 18

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"git {' '.join(argv)} failed (exit {returncode}): {detail}")
        self.returncode = returncode
        self.stderr = stderr


class IdentityError(ExpmanError):
    """git has no user name or email, so a commit expman makes for you (submit --set) cannot be made."""

    exit_code = 19


# --- execution ------------------------------------------------------------------------


class DockerUnavailableError(ExpmanError):
    exit_code = 20


class BuildError(ExpmanError):
    """The image build failed; the build log is kept for the record."""

    exit_code = 21

    def __init__(self, reason: str, build_log: str = "") -> None:
        super().__init__(reason)
        self.build_log = build_log


class LaunchError(ExpmanError):
    exit_code = 22


class UnsafeArchiveError(ExpmanError):
    exit_code = 23


# --- other machines -------------------------------------------------------------------


class RemoteError(ExpmanError):
    """An SSH host could not be reached, refused the login, or failed an operation."""

    exit_code = 24


class HostKeyError(RemoteError):
    """The host's key is unknown or differs from known_hosts: never connect."""

    exit_code = 25


class ConnectionLostError(RemoteError):
    """The link to a remote run dropped; the run itself goes on there."""

    exit_code = 26


class SlurmError(ExpmanError):
    """sbatch, squeue or scancel failed or are missing."""

    exit_code = 27


class QueueError(ExpmanError):
    """The job queue's database is unreachable, refused us, or the queue URL is wrong."""

    exit_code = 28


class StaleAttemptError(ExpmanError):
    """This worker's lease on a job was lost: a newer attempt owns the run now."""

    exit_code = 29


class CheckpointError(ExpmanError):
    """A snapshot of a run's checkpoint paths could not be taken or restored (over max_mb, a
    file that cannot be read or written)."""

    exit_code = 34


# --- looking at runs ----------------------------------------------------------------


class RunNotFoundError(ExpmanError):
    exit_code = 30


class AmbiguousRunError(ExpmanError):
    exit_code = 31


class RecordError(ExpmanError):
    """A run record could not be read or written."""

    exit_code = 32


class RunsIndexError(ExpmanError):
    """The runs index (a cache of every run's row) could not be read or written."""

    exit_code = 35


class DiskFullError(RecordError):
    """The filesystem of the runs root is full (or the user's quota is used up)."""

    exit_code = 33
