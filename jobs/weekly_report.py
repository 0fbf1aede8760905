"""Weekly or monthly report: what the scheduled scripts and their data did in a period.

Reads the run history (`ctx.history()`) and the jobs' own tables (`ctx.engine`), aggregates in SQL
(SQLAlchemy Core, grouped in the database, the same on SQLite and PostgreSQL), and writes
REPORTS/PERIOD/report.html (one self-contained file, the chart inline), one CSV per table and
chart.png; then, when `smtp_host` is set, mails it once per period (recorded in `report_sends`).

Figures per job, over the runs *queued* in the period (a run belongs to the period in which its fire
was claimed or recorded): runs (every attempt that was not skipped), succeeded, failures by status
(failed, timed_out, killed, lost), late (runs recorded late: a missed fire caught up, or a fire
that started well after it was due), missed (scheduled fires recorded skipped: overlap, queue full,
beyond catch-up, shutdown ...), p50/p95 duration (nearest rank over the finished runs), each with
the previous period's figure and the delta.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from runner import JobContext, JobTables, MailError, SmtpServer, job, main, send_mail

STATUSES = ("succeeded", "failed", "timed_out", "killed", "lost", "skipped", "running", "queued")
FAILURE_STATUSES = ("failed", "timed_out", "killed", "lost")
MISSED_TRIGGERS = ("cron", "schedule")  # a manual run refused for overlap is not a missed fire
JOB_METRICS = (
    "runs",
    "succeeded",
    "failed",
    "timed_out",
    "killed",
    "lost",
    "late",
    "missed",
    "p50_s",
    "p95_s",
)
IMAGE_METRICS = ("processed", "duplicates", "near_duplicates", "bytes")
IMAGES_TABLE = "images"  # jobs/ingest_images.py's tables
QUARANTINED_TABLE = "quarantined"  # reason, quarantined_at (naive UTC), one row per quarantined file
# jobs/poll_api.py's table: source, item_id, first_seen, last_seen, changed_at (= first_seen until the
# content changes); naive UTC. New: first seen in the period; changed: changed in it, first seen before.
POLL_TABLE = "poll_items"
RECENT_FAILURES = 20  # failed runs listed with their error
ERROR_CHARS = 500  # an error message is cut to this many characters in the report
CHART_CID = "chart"

metadata = sa.MetaData()

report_sends = sa.Table(  # one row per (report job, period) whose mail went out
    "report_sends",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("recipients", sa.Text, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("sent_at", sa.DateTime, nullable=False),  # UTC
)
TABLES = JobTables("weekly_report", metadata, version=1)


class ReportError(Exception):
    """A report that cannot be made or sent; its message is the run's one-line error."""


class IsoWeek(str):
    """An ISO week like 2026-W47 (checked when the INI or `-p` is read: a bad one is exit 2)."""

    __slots__ = ()

    def __new__(cls, text: str) -> IsoWeek:
        value = super().__new__(cls, str(text).strip())
        value.first_day  # noqa: B018  (raises ValueError when it is no ISO week)
        return value

    @property
    def first_day(self) -> date:
        """The week's Monday."""
        found = re.fullmatch(r"(\d{4})-W(\d{2})", self)
        try:
            return date.fromisocalendar(int(found[1]), int(found[2]), 1)  # type: ignore[index]
        except (TypeError, ValueError):
            raise ValueError("an ISO week like 2026-W47") from None


class Month(str):
    """A calendar month like 2026-11."""

    __slots__ = ()

    def __new__(cls, text: str) -> Month:
        value = super().__new__(cls, str(text).strip())
        value.first_day  # noqa: B018  (raises ValueError when it is no month)
        return value

    @property
    def first_day(self) -> date:
        found = re.fullmatch(r"(\d{4})-(\d{2})", self)
        if not found or not 1 <= int(found[2]) <= 12:
            raise ValueError("a month like 2026-11")
        return date(int(found[1]), int(found[2]), 1)


class _Choice(str):
    __slots__ = ()
    CHOICES: tuple[str, ...] = ()

    def __new__(cls, text: str) -> _Choice:
        value = str(text).strip().lower()
        if value not in cls.CHOICES:
            raise ValueError("one of " + ", ".join(cls.CHOICES))
        return super().__new__(cls, value)


class PeriodKind(_Choice):
    """week or month."""

    __slots__ = ()
    CHOICES = ("week", "month")


class SmtpSecurity(_Choice):
    """starttls, ssl or none."""

    __slots__ = ()
    CHOICES = ("starttls", "ssl", "none")


DEFAULT_PERIOD = PeriodKind("week")
DEFAULT_SECURITY = SmtpSecurity("starttls")


@job(timeout="15m")
def weekly_report(
    ctx: JobContext,
    reports: Path = Path("reports"),
    period: PeriodKind = DEFAULT_PERIOD,
    week: IsoWeek | None = None,
    month: Month | None = None,
    quarantine: Path | None = None,
    dry_run: bool = False,
    resend: bool = False,
    smtp_host: str | None = None,
    smtp_port: int = 0,
    smtp_security: SmtpSecurity = DEFAULT_SECURITY,
    smtp_user: str | None = None,
    smtp_password: str | None = None,
    smtp_cafile: Path | None = None,
    sender: str = "runner@localhost",
    to: list[str] | None = None,
    cc: list[str] | None = None,
) -> dict[str, Any]:
    """Report what the jobs and their data did last week (or month), as HTML, CSV and a chart.

    Args:
        reports: folder of the reports, one sub-folder per period (2026-W47, 2026-11).
        period: week (the last complete ISO week) or month (the last complete calendar month).
        week: an explicit ISO week such as 2026-W47 (instead of period).
        month: an explicit month such as 2026-11 (instead of period).
        quarantine: ingest_images' quarantine folder, for the quarantined files and their reasons.
        dry_run: write the files and say where; send nothing.
        resend: send the mail again even if this period's report was already sent.
        smtp_host: mail server; no mail when unset.
        smtp_port: 0 = 465 for ssl, 587 for starttls, 25 for none.
        smtp_security: starttls, ssl or none.
        smtp_user: login name (with smtp_password; put the password in ${env:...}).
        smtp_password: login password.
        smtp_cafile: certificates to trust for the mail server (an internal CA); default: the system's.
        sender: the From address.
        to: recipients, comma separated.
        cc: copy recipients, comma separated.
    """
    try:
        import jinja2  # noqa: F401  (imported here, not at start-up: see README "Writing a job")
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ReportError(f"{exc.name} is not installed: pip install 'backend-runner[report]'") from None
    span = resolve_period(period, week, month, ctx.timezone, datetime.now(UTC))
    if smtp_host and not (to or cc):
        raise ReportError("smtp_host is set but there is nobody to send to: set to (and cc)")
    with ctx.history() as conn:
        jobs = job_figures(conn, span)
        daily = daily_runs(conn, span)
        failures = recent_failures(conn, span)
    with ctx.engine.connect() as conn:
        images = image_figures(conn, span)
        polled = poll_figures(conn, span)
        quarantined = quarantine_table_figures(conn, span)
    if quarantined is None and quarantine:  # an ingest_images that records no `quarantined` rows
        quarantined = quarantine_folder_figures(quarantine, span)
    report = Report(span, jobs, daily, failures, images, quarantined, polled)
    folder = Path(os.path.abspath(reports)) / span.label
    written = write_report(folder, report)
    summary: dict[str, Any] = {"period": span.label, "folder": str(folder), "files": sorted(written)}
    ctx.log.info(
        "weekly_report %s: wrote %s", span.label, ", ".join(str(folder / n) for n in sorted(written))
    )
    if dry_run or not smtp_host:
        if dry_run:
            print(f"dry run: the report for {span.label} is in {folder}; nothing was sent")
        summary["sent"] = False
        return summary
    recipients = [*(to or []), *(cc or [])]
    TABLES.ensure(ctx)
    # No transaction is held while the mail goes out (that would stall every other job's writes to
    # the job data for as long as the mail server takes); the job's lease (overlap = skip) keeps two
    # runs of it from sending at once. A crash between sending and recording sends once more.
    where = (report_sends.c.job == ctx.job, report_sends.c.period == span.label)
    with ctx.engine.connect() as conn:
        sent = conn.execute(sa.select(report_sends.c.sent_at).where(*where)).first()
    if sent is not None and not resend:
        ctx.log.info("the report for %s was sent at %s UTC; not sending it again", span.label, sent[0])
        summary["sent"] = False
        return summary
    message = build_message(report, written, sender=sender, to=to or [], cc=cc or [])
    server = SmtpServer(smtp_host, smtp_port, smtp_security, smtp_user, smtp_password, smtp_cafile)
    try:
        send_mail(message, server)
    except MailError as exc:
        raise ReportError(
            f"could not send the report through {server.address} ({server.security}): {exc.cause}; "
            "the files are written, run again to send (or fix smtp_host / smtp_port)"
        ) from None
    values = {
        "recipients": ", ".join(recipients),
        "run_id": ctx.run_id,
        "sent_at": datetime.now(UTC).replace(tzinfo=None),
    }
    with ctx.transaction() as conn:
        if conn.execute(sa.update(report_sends).where(*where).values(**values)).rowcount == 0:
            conn.execute(sa.insert(report_sends).values(job=ctx.job, period=span.label, **values))
    ctx.log.info("sent the report for %s to %s", span.label, ", ".join(recipients))
    summary["sent"] = True
    return summary


# --- the period -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """A report period: its label, its bounds in UTC, its days (local midnights) and the one before."""

    label: str  # 2026-W47 | 2026-11
    timezone: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    days: tuple[date, ...]
    day_starts: tuple[datetime, ...]  # UTC: the local midnight starting each day, and the end
    previous: Span | None = None


def resolve_period(period: str, week: str | None, month: str | None, timezone: str, now: datetime) -> Span:
    """The explicit week or month, else the last complete ISO week or calendar month before `now`."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(timezone)
    if week and month:
        raise ReportError("give week or month, not both")
    try:  # the job's own parameters arrive checked; other callers (bench/report.py) pass text
        if week:
            return _week(IsoWeek(week).first_day, zone, timezone, with_previous=True)
        if month:
            return _month(Month(month).first_day, zone, timezone, with_previous=True)
    except ValueError as exc:
        name, value = ("week", week) if week else ("month", month)
        raise ReportError(f"{name} = {value!r}: expected {exc}") from None
    today = now.astimezone(zone).date()
    kind = period.strip().lower()
    if kind == "week":
        return _week(today - timedelta(days=today.weekday() + 7), zone, timezone, with_previous=True)
    if kind == "month":
        last_month = today.replace(day=1) - timedelta(days=1)
        return _month(last_month.replace(day=1), zone, timezone, with_previous=True)
    raise ReportError(f"period = {period!r}: expected week or month")


def _span(label: str, first: date, count: int, zone: Any, timezone: str, previous: Span | None) -> Span:
    days = tuple(first + timedelta(days=n) for n in range(count))
    starts = tuple(
        datetime(d.year, d.month, d.day, tzinfo=zone).astimezone(UTC)
        for d in (*days, first + timedelta(days=count))
    )
    return Span(label, timezone, starts[0], starts[-1], days, starts, previous)


def _week(monday: date, zone: Any, timezone: str, *, with_previous: bool) -> Span:
    year, number, _ = monday.isocalendar()
    previous = (
        _week(monday - timedelta(days=7), zone, timezone, with_previous=False) if with_previous else None
    )
    return _span(f"{year}-W{number:02d}", monday, 7, zone, timezone, previous)


def _month(first: date, zone: Any, timezone: str, *, with_previous: bool) -> Span:
    following = (first + timedelta(days=32)).replace(day=1)
    previous = None
    if with_previous:
        previous = _month((first - timedelta(days=1)).replace(day=1), zone, timezone, with_previous=False)
    return _span(f"{first:%Y-%m}", first, (following - first).days, zone, timezone, previous)


# --- figures (SQL) --------------------------------------------------------------------------------


# The columns of the run history's `runs` table this report reads (naive UTC datetimes). Declared
# here rather than imported (a job uses only runner's public API) or reflected (which would cost
# more round trips than the report's own queries on a small history).
RUNS = sa.table(
    "runs",
    sa.column("id", sa.Integer),
    sa.column("job", sa.String),
    sa.column("trigger", sa.String),
    sa.column("status", sa.String),
    sa.column("late", sa.Boolean),
    sa.column("queued_at", sa.DateTime),
    sa.column("started_at", sa.DateTime),
    sa.column("ended_at", sa.DateTime),
    sa.column("error", sa.Text),
)


def duration_seconds(dialect: str, runs: sa.TableClause) -> sa.ColumnElement[float]:
    """ended_at - started_at in seconds, in SQL (SQLite keeps datetimes as text)."""
    if dialect == "postgresql":
        return sa.func.extract("epoch", runs.c.ended_at - runs.c.started_at)
    return (sa.func.julianday(runs.c.ended_at) - sa.func.julianday(runs.c.started_at)) * 86400.0


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def _job_counts(conn: sa.Connection, start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    runs = RUNS
    ran = runs.c.status != "skipped"
    query = (
        sa.select(
            runs.c.job,
            _count_if(ran).label("runs"),
            *(
                _count_if(runs.c.status == status).label(status)
                for status in ("succeeded", *FAILURE_STATUSES)
            ),
            _count_if(sa.and_(ran, runs.c.late.is_(True))).label("late"),
            _count_if(sa.and_(runs.c.status == "skipped", runs.c.trigger.in_(MISSED_TRIGGERS))).label(
                "missed"
            ),
        )
        .where(runs.c.queued_at >= _naive(start), runs.c.queued_at < _naive(end))
        .group_by(runs.c.job)
    )
    return {row.job: dict(row._mapping) for row in conn.execute(query)}


def _job_durations(conn: sa.Connection, start: datetime, end: datetime) -> dict[str, tuple[Any, Any]]:
    """p50 and p95 per job by nearest rank (the ceil(p*n)-th shortest), with window functions."""
    runs = RUNS
    finished = (
        sa.select(runs.c.job, duration_seconds(conn.dialect.name, runs).label("seconds"))
        .where(
            runs.c.queued_at >= _naive(start),
            runs.c.queued_at < _naive(end),
            runs.c.status != "skipped",
            runs.c.started_at.is_not(None),
            runs.c.ended_at.is_not(None),
        )
        .subquery()
    )
    ranked = sa.select(
        finished.c.job,
        finished.c.seconds,
        sa.func.row_number().over(partition_by=finished.c.job, order_by=finished.c.seconds).label("rank"),
        sa.func.count().over(partition_by=finished.c.job).label("n"),
    ).subquery()
    query = sa.select(
        ranked.c.job,
        sa.func.max(sa.case((ranked.c.rank == (ranked.c.n + 1) // 2, ranked.c.seconds))).label("p50"),
        sa.func.max(sa.case((ranked.c.rank == (ranked.c.n * 95 + 99) // 100, ranked.c.seconds))).label("p95"),
    ).group_by(ranked.c.job)
    return {row.job: (row.p50, row.p95) for row in conn.execute(query)}


def _period_figures(conn: sa.Connection, start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    figures = _job_counts(conn, start, end)
    for name, (p50, p95) in _job_durations(conn, start, end).items():
        figures[name]["p50_s"] = _seconds(p50)
        figures[name]["p95_s"] = _seconds(p95)
    for row in figures.values():
        row.pop("job", None)
        for metric in JOB_METRICS:
            row.setdefault(metric, None if metric.endswith("_s") else 0)
            if not metric.endswith("_s"):
                row[metric] = int(row[metric])
    return figures


def job_figures(conn: sa.Connection, span: Span) -> list[dict[str, Any]]:
    """One row per job seen in either period: each metric, its previous value and the delta."""
    current = _period_figures(conn, span.start, span.end)
    before = _period_figures(conn, span.previous.start, span.previous.end) if span.previous else {}
    rows = []
    for name in sorted(current.keys() | before.keys()):
        now, then = current.get(name, {}), before.get(name, {})
        row: dict[str, Any] = {"job": name}
        for metric in JOB_METRICS:
            empty = None if metric.endswith("_s") else 0
            value, previous = now.get(metric, empty), then.get(metric, empty)
            row[metric] = value
            row[f"prev_{metric}"] = previous
            row[f"delta_{metric}"] = (
                None if value is None or previous is None else _round(value - previous, metric.endswith("_s"))
            )
        rows.append(row)
    return rows


def daily_runs(conn: sa.Connection, span: Span) -> list[dict[str, Any]]:
    """Runs per local day and status: the day is found in SQL from the UTC bounds of local midnights
    (DST-correct without time zone support in the database)."""
    runs = RUNS
    day = sa.case(
        *((runs.c.queued_at < _naive(bound), index) for index, bound in enumerate(span.day_starts[1:])),
        else_=len(span.days),
    ).label("day")
    query = (
        sa.select(day, runs.c.status, sa.func.count().label("n"))
        .where(runs.c.queued_at >= _naive(span.start), runs.c.queued_at < _naive(span.end))
        .group_by(day, runs.c.status)
    )
    counts = {(row.day, row.status): int(row.n) for row in conn.execute(query)}
    statuses = [s for s in STATUSES if any(key[1] == s for key in counts)]
    statuses += sorted({key[1] for key in counts} - set(statuses))
    return [
        {"day": day.isoformat(), **{status: counts.get((index, status), 0) for status in statuses}}
        for index, day in enumerate(span.days)
    ]


def recent_failures(conn: sa.Connection, span: Span) -> list[dict[str, Any]]:
    """The newest failed runs of the period, with their error (queued_at in the report's timezone)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(span.timezone)
    runs = RUNS
    query = (
        sa.select(runs.c.id, runs.c.job, runs.c.status, runs.c.queued_at, runs.c.error)
        .where(
            runs.c.queued_at >= _naive(span.start),
            runs.c.queued_at < _naive(span.end),
            runs.c.status.in_(FAILURE_STATUSES),
        )
        .order_by(runs.c.id.desc())
        .limit(RECENT_FAILURES)
    )
    return [
        {
            "run": row.id,
            "job": row.job,
            "status": row.status,
            "queued_at": f"{row.queued_at.replace(tzinfo=UTC).astimezone(zone):%Y-%m-%d %H:%M:%S}",
            "error": (row.error or "")[:ERROR_CHARS],
        }
        for row in conn.execute(query)
    ]


def _has_table(conn: sa.Connection, name: str) -> sa.Table | None:
    if not sa.inspect(conn).has_table(name):
        return None
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def image_figures(conn: sa.Connection, span: Span) -> dict[str, Any] | None:
    """Images ingested in the period and the one before (None: ingest_images never ran here)."""
    images = _has_table(conn, IMAGES_TABLE)
    if images is None:
        return None

    def one(start: datetime, end: datetime) -> dict[str, int]:
        c = images.c
        row = conn.execute(
            sa.select(
                sa.func.count().label("processed"),
                _count_if(c.duplicate_of.is_not(None)).label("duplicates"),
                _count_if(sa.and_(c.duplicate_of.is_(None), c.near_duplicate_of.is_not(None))).label(
                    "near_duplicates"
                ),
                sa.func.coalesce(sa.func.sum(c.byte_size), 0).label("bytes"),
            ).where(c.state == "done", c.ingested_at >= _naive(start), c.ingested_at < _naive(end))
        ).one()
        return {metric: int(row._mapping[metric]) for metric in IMAGE_METRICS}

    current = one(span.start, span.end)
    before = one(span.previous.start, span.previous.end) if span.previous else dict.fromkeys(IMAGE_METRICS, 0)
    return {
        metric: {
            "value": current[metric],
            "previous": before[metric],
            "delta": current[metric] - before[metric],
        }
        for metric in IMAGE_METRICS
    }


def poll_figures(conn: sa.Connection, span: Span) -> list[dict[str, Any]] | None:
    """Items first seen (new) and changed in the period, per source (None: no poll table yet)."""
    items = _has_table(conn, POLL_TABLE)
    if items is None:
        return None
    c = items.c
    start, end = _naive(span.start), _naive(span.end)
    new = sa.and_(c.first_seen >= start, c.first_seen < end)
    columns = [c.source, _count_if(new).label("new")]
    if "changed_at" in c:
        changed = sa.and_(c.changed_at >= start, c.changed_at < end, c.first_seen < start)
        columns.append(_count_if(changed).label("changed"))
        touched = sa.or_(new, changed)
    else:
        touched = new
    query = sa.select(*columns).where(touched).group_by(c.source).order_by(c.source)
    return [
        {"source": row.source, "new": int(row.new), "changed": int(getattr(row, "changed", 0) or 0)}
        for row in conn.execute(query)
    ]


def quarantine_table_figures(conn: sa.Connection, span: Span) -> dict[str, Any] | None:
    """Files quarantined in the period with the most frequent reasons, from ingest_images' table
    `quarantined` (None: no such table here)."""
    table = _has_table(conn, QUARANTINED_TABLE)
    if table is None:
        return None
    c = table.c
    files = sa.func.count().label("files")
    query = (
        sa.select(c.reason, files)
        .where(c.quarantined_at >= _naive(span.start), c.quarantined_at < _naive(span.end))
        .group_by(c.reason)
        .order_by(files.desc(), c.reason)
    )
    reasons = [{"reason": row.reason, "files": int(row.files)} for row in conn.execute(query)]
    return {"count": sum(r["files"] for r in reasons), "reasons": reasons}


def quarantine_folder_figures(folder: Path, span: Span) -> dict[str, Any] | None:
    """Files quarantined in the period (by the time their NAME.reason.txt was written), with the
    most frequent reasons, for an ingest_images that keeps no `quarantined` table: the folder is
    then their only record."""
    if not folder.is_dir():
        return None
    start, end = span.start.timestamp(), span.end.timestamp()
    reasons: dict[str, int] = {}
    for path in folder.glob("*.reason.txt"):
        with contextlib.suppress(OSError):
            if start <= path.stat().st_mtime < end:
                text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
                reason = text[0] if text else "(no reason written)"
                reasons[reason] = reasons.get(reason, 0) + 1
    top = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return {"count": sum(reasons.values()), "reasons": [{"reason": r, "files": n} for r, n in top]}


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _round(value: float, seconds: bool) -> float:
    return round(value, 3) if seconds else value


# --- the files ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    span: Span
    jobs: list[dict[str, Any]]
    daily: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    images: dict[str, Any] | None
    quarantined: dict[str, Any] | None
    polled: list[dict[str, Any]] | None

    def tables(self) -> dict[str, tuple[Sequence[str], list[dict[str, Any]]]]:
        """CSV name -> (columns, rows): every table of the report."""
        job_columns = ["job"] + [f"{p}{m}" for m in JOB_METRICS for p in ("", "prev_", "delta_")]
        daily_columns = list(self.daily[0].keys()) if self.daily else ["day"]
        tables: dict[str, tuple[Sequence[str], list[dict[str, Any]]]] = {
            "jobs.csv": (job_columns, self.jobs),
            "daily.csv": (daily_columns, self.daily),
            "failures.csv": (("run", "job", "status", "queued_at", "error"), self.failures),
        }
        if self.images is not None:
            rows = [{"metric": m, **self.images[m]} for m in IMAGE_METRICS]
            if self.quarantined is not None:
                rows.append({"metric": "quarantined", "value": self.quarantined["count"]})
            tables["images.csv"] = (("metric", "value", "previous", "delta"), rows)
        if self.quarantined is not None:
            tables["quarantine_reasons.csv"] = (("reason", "files"), self.quarantined["reasons"])
        if self.polled is not None:
            tables["polling.csv"] = (("source", "new", "changed"), self.polled)
        return tables


def _atomic_write(path: Path, data: bytes) -> None:
    """Write beside `path` under a temporary name, fsync, rename over it: readers see the old file
    or the new one, never half of one."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def csv_bytes(columns: Sequence[str], rows: list[dict[str, Any]]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return text.getvalue().encode("utf-8")


def chart_png(report: Report) -> bytes:
    """Daily runs by status, stacked bars (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    colours = {
        "succeeded": "#2e7d32",
        "failed": "#c62828",
        "timed_out": "#ef6c00",
        "killed": "#6a1b9a",
        "lost": "#455a64",
        "skipped": "#9e9e9e",
        "running": "#1565c0",
        "queued": "#90caf9",
    }
    figure = Figure(figsize=(8, 3.2), dpi=100)
    axes = figure.subplots()
    days = [row["day"][5:] for row in report.daily]
    statuses = [key for key in (report.daily[0] if report.daily else {}) if key != "day"]
    bottom = [0] * len(days)
    for status in statuses:
        heights = [row[status] for row in report.daily]
        axes.bar(days, heights, bottom=bottom, label=status, color=colours.get(status))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set_title(f"Runs per day by status, {report.span.label} ({report.span.timezone})")
    axes.set_ylabel("runs")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    if statuses:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    else:
        axes.text(0.5, 0.5, "no runs in this period", ha="center", va="center", transform=axes.transAxes)
    if len(days) > 10:
        axes.tick_params(axis="x", labelrotation=90, labelsize="small")
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def render_html(report: Report, chart_src: str) -> str:
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(HTML_TEMPLATE).render(
        report=report, chart_src=chart_src, metrics=JOB_METRICS, image_metrics=IMAGE_METRICS, fmt=_fmt
    )


def render_text(report: Report) -> str:
    lines = [f"Report {report.span.label} ({report.span.timezone})", ""]
    header = ("job", "runs", "succeeded", "failures", "late", "missed", "p50 s", "p95 s")
    rows = [header] + [
        (
            row["job"],
            _fmt(row["runs"], row["delta_runs"]),
            _fmt(row["succeeded"], row["delta_succeeded"]),
            str(sum(row[s] for s in FAILURE_STATUSES)),
            _fmt(row["late"], row["delta_late"]),
            _fmt(row["missed"], row["delta_missed"]),
            _fmt(row["p50_s"], row["delta_p50_s"]),
            _fmt(row["p95_s"], row["delta_p95_s"]),
        )
        for row in report.jobs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)) for r in rows]
    if report.images is not None:
        lines += ["", "Images: " + ", ".join(f"{m} {report.images[m]['value']}" for m in IMAGE_METRICS)]
    if report.quarantined is not None:
        lines.append(f"Quarantined: {report.quarantined['count']}")
        lines += [f"  {r['files']} x {r['reason']}" for r in report.quarantined["reasons"][:5]]
    if report.polled is not None:
        lines += ["", "Polling (new / changed):"]
        lines += [f"  {r['source']}: {r['new']} / {r['changed']}" for r in report.polled]
    if report.failures:
        lines += ["", "Recent failures:"]
        lines += [f"  run {f['run']} {f['job']} {f['status']}: {f['error']}" for f in report.failures]
    lines += ["", "The full report (HTML, CSV, chart) is attached as HTML in this mail."]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, delta: Any = None) -> str:
    """A figure with its change since the previous period: `12 (+3)`, `0.5 (-0.1)`, `-`."""
    if value is None:
        return "-"
    if delta is None or delta == 0:
        return _number(value)
    return f"{_number(value)} ({'+' if delta > 0 else '-'}{_number(abs(delta))})"


def _number(value: float) -> str:
    """Whole numbers as they are, seconds to the millisecond without trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def write_report(folder: Path, report: Report) -> dict[str, bytes]:
    """Every file of the report, each replaced atomically; returns name -> content."""
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    files = {name: csv_bytes(columns, rows) for name, (columns, rows) in report.tables().items()}
    files["chart.png"] = chart_png(report)
    inline = "data:image/png;base64," + base64.b64encode(files["chart.png"]).decode("ascii")
    files["report.html"] = render_html(report, inline).encode("utf-8")
    for name, data in files.items():
        _atomic_write(folder / name, data)
    return files


# --- the mail -------------------------------------------------------------------------------------


def build_message(
    report: Report, files: Mapping[str, bytes], *, sender: str, to: list[str], cc: list[str]
) -> Any:
    """multipart/alternative: the plain text, then the HTML with the chart inline by Content-ID."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    message = EmailMessage()
    message["Subject"] = f"Report {report.span.label}"
    message["From"] = sender
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="runner.report")
    message.set_content(render_text(report))
    message.add_alternative(render_html(report, f"cid:{CHART_CID}"), subtype="html")
    html_part = message.get_payload()[1]
    html_part.add_related(files["chart.png"], maintype="image", subtype="png", cid=f"<{CHART_CID}>")
    return message


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Report {{ report.span.label }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
table { font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th, td:first-child { white-space: nowrap; }
th:first-child, td:first-child, .text { text-align: left; }
.up { color: #2e7d32; } .down { color: #c62828; } .muted { color: #777; }
</style>
</head>
<body>
<h1>Report {{ report.span.label }}</h1>
<p class="muted">From {{ report.span.days[0] }} to {{ report.span.days[-1] }} ({{ report.span.timezone }}),
compared with {{ report.span.previous.label if report.span.previous else "nothing" }}.</p>

<h2>Runs per day</h2>
<img id="chart" src="{{ chart_src }}" alt="Runs per day by status">

<h2>Jobs</h2>
<table id="jobs">
<thead><tr><th>job</th>{% for m in metrics %}<th>{{ m }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in report.jobs %}<tr><td>{{ row.job }}</td>{% for m in metrics %}<td data-metric="{{ m }}" data-value="{{ '' if row[m] is none else row[m] }}" data-previous="{{ '' if row['prev_' ~ m] is none else row['prev_' ~ m] }}" data-delta="{{ '' if row['delta_' ~ m] is none else row['delta_' ~ m] }}">{{ fmt(row[m], row['delta_' ~ m]) }}</td>{% endfor %}</tr>
{% else %}<tr><td colspan="{{ metrics | length + 1 }}">no runs in this period or the one before</td></tr>
{% endfor %}</tbody>
</table>
{% if report.images is not none %}
<h2>Images</h2>
<table id="images">
<thead><tr><th>metric</th><th>this period</th><th>previous</th><th>change</th></tr></thead>
<tbody>
{% for m in image_metrics %}<tr><td>{{ m }}</td><td data-metric="{{ m }}">{{ report.images[m].value }}</td><td>{{ report.images[m].previous }}</td><td>{{ fmt(report.images[m].delta) if report.images[m].delta else 0 }}</td></tr>
{% endfor %}{% if report.quarantined is not none %}<tr><td>quarantined</td><td data-metric="quarantined">{{ report.quarantined.count }}</td><td></td><td></td></tr>{% endif %}
</tbody>
</table>
{% endif %}
{% if report.quarantined is not none and report.quarantined.reasons %}
<h3>Top quarantine reasons</h3>
<table id="quarantine">
<thead><tr><th class="text">reason</th><th>files</th></tr></thead>
<tbody>
{% for r in report.quarantined.reasons[:10] %}<tr><td class="text">{{ r.reason }}</td><td>{{ r.files }}</td></tr>
{% endfor %}</tbody>
</table>
{% endif %}
{% if report.polled is not none %}
<h2>Polling</h2>
<table id="polling">
<thead><tr><th>source</th><th>new</th><th>changed</th></tr></thead>
<tbody>
{% for r in report.polled %}<tr><td>{{ r.source }}</td><td>{{ r.new }}</td><td>{{ r.changed }}</td></tr>
{% else %}<tr><td colspan="3">no new or changed items</td></tr>
{% endfor %}</tbody>
</table>
{% endif %}
<h2>Recent failures</h2>
{% if report.failures %}
<table id="failures">
<thead><tr><th>run</th><th class="text">job</th><th class="text">status</th><th class="text">queued ({{ report.span.timezone }})</th><th class="text">error</th></tr></thead>
<tbody>
{% for f in report.failures %}<tr><td>{{ f.run }}</td><td class="text">{{ f.job }}</td><td class="text">{{ f.status }}</td><td class="text">{{ f.queued_at }}</td><td class="text error">{{ f.error }}</td></tr>
{% endfor %}</tbody>
</table>
{% else %}<p>None.</p>{% endif %}
</body>
</html>
"""


if __name__ == "__main__":
    main()
