"""Schedule parsing and DST behaviour (pure functions: no database, no processes)."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from runner.catchup import fires_between, latest_fire
from runner.triggers import CronSchedule, fire_key, parse_schedule


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local_fires(expr: str, tz: str, start_utc: str, count: int) -> list[tuple[str, str | None]]:
    schedule = parse_schedule(expr, tz)
    return [
        (f.at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z"), f.note)
        for f in islice(schedule.fires_after(utc(start_utc)), count)
    ]


def test_berlin_spring_gap_fixed_time_fires_once_at_the_end_of_the_gap():
    fires = local_fires("cron 30 2 * * *", "Europe/Berlin", "2026-03-28T00:00", 3)
    assert [f[0] for f in fires] == [
        "2026-03-28 02:30 CET",
        "2026-03-29 03:00 CEST",  # 02:30 does not exist; cronie runs it right after the gap
        "2026-03-30 02:30 CEST",
    ]
    assert "does not exist" in fires[1][1]


def test_berlin_autumn_fold_fixed_time_fires_once_at_first_occurrence():
    schedule = parse_schedule("cron 30 2 * * *", "Europe/Berlin")
    fires = list(islice(schedule.fires_after(utc("2026-10-24T12:00")), 2))
    assert [fire_key(f.at) for f in fires] == ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    assert "occurs twice" in fires[0].note


def test_several_gap_times_of_one_job_merge_into_one_fire():
    fires = local_fires("cron 0,15,30 2 * * *", "Europe/Berlin", "2026-03-29T00:00", 2)
    assert [f[0] for f in fires] == ["2026-03-29 03:00 CEST", "2026-03-30 02:00 CEST"]


def test_new_york_dates():
    spring = local_fires("cron 30 2 * * *", "America/New_York", "2026-03-07T12:00", 2)
    assert [f[0] for f in spring] == ["2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT"]
    autumn = parse_schedule("cron 30 1 * * *", "America/New_York")
    keys = [fire_key(f.at) for f in islice(autumn.fires_after(utc("2026-11-01T00:00")), 2)]
    assert keys == ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]


@pytest.mark.parametrize(
    ("tz", "start", "end"),
    [
        ("Europe/Berlin", "2026-03-28T22:00", "2026-03-29T04:00"),
        ("Europe/Berlin", "2026-10-24T22:00", "2026-10-25T04:00"),
        ("America/New_York", "2026-03-08T04:00", "2026-03-08T10:00"),
        ("America/New_York", "2026-11-01T03:00", "2026-11-01T09:00"),
    ],
)
def test_wildcard_hour_jobs_keep_firing_by_elapsed_time(tz, start, end):
    hourly = parse_schedule("cron 0 * * * *", tz)
    fires = fires_between((hourly,), utc(start), utc(end))
    gaps = {(b - a).total_seconds() for a, b in pairwise(fires)}
    assert gaps == {3600.0}
    assert len(fires) == 6
    quarter = parse_schedule("*/15 * * * *", tz)
    fires = fires_between((quarter,), utc(start), utc(end))
    assert {(b - a).total_seconds() for a, b in pairwise(fires)} == {900.0}
    assert len(fires) == 24


def test_macros_names_ranges_steps_and_vixie_day_rule():
    assert parse_schedule("@daily", "UTC").text == "0 0 * * *"
    weekday = parse_schedule("cron 0 7 * * mon-fri", "UTC")
    assert weekday.weekdays == frozenset({1, 2, 3, 4, 5})
    assert parse_schedule("cron 0 0 * * 7", "UTC").weekdays == frozenset({0})
    assert parse_schedule("cron */20 0 * jan,jul *", "UTC").minutes == (0, 20, 40)
    # both day fields restricted: either matches (the 1st of the month OR a Monday)
    either = parse_schedule("cron 0 0 1 * mon", "UTC")
    days = [f.at.date().isoformat() for f in islice(either.fires_after(utc("2026-11-25T00:00")), 3)]
    assert days == ["2026-11-30", "2026-12-01", "2026-12-07"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("cron 0 7 * * * *", "expected 5 fields"),
        ("@reboot", "@reboot"),
        ("cron 0 24 * * *", "out of range 0-23"),
        ("cron 5-1 * * * *", "backwards"),
        ("cron */0 * * * *", "step"),
        ("cron 0 0 * foo *", "not a number"),
        ("every ten", "expected an interval"),
        ("at tomorrow", "not a date"),
        ("whenever", "expected 'cron"),
    ],
)
def test_bad_schedules_say_what_is_wrong(line, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(line, "UTC")


def test_interval_is_aligned_so_every_daemon_computes_the_same_fire_keys():
    every = parse_schedule("every 15m", "UTC")
    assert every.next_after(utc("2026-11-26T10:07:13")) == utc("2026-11-26T10:15:00")
    started = parse_schedule("every 1h start 2026-01-01 00:30", "Europe/Berlin")
    assert started.next_after(utc("2026-06-01T10:00")) == utc("2026-06-01T10:30")


def test_at_schedule_fires_once():
    once = parse_schedule("at 2026-12-01 09:00", "Europe/Berlin")
    assert once.next_after(utc("2026-11-01T00:00")) == utc("2026-12-01T08:00")
    assert once.next_after(utc("2026-12-01T08:00")) is None


def test_latest_fire_finds_a_cron_lines_own_minute():
    minutely = parse_schedule("* * * * *", "UTC")
    assert latest_fire((minutely,), utc("2026-11-26T10:07:13"), 600) == utc("2026-11-26T10:07:00")
    daily = parse_schedule("cron 0 7 * * *", "UTC")
    assert latest_fire((daily,), utc("2026-11-26T10:07:13"), 600) is None


def test_descriptions_are_plain_language():
    assert parse_schedule("cron 0 7 * * mon", "UTC").describe().startswith("at 07:00, on Monday")
    assert parse_schedule("*/15 * * * *", "UTC").describe().startswith("every 15 minutes")
    assert isinstance(parse_schedule("@hourly", "UTC"), CronSchedule)
