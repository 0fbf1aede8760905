"""The run-history schema as SQLAlchemy Core tables (Core keeps `runner run` start-up cheap)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

# The enums live in a leaf module (a job process imports them without SQLAlchemy); re-exported here.
from runner.enums import ClaimState as ClaimState
from runner.enums import RunStatus as RunStatus
from runner.enums import SkipReason as SkipReason
from runner.enums import Trigger as Trigger

SCHEMA_REVISION = "0014"  # the newest Alembic revision; tests keep the two equal

ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


def naive_utc(value: datetime) -> datetime:
    """An aware datetime as naive UTC, the way time columns store it; a naive one is refused."""
    if value.tzinfo is UTC:  # utcnow()'s, and most others
        return value.replace(tzinfo=None)
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None)


def _sqlite_text(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME text (six digits of microseconds) in one C call, where its
    processor formats it in Python (a tenth of a fire claim's client CPU)."""
    return None if value is None else naive_utc(value).isoformat(" ", "microseconds")


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes in Python, naive UTC in the database (SQLite has no time zones)."""

    impl = sa.DateTime
    cache_ok = True

    def bind_processor(self, dialect):
        if dialect.name == "sqlite":
            return _sqlite_text  # what process_bind_param and SQLite's DATETIME make of it, faster
        return super().bind_processor(dialect)

    def process_bind_param(self, value, dialect):
        return None if value is None else naive_utc(value)

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None


_clock_offset = timedelta(0)  # this host's clock minus the database's (see set_clock_offset)


def utcnow() -> datetime:
    """Now, UTC: this host's clock, or in a daemon whose host clock is off, the database's."""
    return datetime.now(UTC) - _clock_offset


def set_clock_offset(offset: timedelta) -> None:
    """A daemon whose host clock is `offset` ahead of the database's (measured when it starts)
    schedules, catches up and times its runs on the database's clock: the same instants as the
    other hosts. Set before the fork server starts, so its workers inherit it."""
    global _clock_offset
    _clock_offset = offset


def clock_offset() -> timedelta:
    return _clock_offset


metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("fire_key", sa.String(400), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    # A retry's first attempt; NULL in a first attempt, which is its own (rows written before
    # 2026-12-03 name themselves): a first attempt's claim then has no foreign key to check.
    sa.Column("first_run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("late", sa.Boolean, nullable=False, default=False),
    sa.Column("scheduled_at", UTCDateTime, nullable=True),
    sa.Column("queued_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("heartbeat_at", UTCDateTime, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("signal", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("log_path", sa.Text, nullable=True),
    sa.Column("params", sa.JSON(none_as_null=True), nullable=True),  # none: SQL NULL, not JSON 'null'
    sa.Column("paths", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("pidns", sa.String(80), nullable=True),  # boot id + PID namespace of the supervisor
    sa.Column("job_pid", sa.Integer, nullable=True),  # the job process (and its process group)
    sa.Column("cgroup", sa.Text, nullable=True),  # the run's cgroup, when one could be made
    sa.Column("reason", sa.String(32), nullable=True),  # a SkipReason
    sa.Column("late_s", sa.Float, nullable=True),  # start minus when it was due (scheduled + jitter)
    # A fire is claimed by its first attempt; retries share its key with attempt > 1. Migration
    # 0001 creates this index partial on both SQLite and PostgreSQL; naming postgresql_where here
    # too would make every `runner run` import the PostgreSQL dialect (25 ms) just to check it.
    sa.Index("uq_runs_job_fire_key", "job", "fire_key", unique=True, sqlite_where=sa.text("attempt = 1")),
    # ... and each retry of a fire once: survivors that all see a lost run retry it once between them.
    sa.Index(
        "uq_runs_job_fire_key_retry",
        "job",
        "fire_key",
        "attempt",
        unique=True,
        sqlite_where=sa.text("attempt > 1"),
    ),
    sa.Index("ix_runs_job_id", "job", "id"),
    sa.Index("ix_runs_status", "status"),
    sa.Index("ix_runs_reason_queued_at", "reason", "queued_at"),
    sa.Index("ix_runs_queued_at", "queued_at"),  # reports read one period (jobs/weekly_report.py)
    sa.Index("ix_runs_first_run_id", "first_run_id"),  # prune removes a fire's attempts together
)

job_state = sa.Table(
    "job_state",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.JSON, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

job_schema = sa.Table(  # which version of its own tables each job module created (runner.jobtables)
    "job_schema",
    metadata,
    sa.Column("owner", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

daemons = sa.Table(
    "daemons",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("config_path", sa.Text, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("stopped_at", UTCDateTime, nullable=True),
    sa.Column("queues", sa.JSON, nullable=True),  # per job: fires waiting in this daemon (status)
    sa.Column("notes", sa.JSON, nullable=True),  # settings a reload could not apply, one line each
    sa.Column("code_version", sa.String(80), nullable=True),  # runner.codeversion of its job code
    sa.Column("code_loaded_at", UTCDateTime, nullable=True),  # when it (re)loaded that code
    sa.Column("broken", sa.JSON, nullable=True),  # configured jobs whose code did not load: {job: why}
    sa.Column("host_time", UTCDateTime, nullable=True),  # the host's clock at its last beat (offset)
    sa.Column("fired", sa.JSON, nullable=True),  # per job: runs it started in the last hour (status)
)

schema_upgrades = (
    sa.Table(  # which runner migrated the schema, so an older one can name the version to install
        "schema_upgrades",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("runner_version", sa.String(40), nullable=False),
        sa.Column("upgraded_at", UTCDateTime, nullable=False),
    )
)


file_claims = sa.Table(
    "file_claims",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("fire_key", sa.String(400), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
    sa.Column("done_at", UTCDateTime, nullable=True),
    sa.Column("pidns", sa.String(80), nullable=True),
    sa.UniqueConstraint("job", "path", "size", "mtime_ns", name="uq_file_claims_version"),
    sa.Index("ix_file_claims_job_fire_key", "job", "fire_key"),
    sa.Index("ix_file_claims_state", "state"),
)

notices = sa.Table(  # notifications and dead-man pings we tried to deliver (runner.notify, runner.pings)
    "notices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("run_id", sa.Integer, nullable=True),  # None: a missed fire (no run)
    sa.Column("event", sa.String(16), nullable=False),  # a NoticeEvent
    sa.Column("channel", sa.String(200), nullable=False),  # a [notify:NAME] name, or "ping"
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("error", sa.Text, nullable=True),  # None: delivered
    sa.Index("ix_notices_job_channel_id", "job", "channel", "id"),
    sa.Index("ix_notices_created_at", "created_at"),
)

# Metrics: runs folded into per-(job, status) totals once they can no longer change, so a scrape
# reads only the runs after the watermark (runner/store/totals.py).
run_totals = sa.Table(
    "run_totals",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("runs", sa.BigInteger, nullable=False),
    sa.Column("timed", sa.BigInteger, nullable=False),  # runs with a start and an end
    sa.Column("seconds", sa.Float, nullable=False),  # their durations, summed
    sa.Column("buckets", sa.JSON, nullable=False),  # how many took at most each bound (cumulative)
    sa.Column("last_ended_at", UTCDateTime, nullable=True),
)

run_totals_mark = sa.Table(
    "run_totals_mark",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # one row: 1
    sa.Column("through_id", sa.BigInteger, nullable=False),  # runs up to this id are in run_totals
    sa.Column("bounds", sa.JSON, nullable=False),  # the bucket bounds the totals were counted with
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
