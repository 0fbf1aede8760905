"""catchup.plan(): which missed fires run late and which get a skipped row (pure values)."""

from __future__ import annotations

from datetime import UTC, datetime

from runner.catchup import plan
from runner.models import SkipReason, Trigger
from runner.settings import JobSettings
from runner.triggers import parse_schedule

HOURLY = (parse_schedule("cron 0 * * * *", "UTC"),)
NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def job(catchup_s: float) -> JobSettings:
    return JobSettings(name="tick", schedules=HOURLY, catchup_s=catchup_s)


def test_the_newest_miss_runs_late_older_ones_are_coalesced_or_beyond_the_window():
    planned = plan(job(2.5 * 3600), datetime(2026, 3, 10, 7, 0, tzinfo=UTC), NOW, Trigger.CRON)
    assert planned is not None and planned.runnable
    assert (planned.fire.kind, planned.fire.key, planned.fire.late) == ("cron", "2026-03-10T12:00:00Z", True)
    reasons = [(s.key[11:16], s.reason) for s in planned.skipped]
    assert reasons == [
        ("08:00", SkipReason.CATCHUP),
        ("09:00", SkipReason.CATCHUP),
        ("10:00", SkipReason.COALESCED),
        ("11:00", SkipReason.COALESCED),
    ]
    assert planned.downtime is not None and "and 4 earlier" in planned.downtime


def test_outside_the_window_nothing_runs_and_every_miss_gets_a_row():
    planned = plan(job(0), datetime(2026, 3, 10, 10, 0, tzinfo=UTC), NOW, Trigger.SCHEDULE)
    assert planned is not None and not planned.runnable
    assert [s.key for s in planned.skipped] == ["2026-03-10T11:00:00Z", "2026-03-10T12:00:00Z"]
    assert {s.reason for s in planned.skipped} == {SkipReason.CATCHUP}
    assert planned.fire.kind == "schedule"


def test_fires_due_after_the_scheduler_started_are_no_downtime():
    started = datetime(2026, 3, 10, 11, 59, tzinfo=UTC)
    planned = plan(job(0), datetime(2026, 3, 10, 11, 0, tzinfo=UTC), NOW, Trigger.SCHEDULE, started)
    assert planned is not None and planned.runnable and not planned.fire.late
    assert planned.skipped == () and planned.downtime is None


def test_nothing_missed_is_no_plan():
    assert plan(job(3600), datetime(2026, 3, 10, 12, 0, tzinfo=UTC), NOW, Trigger.CRON) is None
