"""The `runner` command: parse arguments, call one engine function, print the result."""

from __future__ import annotations

import gc
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click

from runner import __version__, jsonsafe
from runner.errors import EXIT_USAGE, RunnerError

MAX_LIMIT = 100_000  # history rows one command prints
MAX_RUN_ID = 2**63 - 1  # the history's id column (BIGINT on PostgreSQL)
STATUS_CHOICES = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "killed",
    "lost",
    "skipped",
)


class App:
    """What every command needs, loaded on first use: the settings and the run-history store."""

    def __init__(self, config: str | None) -> None:
        self.config = config
        self._settings = None
        self._store = None

    @property
    def settings(self):
        if self._settings is None:
            from runner.config import load_settings

            self._settings = load_settings(self.config)
        return self._settings

    @property
    def store(self):
        if self._store is None:
            from runner.store import Store

            self._store = Store(
                self.settings.runner.database,
                lock_timeout_s=self.settings.runner.lock_timeout_s,
                data_url=self.settings.runner.data_database,
            )
        return self._store

    def reaped_store(self):
        """The store, after marking lost the runs whose supervisor is gone."""
        store = self.store
        store.ensure_schema()
        from runner.spool import replay

        replay(self.settings.runner.var_dir, store)
        store.reap_lost(self.settings.runner.stale_after_s, wait=False)
        return store


pass_app = click.make_pass_decorator(App)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Start with `runner list`, then `runner run hello`. Docs: README.md.",
)
@click.option(
    "--config",
    "config",
    metavar="PATH",
    help="The INI file (default: $RUNNER_CONFIG, else ./config/runner.ini).",
)
@click.version_option(__version__, "--version", prog_name="runner", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Run the scheduled scripts beside your backend: by hand, from crontab, or from a daemon.

    Jobs are Python functions in jobs/; config/runner.ini says how each one fires. Every run,
    whatever started it, is supervised in its own process and recorded in one history.
    """
    ctx.obj = App(config)


# --- listing ------------------------------------------------------------------------------------


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def list_jobs(app: App, as_json: bool) -> None:
    """List every job: configured in the INI file or found in the job packages."""
    from runner.discovery import discover

    catalog = discover(app.settings)
    rows = [
        {
            "name": spec.name,
            "status": "ok",
            "function": spec.target,
            "configured": spec.name in app.settings.jobs,
            "description": spec.description,
        }
        for spec in sorted(catalog.jobs.values(), key=lambda s: s.name)
    ]
    rows += [
        {
            "name": name,
            "status": "broken",
            "function": "",
            "configured": name in app.settings.jobs,
            "description": reason,
        }
        for name, reason in sorted(catalog.broken.items())
    ]
    if as_json:
        _print_json(rows)
        return
    _print_table(
        ["JOB", "STATUS", "FUNCTION", "DESCRIPTION"],
        [[r["name"], r["status"], r["function"], r["description"]] for r in rows],
        empty="no jobs: add a module with an @job function to jobs/ (see README.md)",
    )


@cli.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def show(app: App, job: str, as_json: bool) -> None:
    """Show one job's resolved settings (secrets hidden) and its parameters."""
    from runner.config import JOB_PREFIX, format_duration, mask_value
    from runner.discovery import find_job
    from runner.params import REQUIRED

    spec = find_job(app.settings, job)
    section = app.settings.printable().get(JOB_PREFIX + job, {})
    params = []
    for param in spec.params:
        configured = mask_value(param.name, spec.config_params.get(param.name))
        default = None if param.default is REQUIRED else param.default
        if default not in (None, ""):
            default = mask_value(param.name, str(default))
        params.append(
            {
                "name": param.name,
                "type": param.type_name,
                "required": param.required,
                "default": default if default is None else str(default),
                "configured": configured,
                "help": param.help,
            }
        )
    section_settings = app.settings.jobs.get(job)
    runner_settings = app.settings.runner
    settings = {
        "function": spec.target,
        "timeout": format_duration(spec.timeout_s) if spec.timeout_s else None,
        "retries": spec.retries,
        "retry_backoff": format_duration(spec.retry_backoff_s),
        "overlap": spec.overlap,
        # Effective values, defaults from [runner] included (they decide when a fire runs).
        "timezone": section_settings.timezone if section_settings else runner_settings.timezone,
        "jitter": format_duration(
            section_settings.jitter_s if section_settings else runner_settings.jitter_s
        ),
        "catchup": format_duration(
            section_settings.catchup_s if section_settings else runner_settings.catchup_s
        ),
    }
    if as_json:
        _print_json(
            {
                "name": spec.name,
                "description": spec.description,
                "settings": settings,
                "section": section,
                "parameters": params,
            }
        )
        return
    click.echo(f"{spec.name}: {spec.description}" if spec.description else spec.name)
    click.echo()
    for key, value in settings.items():
        click.echo(f"  {key:<14} {value if value is not None else '-'}")
    extra = {k: v for k, v in section.items() if k not in settings and k not in spec.config_params}
    for key, value in extra.items():
        click.echo(f"  {key:<14} {value}")
    click.echo()
    _print_table(
        ["PARAMETER", "TYPE", "DEFAULT", "CONFIGURED", "DESCRIPTION"],
        [
            [
                p["name"],
                p["type"],
                "(required)" if p["required"] else _text(p["default"]),
                _text(p["configured"]),
                p["help"],
            ]
            for p in params
        ],
        empty="(this job takes no parameters)",
    )


@cli.command()
@click.argument("job", required=False)
@click.option("--status", type=click.Choice(STATUS_CHOICES), help="Only runs with this status.")
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
        _print_json([r.to_json() for r in records])
        return
    filters = " ".join(filter(None, [job and f"of job {job}", status and f"with status {status}"]))
    _print_table(
        ["RUN", "JOB", "STATUS", "TRIGGER", "STARTED", "DURATION", "TRY", "ERROR"],
        [
            [
                r.id,
                r.job,
                r.status,
                r.trigger + (" (late)" if r.late else ""),
                _local(r.started_at or r.queued_at),
                _seconds(r.duration_s),
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
    from runner.execution import run_log_path

    path = Path(record.log_path or run_log_path(app.settings.runner, record.job, run_id))
    if not path.exists() and record.started_at is None:
        why = f": {record.error}" if record.error else ""
        click.echo(f"run {run_id} ({record.status}) never started, so it has no log{why}")
        return
    if as_json:  # one JSON document: the log is read whole (it is capped at max_log_bytes)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RunnerError(f"log of run {run_id} is gone: {path}") from None
        _print_json({**record.to_json(), "log_path": str(path), "log": data.decode("utf-8", "replace")})
        return
    from runner.runlog import stream

    def running() -> bool:
        now = store.get_run(run_id)
        return now is not None and now.status in ("queued", "running")

    try:
        stream(path, sys.stdout.buffer, follow=running if follow else None)
    except FileNotFoundError:
        raise RunnerError(f"log of run {run_id} is gone: {path}") from None
    except BrokenPipeError:  # `runner logs 42 | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


FILE_STATES = ("claimed", "done", "pending", "failed")


class _ListByDefault(click.Group):
    """`runner files JOB` is `runner files list JOB`."""

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().resolve_command(ctx, args)


@cli.group(cls=_ListByDefault)
def files() -> None:
    """List a watch job's files (`runner files JOB`) and hand failed ones out again.

    Each file version is claimed by one run, then done. When a run fails, the file it was on counts
    a failed attempt and its other files go back untouched (pending); after three failed attempts a
    file is left alone (failed) until `runner files retry JOB`.
    """


@files.command("list")
@click.argument("job")
@click.option("--state", type=click.Choice(FILE_STATES), help="Only files in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def files_list(app: App, job: str, state: str | None, as_json: bool) -> None:
    """List JOB's files: state, attempts (runs that took the file on), when claimed and done."""
    from runner.discovery import require_known_job

    require_known_job(app.settings, job)
    rows = app.reaped_store().files.versions(job, state)
    if as_json:
        _print_json(rows)
        return
    what = f"no files of job {job}" + (f" with state {state}" if state else "")
    _print_table(
        ["STATE", "ATTEMPTS", "CLAIMED", "DONE", "PATH"],
        [[r["state"], r["attempts"], _local(r["claimed_at"]), _local(r["done_at"]), r["path"]] for r in rows],
        empty=what,
    )


@files.command("retry")
@click.argument("job")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def files_retry(app: App, job: str, paths: tuple[Path, ...], as_json: bool) -> None:
    """Hand JOB's failed files (all of them, or the PATHs given) out again, attempts reset.

    The daemon takes them at its next rescan; `runner run JOB` takes them at once.
    """
    from runner.discovery import require_known_job

    require_known_job(app.settings, job)
    wanted = [str(p.absolute()) for p in paths] or None
    store = app.reaped_store()
    if wanted:
        failed = {r["path"] for r in store.files.versions(job, "failed")}
        if unknown := [p for p in wanted if p not in failed]:
            raise RunnerError(
                f"not a failed file of job {job}: {unknown[0]}; see `runner files {job} --state failed`"
            )
    changed = store.files.retry(job, wanted)
    if as_json:
        _print_json({"job": job, "retried": changed})
    elif changed:
        click.echo(f"{len(changed)} file(s) of job {job} will be handed out again")
    else:
        click.echo(f"no failed files of job {job}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def check(app: App, as_json: bool) -> int:
    """Validate the config and every job; exit 2 if anything is wrong."""
    from runner.config import sqlite_path
    from runner.discovery import discover
    from runner.models import SCHEMA_REVISION

    settings = app.settings
    catalog = discover(settings)
    problems = list(catalog.errors)
    problems += [reason for name, reason in catalog.broken.items() if reason not in problems]
    from runner.watch import check_folders

    for name, job in sorted(settings.jobs.items()):
        if job.watch is not None and (problem := check_folders(job.watch)):
            problems.append(f"{settings.path}: [job:{name}] watch: {problem}")
    try:
        sqlite_file = sqlite_path(settings.runner.database)
        if sqlite_file is not None and not sqlite_file.exists():
            # checking must not create it (nor its folder): the first run does
            raise _NotCreated(
                f"not created yet: {sqlite_file} (the first run, or `runner db upgrade`, creates it)"
            )
        revision = app.store.schema_revision()
        database = (
            "ok"
            if revision == SCHEMA_REVISION
            else f"at revision {revision or 'none'}; `runner db upgrade` (or any run) brings it to {SCHEMA_REVISION}"
        )
    except _NotCreated as exc:
        database = str(exc)
    except RunnerError as exc:
        database = str(exc)
        problems.append(database)
    if as_json:
        _print_json(
            {
                "config": str(settings.path),
                "jobs": sorted(catalog.jobs),
                "database": database,
                "problems": problems,
            }
        )
    elif problems:  # no "ok" lines above a failure: only what is wrong
        for problem in problems:
            click.echo(f"runner: {problem}", err=True)
    else:
        click.echo(f"config    {settings.path}")
        click.echo(f"jobs      {len(catalog.jobs)} ok: {', '.join(sorted(catalog.jobs)) or '-'}")
        click.echo(f"database  {database}")
    return EXIT_USAGE if problems else 0


class _NotCreated(RunnerError):
    """The SQLite file does not exist yet: not a problem for `check`."""


@cli.group()
def db() -> None:
    """Manage the run-history database."""


@db.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def db_upgrade(app: App, as_json: bool) -> None:
    """Create the tables or migrate them to this version (runs also do this on first use)."""
    before, after = app.store.upgrade()
    if as_json:
        _print_json({"before": before, "after": after, "changed": before != after})
    elif before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to revision {after}")


# --- running ------------------------------------------------------------------------------------

RUN_HELP = """Run JOB now, supervised and recorded in the history.

Parameters come from the job's [job:JOB] section, then -p key=value, then --key value options
(`runner run JOB --help` lists them). A command line is visible to every user in `ps` for the
whole run: pass secrets as -p key=@FILE (read from FILE) or ${env:NAME} in the config. Exit status: 0 succeeded, 1 the job failed, 2 bad usage or
config, 3 not started (the same fire already ran, or the previous run still holds the lock)."""


@cli.command(
    help=RUN_HELP,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("job", required=False, metavar="JOB")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[OPTIONS]")
@click.pass_context
def run(ctx: click.Context, job: str | None, args: tuple[str, ...]) -> int:
    if not job or job in ("-h", "--help"):
        click.echo(ctx.get_help())
        click.echo("\nExample: runner run hello -p count=2   |   runner run hello --help")
        return 0 if job else EXIT_USAGE
    return _run_job(ctx.obj, job, list(args))


def run_module(module: str, argv: list[str] | None) -> None:
    """`python -m jobs.hello ...`: the same as `runner run hello ...`."""
    from runner.discovery import main_module_job

    args = list(sys.argv[1:] if argv is None else argv)
    config = None
    for at, arg in enumerate(args):
        if arg == "--config":
            if at + 1 >= len(args):
                click.echo("runner: --config needs a PATH", err=True)
                sys.exit(EXIT_USAGE)
            config = args[at + 1]
            del args[at : at + 2]
            break
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
            del args[at]
            break

    def go() -> int:
        return _run_job(App(config), main_module_job(module), args)

    _finish(go)


def _run_job(app: App, job: str, args: list[str]) -> int:
    from runner.discovery import config_origin, find_job

    settings = app.settings
    spec = find_job(settings, job)
    command = _job_command(spec)
    try:
        options = command.main(args=args, prog_name=f"runner run {job}", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    if not isinstance(options, dict):  # --help was printed
        return options or 0
    from runner.params import bind, parse_assignments

    layers = [
        (config_origin(settings, job), spec.config_params),
        ("-p", parse_assignments(options.pop("param"))),
    ]
    _refuse_other_watched_folder(settings, spec, layers[1][1], options)
    as_json = options.pop("as_json")
    fire = _fire_of(app, job, options.pop("from_cron"), options.pop("fire_at"), options.pop("late"))
    for name, value in options.items():
        if value is not None:
            layers.append((f"--{name.replace('_', '-')}", {name: value}))
    params = bind(job, spec.params, layers, base_dir=settings.path.parent)

    from runner.execution import execute

    live = sys.stderr.isatty() and not as_json
    if fire.kind == "cron" and not fire.late and settings.jobs[job].jitter_s:
        time.sleep(random.uniform(0, settings.jobs[job].jitter_s))
    try:
        outcome = execute(spec, params, fire, settings=settings.runner, store=app.store, live=live)
    except RunnerError as exc:
        if as_json:  # a script reading stdout learns why nothing ran (the line on stderr stays)
            _print_json(
                {"run_id": None, "status": "not_started", "exit_code": exc.exit_code, "error": str(exc)}
            )
        raise
    if as_json:
        _print_json(
            {
                "run_id": outcome.run_id,
                "first_run_id": outcome.first_run_id,
                "attempts": outcome.attempts,
                "status": outcome.status.value,
                "exit_code": outcome.exit_code,
                "signal": outcome.signal,
                "error": outcome.error,
                "result": outcome.result,
                "duration_s": round(outcome.duration_s, 3),
                "log_path": str(outcome.log_path) if outcome.log_path else None,
            }
        )
    else:
        if outcome.result is not None:
            click.echo(
                outcome.result
                if isinstance(outcome.result, str)
                else jsonsafe.dumps(outcome.result, indent=2)
            )
        if outcome.status.value != "succeeded":
            # An attempt stopped before it started has no log to point at.
            see = f"; see `runner logs {outcome.run_id}`" if outcome.log_path else ""
            click.echo(
                f"runner: run {outcome.run_id} of {job} {outcome.status.value}: {outcome.error}{see}",
                err=True,
            )
        elif live:
            click.echo(f"runner: run {outcome.run_id} succeeded in {outcome.duration_s:.2f}s", err=True)
    return outcome.cli_exit_code


def _refuse_other_watched_folder(settings: Any, spec: Any, assigned: dict[str, str], options: dict) -> None:
    """A watch job's folder parameter is its watched folder: the files a run gets are there."""
    from runner.errors import ParamError
    from runner.jobapi import job_defaults

    section = settings.jobs.get(spec.name)
    param = getattr(job_defaults(spec.func), "watch_param", None)
    if section is None or section.watch is None or param is None:
        return
    if param in assigned or options.get(param) is not None:
        raise ParamError(
            f"job {spec.name} reads its watched folder {section.watch.folders[0]}; it takes no other "
            f"{param} (configure a section without `watch =` to ingest another folder)"
        )


def _shown_value(value: Any, annotation: Any) -> str:
    """How --help shows a default or configured value: a str parameter's text quoted, anything
    else (paths, numbers, dates) as it would be written on the command line."""
    return repr(str(value)) if annotation is str else str(value)


CRON_LOOKBACK_S = 600.0  # how long after its minute a crontab line may start and still find it
CRON_LATE_S = 60.0


def _fire_of(app: App, job: str, from_cron: bool, fire_at: str | None, late: bool) -> Any:
    """The Fire of this run: manual (a fresh key), a crontab line's minute, or an explicit instant."""
    from runner.context import Fire

    settings = app.settings
    if not fire_at and not from_cron:  # the common manual case: import nothing more
        key = f"manual:{uuid.uuid4().hex}"
        section = settings.jobs.get(job)
        if section is not None and section.watch is not None:
            return Fire(kind="manual", key=key, paths=_claim_present_files(app, job, key, section.watch))
        return Fire(kind="manual", key=key)
    from datetime import UTC, datetime

    from runner.models import utcnow
    from runner.triggers import CronSchedule, fire_key

    if fire_at:
        try:
            at = datetime.fromisoformat(fire_at.replace("Z", "+00:00"))
        except ValueError:
            raise RunnerError(
                f"--fire-at {fire_at!r}: expected an ISO instant like 2026-12-01T07:00:00Z"
            ) from None
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        return Fire("cron" if from_cron else "schedule", fire_key(at), at, late=late)
    if from_cron:
        from runner.catchup import latest_fire

        section = settings.jobs.get(job)
        crons = tuple(s for s in (section.schedules if section else ()) if isinstance(s, CronSchedule))
        if not crons:
            raise RunnerError(
                f"job {job} has no cron schedule; --from-cron is for lines that `runner crontab install` wrote"
            )
        now = utcnow()
        at = latest_fire(crons, now, CRON_LOOKBACK_S)
        if at is None:
            raise RunnerError(
                f"job {job}: no cron fire in the last {CRON_LOOKBACK_S:.0f}s; "
                "is the crontab out of date? run `runner crontab install`"
            )
    return Fire("cron", fire_key(at), at, late=late or (now - at).total_seconds() > CRON_LATE_S)


def _claim_present_files(app: App, job: str, key: str, watch: Any) -> tuple[Path, ...]:
    """A manual run of a watch job takes every file in its folders that no run has claimed."""
    from runner.watch import check_folders, scan

    problem = check_folders(watch)
    if problem:
        raise RunnerError(f"job {job}: {problem}")
    store = app.store  # the run's own store: one engine, one SQLite writer queue
    store.files.release_orphans(job)
    versions = [(v.path, v.size, v.mtime_ns) for v in scan(watch)]
    claimed: list[str] = []
    for start in range(0, len(versions), 500):
        claimed += store.files.claim(job, key, versions[start : start + 500])
    return tuple(Path(p) for p in claimed)


def _shown(name: str, value: Any, annotation: Any) -> str:
    """A parameter's value for --help: secrets and URL passwords masked, then as written."""
    from runner.config import SECRET_MASK, mask_value

    masked = mask_value(name, str(value) if isinstance(value, Path) else value)
    return SECRET_MASK if masked == SECRET_MASK else _shown_value(masked, annotation)


def _job_command(spec: Any) -> click.Command:
    """A click command whose options are the job's parameters (all parsed as text, converted later)."""
    from runner.config import is_secret
    from runner.params import REQUIRED

    reserved = {"param", "as_json", "json", "help", "from_cron", "fire_at", "late", "config"}
    options: list[click.Parameter] = [
        click.Option(
            ["-p", "--param"],
            multiple=True,
            metavar="KEY=VALUE",
            help="Set a parameter (repeatable); KEY=@FILE reads the value from FILE.",
        ),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the outcome as JSON."),
        # For crontab lines and `runner catchup`: which scheduled fire this run is.
        click.Option(["--from-cron", "from_cron"], is_flag=True, hidden=True),
        click.Option(["--fire-at", "fire_at"], hidden=True),
        click.Option(["--late", "late"], is_flag=True, hidden=True),
    ]
    for param in spec.params:
        if param.name in reserved:
            continue
        flag = "--" + param.name.replace("_", "-")
        default = (
            "required"
            if param.default is REQUIRED
            else f"default: {_shown(param.name, param.default, param.annotation)}"
        )
        configured = spec.config_params.get(param.name)
        if configured is not None:
            default += f", configured: {_shown(param.name, configured, param.annotation)}"
        text = f"[{param.type_name}; {default}] {param.help}".strip()
        if is_secret(param.name):
            text += f" A value given here shows in `ps` for the whole run: use -p {param.name}=@FILE."
        if param.annotation is bool:
            options.append(
                click.Option(
                    [f"{flag}/--no-{flag[2:]}", param.name],
                    default=None,
                    help=text,
                    flag_value=True,
                )
            )
        else:
            options.append(click.Option([flag, param.name], metavar=param.type_name.upper(), help=text))

    def callback(**values: Any) -> dict[str, Any]:
        return {
            k: (("true" if v else "false") if isinstance(v, bool) and k not in reserved else v)
            for k, v in values.items()
        }

    from runner.params import strip_param_docs

    doc = strip_param_docs(spec.func.__doc__ or "")
    return click.Command(
        name=spec.name,
        params=options,
        callback=callback,
        help=doc or spec.description or None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        epilog=f"Runs {spec.target} supervised, recorded in `runner history`.",
    )


# --- scheduling ---------------------------------------------------------------------------------


@cli.command("next")
@click.argument("job", required=False)
@click.option("--count", type=click.IntRange(1, 1000), default=5, show_default=True, help="Fires per job.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def next_fires(app: App, job: str | None, count: int, as_json: bool) -> None:
    """Show the upcoming fires of scheduled jobs, in local time and UTC, with DST moves flagged."""
    from itertools import islice

    from runner.models import utcnow
    from runner.triggers import fire_key, zone

    settings = app.settings
    names = [job] if job else sorted(n for n, j in settings.jobs.items() if j.scheduled)
    if job:
        from runner.discovery import require_known_job

        require_known_job(settings, job)
    if job and (job not in settings.jobs or not settings.jobs[job].scheduled):
        raise RunnerError(f"job {job} has no schedule; add `schedule = ...` to its [job:{job}] section")
    now = utcnow()
    result = []
    for name in names:
        section = settings.jobs[name]
        tz = zone(section.timezone)
        fires = sorted(
            {f.at: f for s in section.schedules for f in islice(s.fires_after(now), count)}.values(),
            key=lambda f: f.at,
        )[:count]
        result.append(
            {
                "job": name,
                "timezone": section.timezone,
                "schedules": [{"schedule": str(s), "description": s.describe()} for s in section.schedules],
                "fires": [
                    {
                        "local": f.at.astimezone(tz).isoformat(),
                        "shown": f"{f.at.astimezone(tz):%a %Y-%m-%d %H:%M:%S %Z}",
                        "utc": fire_key(f.at),
                        "dst": f.note,
                    }
                    for f in fires
                ],
            }
        )
    if as_json:
        _print_json(result)
        return
    if not result:
        click.echo(
            "no scheduled jobs: add `schedule = cron 0 7 * * mon` (or every 15m) to a [job:NAME] section"
        )
    for entry in result:
        for schedule in entry["schedules"]:
            click.echo(f"{entry['job']}: {schedule['schedule']}  ({schedule['description']})")
        _print_table(
            ["LOCAL", "UTC", "NOTE"],
            [[f.pop("shown"), f["utc"], f["dst"] or ""] for f in entry["fires"]],
            empty="  (no more fires)",
        )
        click.echo()


@cli.command()
@pass_app
def daemon(app: App) -> int:
    """Run the scheduler in the foreground (what the systemd unit starts).

    Fires every scheduled job through the same execution path as `runner run`, at most
    [runner] max_workers at once; on start it runs fires missed while it was down (within each
    job's catchup window), marked late. SIGHUP reloads the config (an invalid one is logged and the
    old schedules kept); SIGTERM or Ctrl-C lets running jobs finish for shutdown_grace, then kills
    them, and a second one kills them at once.
    """
    from runner.daemon import run_daemon

    return run_daemon(app.config)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def status(app: App, as_json: bool) -> None:
    """Show live daemons, runs in progress, next fires, missed fires and recent failures."""
    from runner.catchup import find_missed, known_since, next_fire
    from runner.models import utcnow
    from runner.triggers import fire_key

    settings = app.settings
    store = app.reaped_store()
    now = utcnow()
    alive = store.daemons.alive(settings.runner.stale_after_s)
    running = store.active_runs()
    last = store.last_scheduled()
    since = known_since(settings.path, store.daemons.last_beat())
    upcoming, missed = [], []
    for name, job in sorted(settings.jobs.items()):
        if not job.scheduled:
            continue
        at = next_fire(job.schedules, now)
        upcoming.append({"job": name, "next_fire": fire_key(at) if at else None})
        # A fire is missed once it is a heartbeat-and-a-bit old and nobody has claimed it.
        settled = now - timedelta(seconds=settings.runner.heartbeat_s + 60)
        gap = find_missed(job, last.get(name) or since, settled)
        if gap:
            missed.append({"job": name, "latest": fire_key(gap.latest), "count": gap.count})
    problems = store.problems(10)
    watching = [
        {"job": name, "folders": [str(f) for f in job.watch.folders], "files": store.files.counts(name)}
        for name, job in sorted(settings.jobs.items())
        if job.watch is not None
    ]
    queues = _queues(settings, alive, store.skipped_since(now - timedelta(hours=1)), now)
    if as_json:
        _print_json(
            {
                "daemons": [
                    {**d, "heartbeat_age_s": (now - d["heartbeat_at"]).total_seconds()} for d in alive
                ],
                "jobs": queues,
                "running": [r.to_json() for r in running],
                "next": upcoming,
                "missed": missed,
                "watching": watching,
                "problems": [r.to_json() for r in problems],
            }
        )
        return
    click.echo("DAEMONS")
    _print_table(
        ["ID", "HOST", "PID", "STARTED", "HEARTBEAT"],
        [
            [
                d["id"],
                d["host"],
                d["pid"],
                _local(d["started_at"]),
                f"{(now - d['heartbeat_at']).total_seconds():.0f}s ago",
            ]
            for d in alive
        ],
        empty="  none alive (start one with `runner daemon`, or install crontab lines)",
    )
    for d in alive:
        for note in d.get("notes") or ():
            click.echo(f"  daemon {d['id']}: {note}")
    if queues:
        click.echo("\nQUEUED AND SKIPPED FIRES (skipped: last hour, by reason)")
        _print_table(
            ["JOB", "QUEUED", "OLDEST", "SKIPPED"],
            [
                [
                    q["job"],
                    q["queued"],
                    _seconds(q["oldest_queued_age_s"]),
                    ", ".join(f"{n} {reason}" for reason, n in sorted(q["skipped_last_hour"].items())) or "-",
                ]
                for q in queues
            ],
            empty="",
        )
    click.echo("\nRUNNING")
    _print_table(
        ["RUN", "JOB", "TRIGGER", "STARTED", "HOST", "PID"],
        [[r.id, r.job, r.trigger, _local(r.started_at), r.host, r.pid] for r in running],
        empty="  nothing running",
    )
    click.echo("\nNEXT FIRES")
    _print_table(
        ["JOB", "NEXT (LOCAL)"],
        [
            [
                u["job"],
                _local(datetime.fromisoformat(u["next_fire"].replace("Z", "+00:00")))
                if u["next_fire"]
                else "-",
            ]
            for u in upcoming
        ],
        empty="  no scheduled jobs",
    )
    if missed:
        click.echo("\nMISSED (no scheduler ran these fires)")
        _print_table(
            ["JOB", "LATEST MISSED", "COUNT"],
            [
                [m["job"], _local(datetime.fromisoformat(m["latest"].replace("Z", "+00:00"))), m["count"]]
                for m in missed
            ],
            empty="",
        )
    if watching:
        click.echo("\nWATCHED FOLDERS (files: done / claimed or waiting for a retry / given up)")
        _print_table(
            ["JOB", "DONE", "WAITING", "FAILED", "FOLDERS"],
            [
                [
                    w["job"],
                    w["files"].get("done", 0),
                    w["files"].get("pending", 0) + w["files"].get("claimed", 0),
                    w["files"].get("failed", 0),
                    " ".join(w["folders"]),
                ]
                for w in watching
            ],
            empty="",
        )
    click.echo("\nRECENT PROBLEMS")
    _print_table(
        ["RUN", "JOB", "STATUS", "WHEN", "ERROR"],
        [[r.id, r.job, r.status, _local(r.ended_at or r.queued_at), r.error or ""] for r in problems],
        empty="  none",
    )


def _queues(
    settings: Any, alive: list[dict[str, Any]], skipped: dict[str, dict[str, int]], now: datetime
) -> list[dict[str, Any]]:
    """Per job that has any: fires waiting in live daemons (how many, the oldest one's age) and
    fires skipped in the last hour, by reason."""
    waiting: dict[str, dict[str, Any]] = {}
    for d in alive:
        for job, q in (d.get("queues") or {}).items():
            entry = waiting.setdefault(job, {"queued": 0, "oldest": None})
            entry["queued"] += q["queued"]
            oldest = datetime.fromisoformat(q["oldest"].replace("Z", "+00:00"))
            entry["oldest"] = min(entry["oldest"] or oldest, oldest)
    rows = []
    for job in sorted({*waiting, *skipped} & {*settings.jobs, *skipped}):
        entry = waiting.get(job, {"queued": 0, "oldest": None})
        age = max(0.0, (now - entry["oldest"]).total_seconds()) if entry["oldest"] else None
        rows.append(
            {
                "job": job,
                "queued": entry["queued"],
                "oldest_queued_age_s": age,
                "skipped_last_hour": skipped.get(job, {}),
            }
        )
    return rows


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def catchup(app: App, as_json: bool) -> int:
    """Run, once each, the cron fires missed while this machine was down (crontab's @reboot line).

    For every cron-scheduled job, the newest fire since its last recorded run that is still within
    the job's catchup window runs once, marked late; older misses are recorded as skipped.
    """
    import subprocess

    from runner.catchup import find_missed
    from runner.execution import record_missed
    from runner.models import utcnow
    from runner.systemd import runner_executable
    from runner.triggers import CronSchedule, fire_key

    settings = app.settings
    store = app.reaped_store()
    now = utcnow()
    last = store.last_scheduled()
    rows, children = [], []
    for name, job in sorted(settings.jobs.items()):
        crons = tuple(s for s in job.schedules if isinstance(s, CronSchedule))
        missed = find_missed(job, last.get(name), now) if crons else None
        if missed is None:
            continue
        from runner.context import Fire

        fire = Fire("cron", fire_key(missed.latest), missed.latest, late=True)
        if not missed.runnable:
            record_missed(store, name, fire, missed.reason(job.catchup_s))
            rows.append({"job": name, "fire": fire.key, "action": "recorded as missed"})
            continue
        command = [
            runner_executable(),
            "--config",
            str(settings.path),
            "run",
            name,
            "--from-cron",
            "--fire-at",
            fire.key,
            "--late",
        ]
        children.append((name, fire.key, subprocess.Popen(command, stdout=subprocess.DEVNULL)))
    worst = 0
    for name, key, child in children:
        code = child.wait()
        worst = max(worst, 1 if code not in (0, 3) else 0)
        rows.append({"job": name, "fire": key, "action": f"ran late, exit {code}"})
    if as_json:
        _print_json(rows)
    else:
        _print_table(
            ["JOB", "FIRE (UTC)", "ACTION"],
            [[r["job"], r["fire"], r["action"]] for r in rows],
            empty="nothing missed",
        )
    return worst


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
        _print_json({"block": block.text, "lines": lines, "notes": list(block.notes)})
        return
    click.echo(block.text, nl=False)
    for note in block.notes:
        click.echo(f"runner: {note}", err=True)


CRON_D_HELP = (
    "Write our block (with a user field) into an /etc/cron.d file instead of your crontab. "
    "Debian's cron ignores names with dots: use e.g. /etc/cron.d/runner."
)


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


# --- output helpers -----------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    click.echo(jsonsafe.dumps(data, indent=2))


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> None:
    rows = [[_text(cell) for cell in row] for row in rows]
    if not rows:
        click.echo(empty)
        return
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])  # the last column is free text: no padding
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _local(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 60 else f"{int(value // 60)}m{int(value % 60):02d}s"


def _finish(call: Any) -> None:
    """Run a command, turning user errors into one line on stderr and an exit code."""
    try:
        code = call()
    except RunnerError as exc:
        click.echo(f"runner: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("runner: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
        click.echo(f"runner: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"runner: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)


def config_first(argv: list[str]) -> list[str]:
    """`runner list --config X` means `runner --config X list`: move the first --config to the front
    (anything after a `--` is left alone)."""
    end = argv.index("--") if "--" in argv else len(argv)
    for at, arg in enumerate(argv[:end]):
        if arg == "--config" and at + 1 < end:
            return [arg, argv[at + 1], *argv[:at], *argv[at + 2 :]]
        if arg.startswith("--config="):
            return [arg, *argv[:at], *argv[at + 1 :]]
    return argv


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    # A crontab line pays start-up on every fire: no collections while we import and set up
    # (execution re-enables them before the job starts), and none of everything at exit.
    gc.disable()
    try:
        args = config_first(list(sys.argv[1:] if argv is None else argv))
        _finish(lambda: cli.main(args=args, prog_name="runner", standalone_mode=False))
    finally:
        gc.freeze()
