"""What happened: `runner history` (recent runs), `runner logs RUN` and `runner status` (daemons,
queues, runs in progress, next and missed fires, watched folders, recent problems)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from runner.cli.app import App, cli, pass_app
from runner.cli.output import EnumChoice, local, print_json, print_table, seconds
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.models import RunStatus
    from runner.status import StatusReport

MAX_LIMIT = 100_000  # history rows one command prints
MAX_RUN_ID = 2**63 - 1  # the history's id column (BIGINT on PostgreSQL)


def _run_statuses() -> type[RunStatus]:
    from runner.models import RunStatus

    return RunStatus


@cli.command()
@click.argument("job", required=False)
@click.option("--status", type=EnumChoice(_run_statuses), help="Only runs with this status.")
@click.option(
    "--limit", type=click.IntRange(1, MAX_LIMIT), default=20, show_default=True, help="How many runs."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def history(app: App, job: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """Show recent runs, newest first (times in local time)."""
    records = app.reaped_store().history(job, status, limit)
    if job and not records:
        from runner.discovery import require_known_job

        require_known_job(app.settings, job)  # a job's old runs stay listed after it is removed
    if as_json:
        print_json([r.to_json() for r in records])
        return
    filters = " ".join(filter(None, [job and f"of job {job}", status and f"with status {status}"]))
    print_table(
        ["RUN", "JOB", "STATUS", "TRIGGER", "STARTED", "DURATION", "TRY", "ERROR"],
        [
            [
                r.id,
                r.job,
                r.status,
                r.trigger + (" (late)" if r.late else ""),
                local(r.started_at or r.queued_at),
                seconds(r.duration_s),
                r.attempt,
                r.error or "",
            ]
            for r in records
        ],
        empty=f"no runs {filters}" if filters else "no runs yet: try `runner run hello`",
    )


@cli.command()
@click.argument("run_id", type=click.IntRange(1, MAX_RUN_ID))
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the run and its whole log as JSON.")
@pass_app
def logs(app: App, run_id: int, follow: bool, as_json: bool) -> None:
    """Print the log of one run (its output, its log lines and any traceback)."""
    if follow and as_json:
        raise click.UsageError("--follow and --json do not go together")
    store = app.reaped_store()
    record = store.get_run(run_id)
    if record is None:
        raise RunnerError(f"no run {run_id}; see `runner history` for run ids")
    from runner.runlog import find_log

    around = record.started_at or record.queued_at
    path = Path(record.log_path or find_log(app.settings.runner.log_dir, record.job, run_id, around))
    if not path.exists() and record.started_at is None:
        why = f": {record.error}" if record.error else ""
        click.echo(f"run {run_id} ({record.status}) never started, so it has no log{why}")
        return
    if as_json:  # one JSON document: the log is read whole (it is capped at max_log_bytes)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RunnerError(f"log of run {run_id} is gone: {path}") from None
        print_json({**record.to_json(), "log_path": str(path), "log": data.decode("utf-8", "replace")})
        return
    from runner.models import RunStatus
    from runner.runlog import stream

    def running() -> bool:
        now = store.get_run(run_id)
        return now is not None and RunStatus(now.status).active

    try:
        stream(path, sys.stdout.buffer, follow=running if follow else None)
    except FileNotFoundError:
        raise RunnerError(f"log of run {run_id} is gone: {path}") from None
    except BrokenPipeError:  # `runner logs 42 | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def status(app: App, as_json: bool) -> None:
    """Show live daemons (the job code each runs, jobs it cannot run), runs in progress, next fires,
    missed fires and recent failures."""
    from runner.status import status_report

    report = status_report(app.settings, app.reaped_store())
    if as_json:
        print_json(report.to_json())
        return
    _print_daemons(report)
    _print_queues(report)
    click.echo("\nRUNNING")
    print_table(
        ["RUN", "JOB", "TRIGGER", "STARTED", "HOST", "PID"],
        [[r.id, r.job, r.trigger, local(r.started_at), r.host, r.pid] for r in report.running],
        empty="  nothing running",
    )
    _print_fires(report)
    _print_watching(report)
    click.echo("\nRECENT PROBLEMS")
    print_table(
        ["RUN", "JOB", "STATUS", "WHEN", "ERROR"],
        [[r.id, r.job, r.status, local(r.ended_at or r.queued_at), r.error or ""] for r in report.problems],
        empty="  none",
    )
    if report.undelivered:
        click.echo("\nNOTIFICATIONS AND PINGS NOT DELIVERED (last day)")
        print_table(
            ["RUN", "JOB", "WHEN", "ERROR"],
            [[n["run_id"] or "-", n["job"], local(n["created_at"]), n["error"]] for n in report.undelivered],
            empty="",
        )


def _print_daemons(report: StatusReport) -> None:
    click.echo("DAEMONS")
    print_table(
        ["ID", "HOST", "PID", "STARTED", "HEARTBEAT", "CLOCK", "CODE", "LOADED", "FIRED (LAST HOUR)"],
        [
            [
                d["id"],
                d["host"],
                d["pid"],
                local(d["started_at"]),
                f"{report.heartbeat_age_s(d):.0f}s ago",
                _clock(d["clock_offset_s"]),
                d.get("code_version"),
                local(d.get("code_loaded_at")),
                ", ".join(f"{job} {n}" for job, n in sorted((d["fired"] or {}).items())) or "-",
            ]
            for d in report.daemons
        ],
        empty="  none alive (start one with `runner daemon`, or install crontab lines)",
    )
    for d in report.daemons:
        for note in d.get("notes") or ():
            click.echo(f"  daemon {d['id']}: {note}")
        for job, why in sorted((d.get("broken") or {}).items()):
            click.echo(f"  daemon {d['id']}: job {job} is broken, its fires are recorded failed: {why}")


def _clock(offset_s: float | None) -> str:
    """The host's clock against the database's: what a daemon corrects when it is off."""
    if offset_s is None or abs(offset_s) < 1:
        return "ok"
    return f"{abs(offset_s):.0f}s {'ahead' if offset_s > 0 else 'behind'}"


def _print_queues(report: StatusReport) -> None:
    if not report.queues:
        return
    click.echo("\nQUEUED AND SKIPPED FIRES (skipped: last hour, by reason)")
    print_table(
        ["JOB", "QUEUED", "OLDEST", "SKIPPED"],
        [
            [
                q.job,
                q.queued,
                seconds(q.oldest_queued_age_s),
                ", ".join(f"{n} {reason}" for reason, n in sorted(q.skipped_last_hour.items())) or "-",
            ]
            for q in report.queues
        ],
        empty="",
    )


def _print_fires(report: StatusReport) -> None:
    click.echo("\nNEXT FIRES")
    print_table(
        ["JOB", "NEXT (LOCAL)"],
        [[u.job, local(u.at)] for u in report.upcoming],
        empty="  no scheduled jobs",
    )
    if report.missed:
        click.echo("\nMISSED (no scheduler ran these fires)")
        print_table(
            ["JOB", "LATEST MISSED", "COUNT"],
            [[m.job, local(m.latest), m.count] for m in report.missed],
            empty="",
        )


def _print_watching(report: StatusReport) -> None:
    from runner.models import ClaimState

    if not report.watching:
        return
    click.echo("\nWATCHED FOLDERS (files: done / claimed or waiting for a retry / given up)")
    print_table(
        ["JOB", "DONE", "WAITING", "FAILED", "FOLDERS"],
        [
            [
                w.job,
                w.files.get(ClaimState.DONE, 0),
                w.files.get(ClaimState.PENDING, 0) + w.files.get(ClaimState.CLAIMED, 0),
                w.files.get(ClaimState.FAILED, 0),
                " ".join(w.folders),
            ]
            for w in report.watching
        ],
        empty="",
    )
