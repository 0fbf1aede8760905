"""The values the store hands out and takes: a run as read back (`RunRecord`) and how a run
ended (`RunEnd`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from runner.models import RunStatus, SkipReason, utcnow


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    job: str
    fire_key: str
    trigger: str
    attempt: int
    first_run_id: int | None
    status: str
    late: bool
    scheduled_at: datetime | None
    queued_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    heartbeat_at: datetime | None
    exit_code: int | None
    signal: int | None
    error: str | None
    host: str
    pid: int
    log_path: str | None
    params: dict[str, Any] | None
    paths: list[str] | None
    result: Any  # whatever JSON value the job returned
    pidns: str | None = None
    job_pid: int | None = None
    cgroup: str | None = None
    reason: str | None = None
    late_s: float | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.ended_at or utcnow()) - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["duration_s"] = self.duration_s
        return data


_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))


def record_of(row: sa.Row) -> RunRecord:
    """The run of a row. A first attempt stores no first_run_id (NULL: it is its own first run,
    written so since 2026-12-03; rows before name themselves): a record always names it."""
    values = {name: row._mapping[name] for name in _RUN_FIELDS}
    values["first_run_id"] = values["first_run_id"] or values["id"]
    return RunRecord(**values)


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run ended: what `Store.finish()` writes to its row, and what the spool keeps while
    the database is away.

    A run whose job ran has a log (`log_path`): its exit code, signal and result are written with
    it, and its last heartbeat is the end. A run that ended before its job started (skipped,
    stopped while queued, no log folder) keeps its last heartbeat. `reason` is written only when
    there is one, so a resumed retry keeps its `retry resumed`."""

    status: RunStatus
    ended_at: datetime
    error: str | None = None
    reason: SkipReason | None = None
    exit_code: int | None = None
    signal: int | None = None
    result: Any = None  # whatever JSON value the job returned
    log_path: str | None = None

    def columns(self) -> dict[str, Any]:
        """The run's columns to write."""
        values: dict[str, Any] = {"status": self.status.value, "ended_at": self.ended_at, "error": self.error}
        if self.reason is not None:
            values["reason"] = self.reason.value
        if self.log_path is not None:
            values.update(
                heartbeat_at=self.ended_at,
                exit_code=self.exit_code,
                signal=self.signal,
                result=self.result,
                log_path=self.log_path,
            )
        return values

    @classmethod
    def from_columns(cls, values: Mapping[str, Any]) -> RunEnd:
        """The inverse of columns() (the spool keeps columns, as older versions did)."""
        reason = values.get("reason")
        return cls(
            status=RunStatus(values["status"]),
            ended_at=values["ended_at"],
            error=values.get("error"),
            reason=SkipReason(reason) if reason else None,
            exit_code=values.get("exit_code"),
            signal=values.get("signal"),
            result=values.get("result"),
            log_path=values.get("log_path"),
        )


def as_utc(value: datetime) -> datetime:
    """A datetime the database gave back, as aware UTC (an aggregate may lose the column's type)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
