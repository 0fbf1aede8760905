"""Running the scheduler and installing it: `runner daemon`, `runner catchup`, `runner crontab`,
`runner systemd-unit`, `runner db upgrade`, `runner check` and `runner doctor`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from runner.cli.app import App, cli, pass_app
from runner.cli.output import print_json, print_table
from runner.errors import EXIT_USAGE, RunnerError

if TYPE_CHECKING:
    from runner.catchup import CatchupPlan
    from runner.settings import Settings
    from runner.store import Store

CRON_D_HELP = (
    "Write our block (with a user field) into an /etc/cron.d file instead of your crontab. "
    "Debian's cron ignores names with dots: use e.g. /etc/cron.d/runner."
)


@cli.command()
@pass_app
def daemon(app: App) -> int:
    """Run the scheduler in the foreground (what the systemd unit starts).

    Fires every scheduled job through the same execution path as `runner run`, at most
    [runner] max_workers at once; on start it runs fires missed while it was down (within each
    job's catchup window), marked late. SIGHUP reloads the config and the job code: new fires run
    the modules as they are on disk, running ones finish on the old code (an invalid config is
    logged and the old schedules kept; a job whose module no longer imports is shown broken by
    `runner status` and its fires are recorded failed). SIGTERM or Ctrl-C lets running jobs finish
    for shutdown_grace, then kills them, and a second one kills them at once.
    """
    from runner.daemon import run_daemon

    return run_daemon(app.config)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def catchup(app: App, as_json: bool) -> int:
    """Run, once each, the cron fires missed while this machine was down (crontab's @reboot line).

    For every cron-scheduled job, the newest fire since its last recorded run that is still within
    the job's catchup window runs once, marked late; older misses are recorded as skipped.
    """
    import subprocess

    store = app.reaped_store()
    rows, children = [], []
    for planned in _cron_plans(app.settings, store):
        for skip in planned.skipped:
            store.record_skipped(
                planned.job, planned.fire.kind, [(skip.key, skip.at)], skip.reason, skip.error
            )
        alerts = app.settings.jobs[planned.job].alerts
        if planned.downtime and alerts is not None:
            from runner.notify import notify_missed

            notify_missed(store, planned.job, alerts, planned.downtime)
        if planned.runnable:
            command = _late_run_command(app, planned.job, planned.fire.key)
            children.append(
                (planned.job, planned.fire.key, subprocess.Popen(command, stdout=subprocess.DEVNULL))
            )
        else:
            rows.append({"job": planned.job, "fire": planned.fire.key, "action": "recorded as missed"})
    worst = 0
    for name, key, child in children:
        code = child.wait()
        worst = max(worst, 1 if code not in (0, 3) else 0)
        rows.append({"job": name, "fire": key, "action": f"ran late, exit {code}"})
    if as_json:
        print_json(rows)
    else:
        print_table(
            ["JOB", "FIRE (UTC)", "ACTION"],
            [[r["job"], r["fire"], r["action"]] for r in rows],
            empty="nothing missed",
        )
    return worst


def _cron_plans(settings: Settings, store: Store) -> list[CatchupPlan]:
    """The catch-up of every job's cron schedules since its last recorded fire, fired as `cron`
    (what its crontab lines record). `every` and `at` fires are the daemon's: crontab never fires
    them, so it does not catch them up either."""
    from dataclasses import replace

    from runner.catchup import plan
    from runner.models import Trigger, utcnow
    from runner.triggers import CronSchedule

    now = utcnow()
    last = store.last_scheduled()
    plans = []
    for name, job in sorted(settings.jobs.items()):
        crons = tuple(s for s in job.schedules if isinstance(s, CronSchedule))
        if crons and name in last:
            planned = plan(replace(job, schedules=crons), last[name], now, Trigger.CRON)
            if planned is not None:
                plans.append(planned)
    return plans


def _late_run_command(app: App, job: str, fire_key: str) -> list[str]:
    """`runner run JOB` as the crontab line of that fire, run late (the same supervision and record)."""
    from runner.systemd import runner_executable

    config = str(app.settings.path)
    return [
        runner_executable(),
        "--config",
        config,
        "run",
        job,
        "--from-cron",
        "--fire-at",
        fire_key,
        "--late",
    ]


@cli.group()
def crontab() -> None:
    """Fire scheduled jobs from the user's crontab instead of the daemon."""


@crontab.command("show")
@click.option("--placeholders", is_flag=True, help="Print /path/to/... instead of this machine's paths.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (the block and the notes).")
@pass_app
def crontab_show(app: App, placeholders: bool, as_json: bool) -> None:
    """Print the crontab lines for every cron-scheduled job (nothing is changed)."""
    from runner.crontab import render_block

    block = render_block(app.settings, placeholders=placeholders)
    if as_json:
        lines = [line for line in block.text.splitlines() if line and not line.startswith("#")]
        print_json({"block": block.text, "lines": lines, "notes": list(block.notes)})
        return
    click.echo(block.text, nl=False)
    for note in block.notes:
        click.echo(f"runner: {note}", err=True)


@crontab.command("install")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), help=CRON_D_HELP)
@click.option("--user", help="The user field of the --file lines (default: you).")
@click.option(
    "--force", is_flag=True, help="Add our block to a --file that holds none (it is backed up first)."
)
@pass_app
def crontab_install(app: App, file: Path | None, user: str | None, force: bool) -> None:
    """Merge our lines into your crontab, inside a managed block; other lines are kept as they are.

    Idempotent: installing twice changes nothing. The previous crontab is saved under var_dir.
    """
    from runner import crontab as cron

    if not file and (user or force):
        raise click.UsageError(f"{'--user' if user else '--force'} only goes with --file")
    if file:
        changed, saved, block = cron.install_cron_d(app.settings, file.absolute(), user, force=force)
        done = f"wrote {file}" + (f" (previous one saved as {saved})" if saved else "")
        click.echo(done if changed else f"{file} already up to date")
    else:
        changed, saved, block = cron.install(app.settings)
        click.echo(
            f"crontab updated (previous one saved as {saved})" if changed else "crontab already up to date"
        )
    for note in block.notes:
        click.echo(f"runner: {note}", err=True)


@crontab.command("remove")
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Remove our block from this /etc/cron.d file (deleted if nothing else is left in it).",
)
@pass_app
def crontab_remove(app: App, file: Path | None) -> None:
    """Remove our managed block from your crontab; nothing else is touched.

    A crontab that held nothing but our block is removed, as it was before `crontab install`.
    """
    from runner import crontab as cron

    if file:
        changed, saved = cron.remove_cron_d(app.settings, file.absolute())
    else:
        changed, saved = cron.remove(app.settings)
    what = file or "crontab"
    click.echo(
        f"removed our block (previous {what} saved as {saved})" if changed else "no block of ours to remove"
    )


@cli.command("systemd-unit")
@click.option(
    "--user", "user_unit", is_flag=True, help="A user unit (systemctl --user) instead of a system one."
)
@click.option("--run-as", help="User= line of a system unit (default: the current user unless root).")
@pass_app
def systemd_unit(app: App, user_unit: bool, run_as: str | None) -> None:
    """Print a systemd unit that runs `runner daemon` for this config (see README for installing it)."""
    import getpass

    from runner.systemd import private_tmp_warning, render_unit

    if run_as is None and not user_unit and os.geteuid() != 0:
        run_as = getpass.getuser()
    click.echo(render_unit(app.settings, user_unit=user_unit, user=run_as), nl=False)
    if warning := private_tmp_warning(app.settings):
        click.echo(f"runner: warning: {warning}", err=True)


@cli.group()
def db() -> None:
    """Manage the run-history database."""


@db.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def db_upgrade(app: App, as_json: bool) -> None:
    """Create the tables or migrate them to this version (runs also do this on first use), in the
    history database and, with SQLite, in the job-data file beside it.

    Run it once after installing a new version, before reloading or restarting daemons. A database
    that a newer runner migrated is refused (exit 5, the version to install named) and not changed.
    """
    before, after = app.store.upgrade()
    app.store.job_data()  # and the job-data database beside it (SQLite): not on a job's first run
    if as_json:
        print_json({"before": before, "after": after, "changed": before != after})
    elif before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to revision {after}")


@db.command("vacuum")
@pass_app
def db_vacuum(app: App) -> None:
    """Rewrite the SQLite file once, so that prune can give freed space back to the disk.

    Databases created by this version need it never; an older one needs it once. It holds the
    write lock while it runs (seconds to minutes for a large history): run it while nothing runs.
    PostgreSQL needs nothing (its autovacuum reuses the space).
    """
    from runner.config import format_size

    sizes = app.store.vacuum()
    if sizes is None:
        click.echo("nothing to do: PostgreSQL's autovacuum reuses freed space by itself")
        return
    click.echo(f"database rewritten: {format_size(sizes[0])} -> {format_size(sizes[1])}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def check(app: App, as_json: bool) -> int:
    """Validate the config and every job; exit 2 if anything is wrong.

    Also warns (exit 0) when a running daemon runs other job code than the files on disk: it was
    not reloaded since they changed (`systemctl reload runner`, or `kill -HUP` its pid).
    """
    from runner.discovery import discover
    from runner.watch import check_folders

    settings = app.settings
    catalog = discover(settings)
    problems = list(catalog.errors)
    problems += [reason for name, reason in catalog.broken.items() if reason not in problems]
    problems += [p for c in settings.channels.values() if (p := getattr(c, "problem", None))]
    for name, job in sorted(settings.jobs.items()):
        if job.watch is not None and (problem := check_folders(job.watch)):
            problems.append(f"{settings.path}: [job:{name}] watch: {problem}")
    database, problem = _database_state(app)
    if problem:
        problems.append(problem)
    warnings = _stale_daemons(app) if database == "ok" else []
    if as_json:
        print_json(
            {
                "config": str(settings.path),
                "jobs": sorted(catalog.jobs),
                "database": database,
                "problems": problems,
                "warnings": warnings,
            }
        )
    elif problems:  # no "ok" lines above a failure: only what is wrong
        for problem in problems:
            click.echo(f"runner: {problem}", err=True)
    else:
        click.echo(f"config    {settings.path}")
        click.echo(f"jobs      {len(catalog.jobs)} ok: {', '.join(sorted(catalog.jobs)) or '-'}")
        click.echo(f"database  {database}")
    for warning in warnings:
        click.echo(f"runner: warning: {warning}", err=True)
    return EXIT_USAGE if problems else 0


def _stale_daemons(app: App) -> list[str]:
    """A line for each live daemon whose job code is not what is on disk now."""
    from runner.cli.output import local
    from runner.codeversion import code_version

    on_disk = code_version(app.settings)
    return [
        f"daemon {d['id']} (pid {d['pid']} on {d['host']}) runs job code {d['code_version'] or 'unknown'} "
        f"loaded {local(d['code_loaded_at'])}, but the files here are {on_disk}: reload it "
        f"(systemctl reload runner, or kill -HUP {d['pid']})"
        for d in app.store.daemons.alive(app.settings.runner.stale_after_s)
        if d["code_version"] != on_disk
    ]


def _database_state(app: App) -> tuple[str, str | None]:
    """What `check` says about the database, and the problem it is (None: not a problem)."""
    from runner.config import sqlite_path
    from runner.models import SCHEMA_REVISION

    try:
        sqlite_file = sqlite_path(app.settings.runner.database)
        if sqlite_file is not None and not sqlite_file.exists():
            # checking must not create it (nor its folder): the first run does
            return f"not created yet: {sqlite_file} (the first run, or `runner db upgrade`, creates it)", None
        revision = app.store.check_schema_known()
    except RunnerError as exc:
        return str(exc), str(exc)
    if revision == SCHEMA_REVISION:
        return "ok", None
    return (
        f"at revision {revision or 'none'}; `runner db upgrade` (or any run) brings it to {SCHEMA_REVISION}",
        None,
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON for scripts.")
@pass_app
def doctor(app: App, as_json: bool) -> int:
    """Check this deployment: config, jobs, database and clock, folders, inotify limits, crontab
    block, systemd unit and metrics; one line each (ok, warn or FAIL, with the fix to apply).

    Changes nothing. Exit status: 0 when nothing failed (warnings included), 2 when something did.
    """
    from runner.doctor import exit_code, run_doctor

    findings = run_doctor(app.config, emit=(lambda _f: None) if as_json else (lambda f: click.echo(f.line())))
    if as_json:
        print_json({"ok": exit_code(findings) == 0, "checks": [f.to_json() for f in findings]})
    return exit_code(findings)
