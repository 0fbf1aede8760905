"""The run history's vocabularies as StrEnums (a leaf: a job process imports it without SQLAlchemy)."""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    LOST = "lost"
    SKIPPED = "skipped"

    @property
    def active(self) -> bool:
        return self in (RunStatus.QUEUED, RunStatus.RUNNING)


class SkipReason(enum.StrEnum):
    """Why a due fire did not run (runs.reason of a `skipped` row), or why a run stopped early."""

    OVERLAP = "overlap"  # overlap = skip and the previous run still ran
    QUEUE_FULL = "queue full"  # overlap = queue and max_queue fires were already waiting
    COALESCED = "coalesced"  # a newer fire of the job was waiting too: only the newest runs
    SHUTDOWN = "shutdown"  # due while the daemon was stopping
    CATCHUP = "beyond catch-up"  # too late to run: older than the job's catchup window
    RELOAD = "reload"  # its schedule no longer exists after a reload
    VANISHED = "vanished"  # a file event whose files were all deleted before the run
    RETRY_STOPPED = "retry stopped"  # a retry cut short by a stop: resumed on the next daemon start
    RETRY_RESUMED = "retry resumed"  # ... and taken up again (by the daemon whose id is in the error)
    BROKEN = "broken"  # a daemon's fire of a job whose code did not load (status failed, not skipped)


class Trigger(enum.StrEnum):
    """What fired a run (runs.trigger, `Fire.kind`)."""

    MANUAL = "manual"
    CRON = "cron"
    SCHEDULE = "schedule"
    FILE = "file"


class ClaimState(enum.StrEnum):
    CLAIMED = "claimed"  # handed to the run whose fire key the row holds
    DONE = "done"  # processed: never handed out again
    PENDING = "pending"  # its run failed before finishing it: may be claimed again
    FAILED = "failed"  # failed MAX_FILE_ATTEMPTS times: left alone, reported
    VANISHED = "vanished"  # deleted after it was claimed, before a run could open it


class NoticeEvent(enum.StrEnum):
    """What a notice (notices.event) was about: a notification, or a dead-man ping that failed."""

    FAILURE = "failure"  # a run ended failed, timed out or killed (after its retries)
    RECOVERY = "recovery"  # the first success after a failure that was notified
    MISSED = "missed"  # scheduled fires nobody ran while no scheduler was up
    PING = "ping"  # a dead-man ping (start, success or fail) that did not arrive
