"""`runner prune`: apply keep_runs and keep_logs now (the daemon does it every prune_every, and
the crontab block once a day)."""

from __future__ import annotations

import click

from runner.cli.app import App, cli, pass_app
from runner.cli.output import print_json, print_table


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def prune(app: App, dry_run: bool, as_json: bool) -> None:
    """Remove the runs and run logs beyond each job's keep_runs and keep_logs.

    Never removes a queued or running run, one whose files or lease are still held, nor the newest
    run of a job. Runs go in small batches, so fires are not held up meanwhile; on SQLite the
    space is then given back to the disk.
    """
    import gc

    from runner.config import format_size
    from runner.prune import prune as apply_retention
    from runner.prune import prune_store

    gc.enable()  # `runner` starts with collections off; thousands of batches would pile up cycles
    report = apply_retention(app.settings, prune_store(app.settings), dry_run=dry_run)
    if as_json:
        print_json(report.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    print_table(
        ["JOB", "KEEP RUNS", "RUNS", "KEEP LOGS", "LOGS", "LOG SPACE"],
        [
            [j.job, j.keep_runs, j.runs, j.keep_logs, j.logs, format_size(j.log_bytes)]
            for j in report.jobs
            if j.runs or j.logs
        ],
        empty=f"nothing to prune ({len(report.jobs)} jobs within their keep_runs and keep_logs)",
    )
    summary = (
        f"{verb} {report.runs} runs and {report.logs} logs ({format_size(report.log_bytes)}) "
        f"in {report.seconds:.1f}s"
    )
    if report.released_bytes:
        summary += f"; {format_size(report.released_bytes)} of the database file given back to the disk"
    click.echo(summary)
    if report.note:
        click.echo(f"note: {report.note}")
