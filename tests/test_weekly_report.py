"""The shipped weekly_report job: figures checked against an independent computation on both
backends, the HTML escaped and parsed back, the mail received by a real SMTP server on 127.0.0.1,
and the report opened in headless Chromium."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import os
import random
import shutil
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import Project, assert_one_line_error
from mailserver import SMTP_PASSWORD, SMTP_USER, MailServer

TIMEZONE = "Europe/Berlin"
WEEK = "2026-W43"  # 19-25 October 2026: Berlin leaves summer time on the Sunday
WEEK_START = datetime(2026, 10, 19, tzinfo=ZoneInfo(TIMEZONE)).astimezone(UTC)
WEEK_END = datetime(2026, 10, 26, tzinfo=ZoneInfo(TIMEZONE)).astimezone(UTC)
PREVIOUS_START = datetime(2026, 10, 12, tzinfo=ZoneInfo(TIMEZONE)).astimezone(UTC)
SCRIPT = '<script>alert("owned")</script> & "quoted"'
FAILURES = ("failed", "timed_out", "killed", "lost")
METRICS = ("runs", "succeeded", "failed", "timed_out", "killed", "lost", "late", "missed", "p50_s", "p95_s")


# --- a seeded history ------------------------------------------------------------------------------


@dataclass
class Seed:
    runs: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[tuple[str, datetime]] = field(default_factory=list)


def make_seed() -> Seed:
    rng = random.Random(16)
    seed = Seed()
    lo, hi = PREVIOUS_START - timedelta(days=3), WEEK_END + timedelta(days=3)
    edges = [
        WEEK_START,
        WEEK_START - timedelta(milliseconds=1),
        WEEK_END,
        WEEK_END - timedelta(milliseconds=1),
    ]
    statuses = ["succeeded"] * 10 + ["failed", "timed_out", "killed", "lost", "skipped", "skipped", "running"]
    for job, count in (("alpha", 120), ("beta <b>", 60), ("gamma", 7), ("only_before", 5)):
        for n in range(count):
            if job == "only_before":
                queued = PREVIOUS_START + timedelta(hours=rng.uniform(1, 100))
            elif n < len(edges):
                queued = edges[n]
            else:
                queued = lo + timedelta(milliseconds=rng.randrange(int((hi - lo).total_seconds() * 1000)))
            status = rng.choice(statuses)
            run: dict[str, Any] = {
                "job": job,
                "fire_key": f"{job}-{n}",
                "trigger": rng.choice(["cron", "schedule", "manual", "file"]),
                "attempt": 1,
                "status": status,
                "late": status != "skipped" and rng.random() < 0.2,
                "queued_at": queued,
                "host": "test",
                "pid": 1,
                "error": None,
            }
            if status != "skipped":
                run["started_at"] = queued + timedelta(milliseconds=rng.randrange(0, 500))
                if status != "running":
                    run["ended_at"] = run["started_at"] + timedelta(milliseconds=rng.randrange(1, 90_000))
            else:
                run["reason"] = rng.choice(["overlap", "beyond catch-up", "shutdown"])
            if status in FAILURES:
                run["error"] = f"{SCRIPT} in run {n}" if n % 2 else f"ValueError: bad input {n}"
            seed.runs.append(run)
    for n in range(40):
        ingested = lo + timedelta(minutes=rng.randrange(int((hi - lo).total_seconds() // 60)))
        duplicate = n > 5 and rng.random() < 0.25
        seed.images.append(
            {
                "id": n + 1,
                "state": "done" if rng.random() < 0.9 else "moving",
                "duplicate_of": 1 if duplicate else None,
                "near_duplicate_of": 2 if not duplicate and n > 5 and rng.random() < 0.3 else None,
                "byte_size": rng.randrange(1000, 5_000_000),
                "ingested_at": ingested,
            }
        )
    for source in ("orders", "users <x>"):
        for n in range(30):
            first = lo + timedelta(minutes=rng.randrange(int((hi - lo).total_seconds() // 60)))
            changed = first + timedelta(hours=rng.randrange(1, 200)) if rng.random() < 0.5 else first
            seed.items.append(
                {
                    "source": source,
                    "item_id": str(n),
                    "first_seen": first,
                    "last_seen": changed,
                    "changed_at": changed,
                }
            )
    for n in range(12):
        when = WEEK_START + timedelta(hours=rng.uniform(-100, 200))
        seed.reasons.append((["too big", "not an image: <svg>", "truncated file"][n % 3], when))
    return seed


def install_seed(project: Project, seed: Seed, quarantine_as: str = "table") -> None:
    """The runs into the history; images, polled items and quarantined files (rows of
    ingest_images' `quarantined` table, or NAME.reason.txt files in a folder) into the job data."""
    from jobs.ingest_images import images as images_table
    from jobs.ingest_images import quarantined as quarantined_table
    from runner.models import runs

    assert project.runner("db", "upgrade").returncode == 0
    history = sa.create_engine(project.database_url.replace("postgresql://", "postgresql+psycopg://"))
    with history.begin() as conn:
        conn.execute(
            sa.insert(runs), [{"started_at": None, "ended_at": None, "reason": None, **r} for r in seed.runs]
        )
    history.dispose()
    data = sa.create_engine(project.data_url)
    item_columns = sa.MetaData()
    items = sa.Table(  # the columns of jobs/poll_api.py's table that the report reads
        "poll_items",
        item_columns,
        sa.Column("source", sa.String(200), primary_key=True),
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("first_seen", sa.DateTime, nullable=False),
        sa.Column("last_seen", sa.DateTime, nullable=False),
        sa.Column("changed_at", sa.DateTime, nullable=False),  # poll_api: first_seen until it changes
    )
    images_table.metadata.create_all(data, tables=[images_table])
    item_columns.create_all(data, tables=[items])
    if quarantine_as == "table":  # ingest_images' own table (it has one since its tables' version 3)
        quarantined_table.create(data)
    naive = {"ingested_at", "first_seen", "last_seen", "changed_at"}

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.replace(tzinfo=None) if k in naive and v is not None else v) for k, v in row.items()}

    with data.begin() as conn:
        conn.execute(
            sa.insert(images_table),
            [
                {
                    **plain(row),
                    "sha256": f"{row['id']:064x}",
                    "source_path": f"/in/{row['id']}",
                    "source_size": row["byte_size"],
                    "source_mtime_ns": 0,
                    "processed_path": f"/done/{row['id']}",
                    "format": "PNG",
                    "mode": "RGB",
                    "width": 1,
                    "height": 1,
                    "frames": 1,
                    "channel_means": [],
                    "channel_stds": [],
                    "brightness": {},
                    "dhash": 0,
                    "job": "ingest_images",
                    "run_id": 1,
                }
                for row in seed.images
            ],
        )
        conn.execute(sa.insert(items), [plain(row) for row in seed.items])
        if quarantine_as == "table":
            rows = [
                {
                    "source_path": f"/in/bad{number}",
                    "quarantine_path": f"/quarantine/bad{number}",
                    "reason": reason,
                    "job": "ingest_images",
                    "run_id": 1,
                    "quarantined_at": when.replace(tzinfo=None),
                }
                for number, (reason, when) in enumerate(seed.reasons)
            ]
            conn.execute(sa.insert(quarantined_table), rows)
    data.dispose()
    if quarantine_as != "folder":
        return
    quarantine = project.root / "quarantine"
    quarantine.mkdir()
    for n, (reason, when) in enumerate(seed.reasons):
        path = quarantine / f"file{n}.jpg.reason.txt"
        path.write_text(reason + "\n")
        os.utime(path, (when.timestamp(), when.timestamp()))


# --- the independent computation -------------------------------------------------------------------


def nearest_rank(values: list[float], percent: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-len(ordered) * percent // 100)  # ceil(n * p / 100)
    return round(ordered[rank - 1], 3)


def period_figures(runs: list[dict[str, Any]], start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    durations: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if not start <= run["queued_at"] < end:
            continue
        row = figures.setdefault(run["job"], dict.fromkeys(METRICS, 0))
        if run["status"] == "skipped":
            row["missed"] += run["trigger"] in ("cron", "schedule")
            continue
        row["runs"] += 1
        row["late"] += run["late"]
        if run["status"] in row:
            row[run["status"]] += 1
        if run.get("ended_at"):
            durations[run["job"]].append((run["ended_at"] - run["started_at"]).total_seconds())
    for job, row in figures.items():
        row["p50_s"] = nearest_rank(durations[job], 50)
        row["p95_s"] = nearest_rank(durations[job], 95)
    return figures


def expected_jobs(seed: Seed) -> dict[str, dict[str, Any]]:
    now = period_figures(seed.runs, WEEK_START, WEEK_END)
    before = period_figures(seed.runs, PREVIOUS_START, WEEK_START)
    result = {}
    for job in now.keys() | before.keys():
        row: dict[str, Any] = {}
        for metric in METRICS:
            empty = None if metric.endswith("_s") else 0
            value, previous = now.get(job, {}).get(metric, empty), before.get(job, {}).get(metric, empty)
            row[metric], row[f"prev_{metric}"] = value, previous
            row[f"delta_{metric}"] = None if value is None or previous is None else round(value - previous, 3)
        result[job] = row
    return result


def expected_daily(seed: Seed) -> dict[str, Counter[str]]:
    zone = ZoneInfo(TIMEZONE)
    days: dict[str, Counter[str]] = {
        (date(2026, 10, 19) + timedelta(days=n)).isoformat(): Counter() for n in range(7)
    }
    for run in seed.runs:
        if WEEK_START <= run["queued_at"] < WEEK_END:
            days[run["queued_at"].astimezone(zone).date().isoformat()][run["status"]] += 1
    return days


def expected_images(seed: Seed, start: datetime, end: datetime) -> dict[str, int]:
    done = [r for r in seed.images if r["state"] == "done" and start <= r["ingested_at"] < end]
    return {
        "processed": len(done),
        "duplicates": sum(r["duplicate_of"] is not None for r in done),
        "near_duplicates": sum(
            r["duplicate_of"] is None and r["near_duplicate_of"] is not None for r in done
        ),
        "bytes": sum(r["byte_size"] for r in done),
    }


def expected_polling(seed: Seed) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item in seed.items:
        new = WEEK_START <= item["first_seen"] < WEEK_END
        changed = WEEK_START <= item["changed_at"] < WEEK_END and item["first_seen"] < WEEK_START
        counts[item["source"]][0] += new
        counts[item["source"]][1] += changed
    return {source: (new, changed) for source, (new, changed) in counts.items() if new or changed}


# --- reading the report back -----------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def number(text: str) -> Any:
    if text in ("", "-"):
        return None
    return float(text) if "." in text or "e" in text else int(text)


class Tables(HTMLParser):
    """Every <table id=...> of a page as rows of cell texts, and every <img>'s attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str | None]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_html(path: Path) -> Tables:
    parser = Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def shown(value: Any, delta: Any) -> str:
    """How the HTML shows a figure and its change (`12 (+3)`), written out independently."""
    if value is None:
        return "-"

    def plain(number: Any) -> str:
        return f"{number:.3f}".rstrip("0").rstrip(".") if isinstance(number, float) else str(number)

    text = plain(value)
    if delta:
        text += f" ({'+' if delta > 0 else '-'}{plain(abs(delta))})"
    return text


def configure(project: Project, extra: str = "", **runner: str) -> None:
    project.configure(
        f"""
        [job:weekly_report]
        reports = {project.root / "reports"}
        quarantine = {project.root / "quarantine"}
        {extra}
        """,
        job_packages="jobs",
        timezone=TIMEZONE,
        **runner,
    )


@pytest.fixture
def seeded(project: Project) -> tuple[Project, Seed]:
    configure(project)
    seed = make_seed()
    install_seed(project, seed)
    return project, seed


# --- 1. figures ------------------------------------------------------------------------------------


def test_every_figure_matches_an_independent_computation(seeded: tuple[Project, Seed]) -> None:
    project, seed = seeded
    done = project.runner("run", "weekly_report", "-p", f"week={WEEK}")
    assert done.returncode == 0, done
    folder = project.root / "reports" / WEEK
    assert done.json()["folder"] == str(folder)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left

    want = expected_jobs(seed)
    rows = read_csv(folder / "jobs.csv")
    assert {row["job"] for row in rows} == set(want) == {"alpha", "beta <b>", "gamma", "only_before"}
    for row in rows:
        for column, value in want[row["job"]].items():
            assert number(row[column]) == value, (row["job"], column)

    daily = read_csv(folder / "daily.csv")
    want_daily = expected_daily(seed)
    assert [row["day"] for row in daily] == list(want_daily)
    for row in daily:
        statuses = {k: int(v) for k, v in row.items() if k != "day"}
        assert +Counter(statuses) == want_daily[row["day"]], row["day"]
    assert sum(sum(c.values()) for c in want_daily.values()) == sum(want[j]["runs"] for j in want) + sum(
        1 for r in seed.runs if r["status"] == "skipped" and WEEK_START <= r["queued_at"] < WEEK_END
    )

    images = {row["metric"]: row for row in read_csv(folder / "images.csv")}
    now, before = (
        expected_images(seed, WEEK_START, WEEK_END),
        expected_images(seed, PREVIOUS_START, WEEK_START),
    )
    for metric, value in now.items():
        assert int(images[metric]["value"]) == value, metric
        assert int(images[metric]["previous"]) == before[metric], metric
        assert int(images[metric]["delta"]) == value - before[metric], metric
    reasons = Counter(reason for reason, when in seed.reasons if WEEK_START <= when < WEEK_END)
    assert int(images["quarantined"]["value"]) == sum(reasons.values()) > 0
    assert {r["reason"]: int(r["files"]) for r in read_csv(folder / "quarantine_reasons.csv")} == reasons

    polling = {
        row["source"]: (int(row["new"]), int(row["changed"])) for row in read_csv(folder / "polling.csv")
    }
    assert polling == expected_polling(seed)

    failures = read_csv(folder / "failures.csv")
    failed_runs = [
        r for r in seed.runs if r["status"] in FAILURES and WEEK_START <= r["queued_at"] < WEEK_END
    ]
    assert len(failures) == min(20, len(failed_runs))
    assert any(SCRIPT in row["error"] for row in failures)

    # The HTML shows the same numbers, and the error message as text, never as markup.
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    assert "beta &lt;b&gt;" in html
    page = parse_html(folder / "report.html")
    header, *body = page.tables["jobs"]
    assert header == ["job", *METRICS]
    assert {cells[0] for cells in body} == set(want)
    for cells in body:
        row = want[cells[0]]
        assert cells[1:] == [shown(row[m], row[f"delta_{m}"]) for m in METRICS], cells[0]
    image_cells = {cells[0]: cells[1] for cells in page.tables["images"][1:]}
    assert {m: int(image_cells[m]) for m in now} == now
    assert int(image_cells["quarantined"]) == sum(reasons.values())
    assert {c[0]: (int(c[1]), int(c[2])) for c in page.tables["polling"][1:]} == expected_polling(seed)
    assert any(SCRIPT in cells[-1] for cells in page.tables["failures"][1:])
    assert [img["id"] for img in page.images] == ["chart"]
    assert page.images[0]["src"].startswith("data:image/png;base64,")


def test_a_month_compares_with_the_month_before(seeded: tuple[Project, Seed]) -> None:
    project, seed = seeded
    done = project.runner("run", "weekly_report", "-p", "month=2026-10")
    assert done.returncode == 0, done
    zone = ZoneInfo(TIMEZONE)
    october = (
        datetime(2026, 10, 1, tzinfo=zone).astimezone(UTC),
        datetime(2026, 11, 1, tzinfo=zone).astimezone(UTC),
    )
    september = datetime(2026, 9, 1, tzinfo=zone).astimezone(UTC), october[0]
    now, before = period_figures(seed.runs, *october), period_figures(seed.runs, *september)
    assert not before and now
    rows = read_csv(project.root / "reports" / "2026-10" / "jobs.csv")
    assert {row["job"]: [number(row[m]) for m in METRICS] for row in rows} == {
        job: [figures[m] for m in METRICS] for job, figures in now.items()
    }
    assert len(read_csv(project.root / "reports" / "2026-10" / "daily.csv")) == 31


def test_without_a_quarantined_table_the_reason_files_count(sqlite_project: Project) -> None:
    configure(sqlite_project)
    seed = make_seed()
    install_seed(sqlite_project, seed, quarantine_as="folder")
    done = sqlite_project.runner("run", "weekly_report", "-p", f"week={WEEK}")
    assert done.returncode == 0, done
    folder = sqlite_project.root / "reports" / WEEK
    reasons = Counter(reason for reason, when in seed.reasons if WEEK_START <= when < WEEK_END)
    assert {r["reason"]: int(r["files"]) for r in read_csv(folder / "quarantine_reasons.csv")} == reasons
    images = {row["metric"]: row for row in read_csv(folder / "images.csv")}
    assert int(images["quarantined"]["value"]) == sum(reasons.values())


def test_missing_job_tables_leave_their_sections_out(project: Project) -> None:
    configure(project)
    done = project.runner("run", "weekly_report", "-p", "period=month")
    assert done.returncode == 0, done
    folder = Path(done.json()["folder"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "chart.png",
        "daily.csv",
        "failures.csv",
        "jobs.csv",
        "report.html",
    ]
    page = parse_html(folder / "report.html")
    assert "images" not in page.tables and "polling" not in page.tables


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("week=2026-W54", "-p week = '2026-W54': expected IsoWeek: an ISO week like 2026-W47"),
        ("month=2026-13", "-p month = '2026-13': expected Month: a month like 2026-11"),
        ("period=year", "-p period = 'year': expected PeriodKind: one of week, month"),
        ("smtp_security=tls", "-p smtp_security = 'tls': expected SmtpSecurity: one of starttls, ssl, none"),
    ],
)
def test_a_bad_period_is_one_clear_line_and_exit_2(project: Project, given: str, expected: str) -> None:
    """Bad input: one line, exit 2, before anything runs (no run row is written)."""
    configure(project)
    done = project.runner("run", "weekly_report", "-p", given)
    assert_one_line_error(done, expected)
    assert project.history("weekly_report") == []


def test_loading_the_job_module_imports_no_heavy_library() -> None:
    code = (
        "import sys, jobs.weekly_report; "
        "print(sorted(m for m in ('matplotlib', 'jinja2', 'numpy', 'PIL') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- 2. mail ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (the job trusts it through smtp_cafile)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (Debian: apt-get install openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert = folder / "smtp.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(cert.with_suffix(".key")),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return cert


@pytest.fixture
def mail_server(request: pytest.FixtureRequest, certificate: Path) -> Iterator[MailServer]:
    server = MailServer(getattr(request, "param", "starttls"), certificate)
    yield server
    server.close()


def mail_settings(project: Project, server: MailServer, security: str, certificate: Path) -> str:
    project.environ["REPORT_SMTP_PASSWORD"] = SMTP_PASSWORD
    return f"""
        smtp_host = 127.0.0.1
        smtp_port = {server.port}
        smtp_security = {security}
        smtp_cafile = {certificate}
        smtp_user = {SMTP_USER}
        smtp_password = ${{env:REPORT_SMTP_PASSWORD}}
        sender = runner@example.com
        to = ops@example.com, lead@example.com
        cc = archive@example.com
    """


def check_mail(envelope: Any, week: str) -> None:
    from PIL import Image

    assert sorted(envelope.rcpt_tos) == ["archive@example.com", "lead@example.com", "ops@example.com"]
    message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert message["Subject"] == f"Report {week}"
    assert message["To"] == "ops@example.com, lead@example.com" and message["Cc"] == "archive@example.com"
    assert message.get_content_type() == "multipart/alternative"
    text, related = message.get_payload()
    assert text.get_content_type() == "text/plain"
    assert f"Report {week}" in text.get_content() and "alpha" in text.get_content()
    assert related.get_content_type() == "multipart/related"
    html, png = related.get_payload()
    assert html.get_content_type() == "text/html"
    assert 'src="cid:chart"' in html.get_content()
    assert "<script" not in html.get_content().lower()
    assert png.get_content_type() == "image/png" and png["Content-ID"] == "<chart>"
    image = Image.open(io.BytesIO(png.get_content()))
    image.load()
    assert image.format == "PNG" and image.size == (800, 320)


@pytest.mark.parametrize("mail_server", ["starttls", "ssl"], indirect=True)
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_the_mail_arrives_once_per_period(
    seeded: tuple[Project, Seed], mail_server: MailServer, certificate: Path
) -> None:
    project, _ = seeded
    configure(project, mail_settings(project, mail_server, mail_server.security, certificate))
    done = project.runner("run", "weekly_report", "-p", f"week={WEEK}")
    assert done.returncode == 0, done
    assert done.json()["sent"] is True
    assert len(mail_server.messages) == 1
    check_mail(mail_server.messages[0], WEEK)
    assert SMTP_PASSWORD not in "".join(str(row["params"]) for row in project.history("weekly_report"))

    again = project.runner("run", "weekly_report", "-p", f"week={WEEK}")
    assert again.returncode == 0, again
    assert again.json()["sent"] is False
    assert len(mail_server.messages) == 1  # the same period is not sent twice

    resent = project.runner("run", "weekly_report", "-p", f"week={WEEK}", "-p", "resend=true")
    assert resent.returncode == 0 and resent.json()["sent"] is True, resent
    assert len(mail_server.messages) == 2

    dry = project.runner("run", "weekly_report", "-p", "week=2026-W42", "-p", "dry_run=true")
    assert dry.returncode == 0 and dry.json()["sent"] is False, dry
    assert (project.root / "reports" / "2026-W42" / "report.html").is_file()
    assert len(mail_server.messages) == 2


def test_a_down_mail_server_fails_the_run_in_one_line_after_writing_the_files(
    seeded: tuple[Project, Seed], certificate: Path
) -> None:
    project, _ = seeded
    with socket.socket() as reserved:  # bound, never listening: a connection is refused
        reserved.bind(("127.0.0.1", 0))
        down = MailServer.__new__(MailServer)
        down.port = reserved.getsockname()[1]
        configure(project, mail_settings(project, down, "starttls", certificate))
        done = project.runner("run", "weekly_report", "-p", f"week={WEEK}")
    assert done.returncode == 1, done
    assert len(done.stderr_lines) == 1, done
    assert f"could not send the report through 127.0.0.1:{down.port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert (project.root / "reports" / WEEK / "report.html").is_file()
    assert (project.root / "reports" / WEEK / "jobs.csv").is_file()
    run = project.history("weekly_report")[-1]
    assert run["status"] == "failed" and "could not send the report" in run["error"]


# --- 3. the report in a browser --------------------------------------------------------------------

CHART_GREEN = (0x2E, 0x7D, 0x32)  # the succeeded bars
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
PROBE = (
    '<script>addEventListener("load", () => { const img = document.getElementById("chart"); '
    "document.title = `chart ${img.complete} ${img.naturalWidth}x${img.naturalHeight}`; });</script>"
)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium, installed by the test set-up when this machine allows it."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "chromium is not installed and cannot be (needs root and apt-get): apt-get install chromium"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=600",
        "chromium",
    ]
    if subprocess.run(install, capture_output=True, env=env, timeout=1800).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=1800)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium: {done.stderr.strip()[-300:]}")
    return shutil.which("chromium") or pytest.skip("apt-get installed chromium but it is not on PATH")


def browse(chromium: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *BROWSER_FLAGS, f"--user-data-dir={home}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": str(home)},
    )


def test_the_report_opens_in_chromium_with_its_chart(
    sqlite_project: Project, chromium: str, tmp_path: Path
) -> None:
    from PIL import Image

    configure(sqlite_project)
    install_seed(sqlite_project, make_seed())
    done = sqlite_project.runner("run", "weekly_report", "-p", f"week={WEEK}")
    assert done.returncode == 0, done
    folder = Path(done.json()["folder"])
    chart = Image.open(folder / "chart.png")

    # The page as shipped has no script; a copy with a probe reports the image's natural size.
    probe = tmp_path / "probe.html"
    probe.write_text((folder / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = browse(
        chromium, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), home=tmp_path / "home"
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f"<title>chart true {chart.width}x{chart.height}</title>" in dom.stdout, dom.stdout[:500]

    shot = tmp_path / "shot.png"
    taken = browse(
        chromium,
        "--window-size=1000,1400",
        f"--screenshot={shot}",
        (folder / "report.html").as_uri(),
        home=tmp_path / "home",
    )
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    screen = Image.open(shot).convert("RGB")
    assert screen.size == (1000, 1400)
    colours = screen.getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    green = sum(
        n for n, rgb in colours if all(abs(a - b) <= 12 for a, b in zip(rgb, CHART_GREEN, strict=True))
    )
    assert green > 1000, f"only {green} pixels of the chart's bars are on screen"
