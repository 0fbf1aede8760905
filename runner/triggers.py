"""Schedule strings from the INI -> frozen trigger values, and their DST-correct fire times.

    schedule = cron 0 7 * * mon        five fields, names, ranges, steps; @hourly @daily ...
    schedule = every 15m               an interval, aligned to `start` (default: the Unix epoch)
    schedule = at 2026-12-01 09:00     once

The daemon (via an APScheduler trigger), the crontab writer and `runner next` all read these values.
Daylight saving time follows Vixie cron / cronie: a fixed-time job (no '*' in its minute or hour
field) whose local time falls into the spring gap fires once at the first instant after the gap; a
local time that occurs twice fires at its first occurrence only; a job with '*' in its minute or
hour field fires by elapsed time, at every wall-clock time that exists. Times are UTC inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runner.durations import DurationTooLong, format_duration, parse_duration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SEARCH_DAYS = 366 * 8  # a cron expression that never fires (Feb 30) ends the search here
# `at` and `every ... start` dates: far enough from datetime's limits (year 1 and 9999) that an
# interval, jitter or catch-up window (each at most 366 days) added or taken away never overflows.
FIRST_YEAR = 1900
LAST_YEAR = 9990
MIN_INTERVAL_S = 1.0  # shortest `every`: a fire per second is already a busy daemon

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
DAY_WORDS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
MONTH_WORDS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
# name, low, high, names (index 0 = low)
FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, MONTH_NAMES),
    ("day of week", 0, 7, DAY_NAMES),
)


@lru_cache(maxsize=64)
def zone(name: str) -> tzinfo:
    """A timezone by IANA name; ValueError with a clear message when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}; expected an IANA name like Europe/Berlin") from None


def fire_key(scheduled: datetime) -> str:
    """The idempotency key of a scheduled fire: its instant in UTC."""
    moment = scheduled.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class FireTime:
    at: datetime  # UTC
    note: str | None = None  # set when DST moved or merged this fire


@dataclass(frozen=True, slots=True)
class CronSchedule:
    text: str  # the five fields as configured (macros expanded)
    timezone: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_star: bool
    weekday_star: bool
    wildcard: bool  # '*' in the minute or hour field: fires by elapsed time through DST

    kind = "cron"

    def __str__(self) -> str:
        return f"cron {self.text}"

    def next_after(self, after: datetime) -> datetime | None:
        fire = next(self.fires_after(after), None)
        return fire.at if fire else None

    def fires_after(self, after: datetime) -> Iterator[FireTime]:
        tz = zone(self.timezone)
        after = after.astimezone(UTC)
        # Start a day early: around a fold, a local day's fires can lie before `after`'s local day.
        day = after.astimezone(tz).date() - timedelta(days=1)
        for _ in range(MAX_SEARCH_DAYS):
            if self._runs_on(day):
                for fire in self._day_fires(day, tz, after):
                    if fire.at > after:
                        yield fire
            day += timedelta(days=1)

    def _runs_on(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.isoweekday() % 7) in self.weekdays
        if self.day_star or self.weekday_star:
            return in_days and in_weekdays
        return in_days or in_weekdays  # Vixie: both restricted means either matches

    def _day_fires(self, day: date, tz: tzinfo, after: datetime) -> list[FireTime]:
        start = datetime.combine(day, time(0), tz)
        end = datetime.combine(day + timedelta(days=1), time(0), tz)
        hours = self.hours
        local_after = after.astimezone(tz)
        if local_after.date() == day:  # skip hours long past (keep one for a fold)
            hours = tuple(h for h in hours if h >= local_after.hour - 1)
        if start.utcoffset() == end.utcoffset() and _no_transition(start, end):
            offset = start.utcoffset()
            return [
                FireTime((datetime.combine(day, time(h, m)) - offset).replace(tzinfo=UTC))
                for h in hours
                for m in self.minutes
            ]
        fires: dict[datetime, str | None] = {}
        for h in hours:
            for m in self.minutes:
                wall = datetime.combine(day, time(h, m))
                for at, note in _resolve_wall_time(wall, tz, self.wildcard):
                    fires.setdefault(at, note)
        return [FireTime(at, note) for at, note in sorted(fires.items())]

    def describe(self) -> str:
        return describe_cron(self)


def _no_transition(start: datetime, end: datetime) -> bool:
    middle = start + (end - start) / 2
    return middle.astimezone(start.tzinfo).utcoffset() == start.utcoffset()


def _resolve_wall_time(wall: datetime, tz: tzinfo, wildcard: bool) -> list[tuple[datetime, str | None]]:
    """A local wall-clock time -> the UTC instants it fires at, per the DST policy."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    exists = first.astimezone(tz).replace(tzinfo=None) == wall
    if exists and first == second:
        return [(first, None)]
    label = f"{wall:%H:%M}"
    if exists:  # the wall time occurs twice (autumn)
        later = min(first, second), max(first, second)
        if wildcard:
            return [(later[0], None), (later[1], f"{label} occurs twice (DST ends): fires at both")]
        return [(later[0], f"{label} occurs twice (DST ends): fires once, at the first")]
    if wildcard:  # elapsed-time jobs simply have no fire at a wall time that does not exist
        return []
    after_gap = _first_instant_after(wall, tz, min(first, second), max(first, second))
    shown = after_gap.astimezone(tz)
    return [(after_gap, f"{label} does not exist (DST starts): moved to {shown:%H:%M}")]


def _first_instant_after(wall: datetime, tz: tzinfo, low: datetime, high: datetime) -> datetime:
    """The first UTC instant whose local time is later than `wall` (which lies in a gap)."""
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) / 2
        if mid.astimezone(tz).replace(tzinfo=None) > wall:
            high = mid
        else:
            low = mid
    return high.replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class IntervalSchedule:
    text: str
    every_s: float
    start: datetime  # UTC; fires at start + k * every

    kind = "every"

    def __str__(self) -> str:
        return f"every {self.text}"

    def next_after(self, after: datetime) -> datetime | None:
        after = after.astimezone(UTC)
        if after < self.start:
            return self.start
        elapsed = (after - self.start).total_seconds()
        steps = int(elapsed // self.every_s) + 1
        fire = self.start + timedelta(seconds=steps * self.every_s)
        while fire <= after:  # float rounding
            steps += 1
            fire = self.start + timedelta(seconds=steps * self.every_s)
        return fire

    def fires_after(self, after: datetime) -> Iterator[FireTime]:
        while (at := self.next_after(after)) is not None:
            yield FireTime(at)
            after = at

    def describe(self) -> str:
        return f"every {format_duration(self.every_s)}" + (
            f", counted from {self.start:%Y-%m-%d %H:%M:%S} UTC" if self.start != EPOCH else ""
        )


@dataclass(frozen=True, slots=True)
class AtSchedule:
    text: str
    at: datetime  # UTC
    note: str | None = None

    kind = "at"

    def __str__(self) -> str:
        return f"at {self.text}"

    def next_after(self, after: datetime) -> datetime | None:
        return self.at if self.at > after else None

    def fires_after(self, after: datetime) -> Iterator[FireTime]:
        if self.at > after:
            yield FireTime(self.at, self.note)

    def describe(self) -> str:
        return f"once, at {self.text}"


Schedule = CronSchedule | IntervalSchedule | AtSchedule


class ScheduleError(ValueError):
    """A line of a `schedule =` value that is not a schedule: str() says why, `line` is the line."""

    def __init__(self, problem: str, line: str) -> None:
        super().__init__(problem)
        self.line = line


def parse_schedules(text: str, timezone: str) -> tuple[Schedule, ...]:
    """Every non-empty line of a `schedule =` value; ScheduleError names the line and what is wrong."""
    schedules = []
    for line in text.splitlines():
        if line := line.strip():
            try:
                schedules.append(parse_schedule(line, timezone))
            except ValueError as exc:
                raise ScheduleError(str(exc), line) from None
    return tuple(schedules)


def parse_schedule(line: str, timezone: str) -> Schedule:
    line = line.strip()
    word, _, rest = line.partition(" ")
    word = word.lower()
    if word == "cron":
        return parse_cron(rest.strip(), timezone)
    if word == "every":
        return _parse_every(rest.strip(), timezone)
    if word == "at":
        return _parse_at(rest.strip(), timezone)
    if line.startswith("@") or line[:1].isdigit() or line.startswith("*"):
        return parse_cron(line, timezone)
    raise ValueError("expected 'cron M H DoM Mon DoW', 'every 15m' or 'at 2026-12-01 09:00'")


def parse_cron(expression: str, timezone: str) -> CronSchedule:
    zone(timezone)
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise ValueError(
                "@reboot is not a schedule here: `runner crontab install` adds an @reboot "
                "line that runs missed fires, and the daemon catches up when it starts"
            )
        if text.lower() not in MACROS:
            raise ValueError(f"unknown macro {text!r}; expected one of {', '.join(MACROS)}")
        text = MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        hint = " (seconds or years are not supported)" if len(parts) in (6, 7) else ""
        raise ValueError(f"expected 5 fields: minute hour day-of-month month day-of-week{hint}")
    values = [_parse_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(0 if d == 7 else d for d in values[4])
    return CronSchedule(
        text=text,
        timezone=timezone,
        minutes=tuple(sorted(values[0])),
        hours=tuple(sorted(values[1])),
        days=frozenset(values[2]),
        months=frozenset(values[3]),
        weekdays=weekdays,
        day_star=parts[2].startswith("*"),
        weekday_star=parts[4].startswith("*"),
        wildcard=parts[0].startswith("*") or parts[1].startswith("*"),
    )


def _parse_field(text: str, name: str, low: int, high: int, names: list[str] | None) -> set[int]:
    result: set[int] = set()

    def number(token: str) -> int:
        token = token.lower()
        if names and token[:3] in names and token.isalpha():
            index = names.index(token[:3])
            return index + (1 if name == "month" else 0)
        if not token.isdigit():
            raise ValueError(f"{name} field: {token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise ValueError(f"{name} field: {value} is out of range {low}-{high}")
        return value

    for item in text.split(","):
        if not item:
            raise ValueError(f"{name} field: empty list item in {text!r}")
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{name} field: step {step_text!r} must be a whole number > 0")
            step = int(step_text)
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise ValueError(f"{name} field: range {body} runs backwards")
        else:
            first = number(body)
            last = high if slash else first
        result.update(range(first, last + 1, step))
    return result


def _parse_every(text: str, timezone: str) -> IntervalSchedule:
    interval, _, start_text = text.partition(" start ")
    try:
        every_s = parse_duration(interval)
    except DurationTooLong as exc:
        raise ValueError(f"the interval {exc}") from None
    except ValueError:
        raise ValueError(
            "expected an interval like 'every 15m' or 'every 1h start 2026-01-01 00:30'"
        ) from None
    if every_s < MIN_INTERVAL_S:
        raise ValueError(f"the interval must be at least {format_duration(MIN_INTERVAL_S)}")
    start = EPOCH
    if start_text.strip():
        start = _parse_local(start_text.strip(), timezone)[0]
    return IntervalSchedule(text=text, every_s=every_s, start=start)


def _parse_at(text: str, timezone: str) -> AtSchedule:
    at, note = _parse_local(text, timezone)
    return AtSchedule(text=text, at=at, note=note)


def _parse_local(text: str, timezone: str) -> tuple[datetime, str | None]:
    tz = zone(timezone)
    try:
        wall = datetime.fromisoformat(text.replace("T", " "))
    except ValueError:
        raise ValueError(f"{text!r} is not a date and time like 2026-12-01 09:00") from None
    if not FIRST_YEAR <= wall.year <= LAST_YEAR:
        raise ValueError(f"{text!r}: the year must be from {FIRST_YEAR} to {LAST_YEAR}")
    if wall.tzinfo is not None:
        return wall.astimezone(UTC), None
    at, note = _resolve_wall_time(wall, tz, wildcard=False)[0]
    return at, note


# --- plain-language descriptions ----------------------------------------------------------------


def _list(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def _step(values: tuple[int, ...] | frozenset[int], low: int, high: int) -> int | None:
    ordered = sorted(values)
    if len(ordered) < 2 or ordered[0] != low:
        return None
    step = ordered[1] - ordered[0]
    expected = list(range(low, high + 1, step))
    return step if ordered == expected else None


def describe_cron(cron: CronSchedule) -> str:
    minutes, hours = cron.minutes, cron.hours
    all_hours = len(hours) == 24
    if len(minutes) == 60 and all_hours:
        when = "every minute"
    elif len(minutes) == 60:
        when = f"every minute during hour {_list([str(h) for h in hours])}"
    elif all_hours and len(minutes) == 1:
        when = "every hour" + (f" at minute {minutes[0]}" if minutes[0] else " on the hour")
    elif all_hours and (step := _step(minutes, 0, 59)):
        when = f"every {step} minutes"
    elif len(hours) * len(minutes) <= 6:
        when = "at " + _list([f"{h:02d}:{m:02d}" for h in hours for m in minutes])
    elif (step := _step(hours, 0, 23)) and len(minutes) == 1:
        when = f"every {step} hours at minute {minutes[0]}"
    else:
        when = f"at minute {_list([str(m) for m in minutes])} of hour {_list([str(h) for h in hours])}"
    day_text = _list([str(d) for d in sorted(cron.days)])
    weekday_text = _list([DAY_WORDS[d] for d in sorted(cron.weekdays)])
    if cron.day_star and cron.weekday_star:
        days = "every day" if len(cron.days) == 31 else f"on day {day_text} of the month"
        if len(cron.weekdays) < 7:
            days = f"on {weekday_text}" if len(cron.days) == 31 else f"{days} if it is a {weekday_text}"
    elif cron.day_star:
        days = (
            f"on {weekday_text}" if len(cron.days) == 31 else f"on day {day_text} if it is a {weekday_text}"
        )
    elif cron.weekday_star:
        days = (
            f"on day {day_text} of the month"
            if len(cron.weekdays) == 7
            else f"on day {day_text} if it is a {weekday_text}"
        )
    else:
        days = f"on day {day_text} of the month or on {weekday_text}"
    months = (
        "" if len(cron.months) == 12 else " in " + _list([MONTH_WORDS[m - 1] for m in sorted(cron.months)])
    )
    return f"{when}, {days}{months} ({cron.timezone})"
