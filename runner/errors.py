"""The errors a user can cause, each knowing the exit code `runner` ends with."""

from __future__ import annotations

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_STARTED = 3
EXIT_DATABASE_BUSY = 4
EXIT_STORAGE = 5


class RunnerError(Exception):
    """Base class: a problem to report in one line, never with a traceback."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(RunnerError):
    """The INI file is missing, malformed or holds a value we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        path: object = None,
        section: str | None = None,
        key: str | None = None,
        value: str | None = None,
    ) -> None:
        where = [str(path)] if path else []
        if section and key:
            where.append(f"[{section}] {key} = {value!r}" if value is not None else f"[{section}] {key}")
        elif section:
            where.append(f"[{section}]")
        super().__init__(": ".join([*where, message]))


class UnknownJob(RunnerError):
    """No job of that name is configured or discovered."""


class ParamError(RunnerError):
    """A job parameter is unknown or its value does not convert to the declared type."""


class BrokenJob(RunnerError):
    """The module that defines the job failed to import."""


class AlreadyRan(RunnerError):
    """The same fire (job, fire key) was already claimed by another run."""

    exit_code = EXIT_NOT_STARTED


class OverlapSkipped(RunnerError):
    """overlap = skip and another run of the job holds the lease."""

    exit_code = EXIT_NOT_STARTED


class FilesVanished(RunnerError):
    """Every file of a file event was deleted before its run could open it."""

    exit_code = EXIT_NOT_STARTED


class Stopped(RunnerError):
    """The supervisor was told to stop (SIGTERM, Ctrl-C) before the job could start."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class DatabaseError(RunnerError):
    """The configured database URL cannot be used: not a URL, or its driver is missing."""


class StorageError(RunnerError):
    """The database or the disk failed us: unreachable, read-only, full, or replaced."""

    exit_code = EXIT_STORAGE


class SchemaTooNew(StorageError):
    """The database was migrated by a newer runner: this one refuses it and writes nothing."""


class DatabaseBusy(StorageError):
    """Another process held the database's write lock for longer than `lock_timeout`."""

    exit_code = EXIT_DATABASE_BUSY


class NotClaimed(StorageError):
    """The database failed before the fire was claimed: nothing ran and nothing was recorded, so
    the fire is still free (the daemon runs it by its catch-up rule once the database is back)."""

    def __init__(self, cause: StorageError) -> None:
        super().__init__(cause.message)
        self.exit_code = cause.exit_code
