"""The `runner` command: parse arguments, call one engine function, print the result."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from runner import __version__
from runner.errors import EXIT_USAGE, RunnerError

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

            self._store = Store(self.settings.runner.database)
        return self._store

    def reaped_store(self):
        """The store, after marking lost the runs whose supervisor is gone."""
        store = self.store
        store.ensure_schema()
        store.reap_lost(self.settings.runner.stale_after_s)
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
    from runner.config import JOB_PREFIX, SECRET_MASK, format_duration, is_secret
    from runner.discovery import find_job
    from runner.params import REQUIRED

    spec = find_job(app.settings, job)
    section = app.settings.printable().get(JOB_PREFIX + job, {})
    params = []
    for param in spec.params:
        configured = spec.config_params.get(param.name)
        if configured is not None and is_secret(param.name):
            configured = SECRET_MASK
        default = None if param.default is REQUIRED else param.default
        if default is not None and is_secret(param.name):
            default = SECRET_MASK
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
    settings = {
        "function": spec.target,
        "timeout": format_duration(spec.timeout_s) if spec.timeout_s else None,
        "retries": spec.retries,
        "retry_backoff": format_duration(spec.retry_backoff_s),
        "overlap": spec.overlap,
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
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="How many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def history(app: App, job: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """Show recent runs, newest first (times in local time)."""
    records = app.reaped_store().history(job, status, limit)
    if as_json:
        _print_json([r.to_json() for r in records])
        return
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
        empty="no runs yet: try `runner run hello`",
    )


@cli.command()
@click.argument("run_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@pass_app
def logs(app: App, run_id: int, follow: bool) -> None:
    """Print the log of one run (its output, its log lines and any traceback)."""
    store = app.reaped_store()
    record = store.get_run(run_id)
    if record is None:
        raise RunnerError(f"no run {run_id}; see `runner history` for run ids")
    from runner.execution import run_log_path

    path = Path(record.log_path or run_log_path(app.settings.runner, record.job, run_id))
    if not path.exists() and record.started_at is None:
        raise RunnerError(f"run {run_id} ({record.status}) has no log: it never started")
    offset = 0
    while True:
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            raise RunnerError(f"log of run {run_id} is gone: {path}") from None
        offset += len(data)
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
        if not follow:
            return
        record = store.get_run(run_id)
        if record is None or (record.status not in ("queued", "running") and offset >= path.stat().st_size):
            return
        time.sleep(0.5)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def check(app: App, as_json: bool) -> int:
    """Validate the config and every job; exit 2 if anything is wrong."""
    from runner.discovery import discover
    from runner.models import SCHEMA_REVISION

    settings = app.settings
    catalog = discover(settings)
    problems = list(catalog.errors)
    problems += [reason for name, reason in catalog.broken.items() if reason not in problems]
    try:
        revision = app.store.schema_revision()
        database = (
            "ok"
            if revision == SCHEMA_REVISION
            else f"at revision {revision or 'none'}; `runner db upgrade` (or any run) brings it to {SCHEMA_REVISION}"
        )
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
    else:
        click.echo(f"config    {settings.path}")
        click.echo(f"jobs      {len(catalog.jobs)} ok: {', '.join(sorted(catalog.jobs)) or '-'}")
        click.echo(f"database  {database}")
        for problem in problems:
            click.echo(f"runner: {problem}", err=True)
    return EXIT_USAGE if problems else 0


@cli.group()
def db() -> None:
    """Manage the run-history database."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Create the tables or migrate them to this version (runs also do this on first use)."""
    before, after = app.store.upgrade()
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to revision {after}")


# --- running ------------------------------------------------------------------------------------

RUN_HELP = """Run JOB now, supervised and recorded in the history.

Parameters come from the job's [job:JOB] section, then -p key=value, then --key value options
(`runner run JOB --help` lists them). Exit status: 0 succeeded, 1 the job failed, 2 bad usage or
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
    if "--config" in args:
        at = args.index("--config")
        config = args[at + 1] if at + 1 < len(args) else None
        del args[at : at + 2]

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
    as_json = options.pop("as_json")
    for name, value in options.items():
        if value is not None:
            layers.append((f"--{name.replace('_', '-')}", {name: value}))
    params = bind(job, spec.params, layers, base_dir=settings.path.parent)

    from runner.context import Fire
    from runner.execution import execute

    live = sys.stderr.isatty() and not as_json
    fire = Fire(kind="manual", key=f"manual:{uuid.uuid4().hex}")
    outcome = execute(spec, params, fire, settings=settings.runner, store=app.store, live=live)
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
                outcome.result if isinstance(outcome.result, str) else json.dumps(outcome.result, indent=2)
            )
        if outcome.status.value != "succeeded":
            click.echo(
                f"runner: run {outcome.run_id} of {job} {outcome.status.value}: {outcome.error}; "
                f"see `runner logs {outcome.run_id}`",
                err=True,
            )
        elif live:
            click.echo(f"runner: run {outcome.run_id} succeeded in {outcome.duration_s:.2f}s", err=True)
    return outcome.cli_exit_code


def _job_command(spec: Any) -> click.Command:
    """A click command whose options are the job's parameters (all parsed as text, converted later)."""
    from runner.params import REQUIRED

    reserved = {"param", "as_json", "json", "help"}
    options: list[click.Parameter] = [
        click.Option(
            ["-p", "--param"],
            multiple=True,
            metavar="KEY=VALUE",
            help="Set a parameter (repeatable).",
        ),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the outcome as JSON."),
    ]
    for param in spec.params:
        if param.name in reserved:
            continue
        flag = "--" + param.name.replace("_", "-")
        default = "required" if param.default is REQUIRED else f"default: {param.default!r}"
        configured = spec.config_params.get(param.name)
        if configured is not None:
            default += f", configured: {configured!r}"
        text = f"[{param.type_name}; {default}] {param.help}".strip()
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
            k: (("true" if v else "false") if isinstance(v, bool) and k != "as_json" else v)
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


# --- output helpers -----------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code or 0)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _finish(lambda: cli.main(args=argv, prog_name="runner", standalone_mode=False))
