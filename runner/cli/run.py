"""`runner run JOB` (and `python -m jobs.NAME`): a job's parameters become options, the run goes
through the one execution path, its outcome is printed."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from runner import jsonsafe
from runner.cli.app import App, cli
from runner.cli.output import finish, print_json
from runner.errors import EXIT_USAGE, RunnerError

if TYPE_CHECKING:
    from runner.context import Fire
    from runner.execution import Outcome
    from runner.jobapi import JobSpec
    from runner.params import ParamSpec
    from runner.settings import Settings

RUN_HELP = """Run JOB now, supervised and recorded in the history.

Parameters come from the job's [job:JOB] section, then -p key=value, then --key value options
(`runner run JOB --help` lists them). A command line is visible to every user in `ps` for the
whole run: pass secrets as -p key=@FILE (read from FILE) or ${env:NAME} in the config. Exit status: 0 succeeded, 1 the job failed, 2 bad usage or
config, 3 not started (the same fire already ran, or the previous run still holds the lock)."""
RESERVED = {"param", "as_json", "json", "help", "from_cron", "fire_at", "late", "config"}


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
    return run_job(ctx.obj, job, list(args))


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
        return run_job(App(config), main_module_job(module), args)

    finish(go)


def run_job(app: App, job: str, args: list[str]) -> int:
    """Parse the job's options, bind its parameters, run it once (with retries) and print how it went."""
    from runner.discovery import config_origin, find_job

    settings = app.settings
    spec = find_job(settings, job)
    try:
        options = job_command(spec).main(args=args, prog_name=f"runner run {job}", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    if not isinstance(options, dict):  # --help was printed
        return options or 0
    from runner.fires import fire_of
    from runner.params import bind, parse_assignments

    layers = [
        (config_origin(settings, job), spec.config_params),
        ("-p", parse_assignments(options.pop("param"))),
    ]
    _refuse_other_watched_folder(settings, spec, layers[1][1], options)
    as_json = options.pop("as_json")
    fire = fire_of(
        settings,
        job,
        lambda: app.store,
        from_cron=options.pop("from_cron"),
        fire_at=options.pop("fire_at"),
        late=options.pop("late"),
    )
    for name, value in options.items():
        if value is not None:
            layers.append((f"--{name.replace('_', '-')}", {name: value}))
    params = bind(job, spec.params, layers, base_dir=settings.path.parent)
    return _execute(app, spec, params, fire, as_json)


def _execute(app: App, spec: JobSpec, params: Mapping[str, Any], fire: Fire, as_json: bool) -> int:
    from runner.execution import execute
    from runner.models import Trigger

    settings = app.settings
    live = sys.stderr.isatty() and not as_json
    jitter_s = settings.jobs[spec.name].jitter_s if spec.name in settings.jobs else 0
    if fire.kind == Trigger.CRON and not fire.late and jitter_s:
        time.sleep(random.uniform(0, jitter_s))
    try:
        outcome = execute(spec, params, fire, settings=settings.runner, store=app.store, live=live)
    except RunnerError as exc:
        _write_metrics(app, quiet=True)  # a skipped fire is recorded too; the error is the one line
        if as_json:  # a script reading stdout learns why nothing ran (the line on stderr stays)
            print_json(
                {"run_id": None, "status": "not_started", "exit_code": exc.exit_code, "error": str(exc)}
            )
        raise
    _write_metrics(app)
    _print_outcome(spec.name, outcome, as_json, live)
    return outcome.cli_exit_code


def _write_metrics(app: App, *, quiet: bool = False) -> None:
    """With [runner] metrics_textfile: rewrite it from the history (prometheus_client loads only then)."""
    if app.settings.runner.metrics_textfile is None:
        return
    from runner.metrics import textfile_after_run

    warning = textfile_after_run(app.settings, app.store)
    if warning and not quiet:
        click.echo(f"runner: warning: {warning}", err=True)


def _print_outcome(job: str, outcome: Outcome, as_json: bool, live: bool) -> None:
    from runner.models import RunStatus

    if as_json:
        print_json(
            {
                "run_id": outcome.run_id,
                "first_run_id": outcome.first_run_id,
                "attempts": outcome.attempts,
                "status": outcome.status,
                "exit_code": outcome.exit_code,
                "signal": outcome.signal,
                "error": outcome.error,
                "result": outcome.result,
                "duration_s": round(outcome.duration_s, 3),
                "log_path": str(outcome.log_path) if outcome.log_path else None,
            }
        )
        return
    if outcome.result is not None:
        click.echo(
            outcome.result if isinstance(outcome.result, str) else jsonsafe.dumps(outcome.result, indent=2)
        )
    if outcome.status != RunStatus.SUCCEEDED:
        # An attempt stopped before it started has no log to point at.
        see = f"; see `runner logs {outcome.run_id}`" if outcome.log_path else ""
        click.echo(f"runner: run {outcome.run_id} of {job} {outcome.status}: {outcome.error}{see}", err=True)
    elif live:
        click.echo(f"runner: run {outcome.run_id} succeeded in {outcome.duration_s:.2f}s", err=True)


def _refuse_other_watched_folder(
    settings: Settings, spec: JobSpec, assigned: dict[str, str], options: dict[str, Any]
) -> None:
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


def _shown(name: str, value: Any, annotation: Any) -> str:
    """A parameter's value for --help: secrets and URL passwords masked, then as written (a str
    parameter's text quoted, anything else — paths, numbers, dates — as on the command line)."""
    from runner.settings import SECRET_MASK, mask_value

    masked = mask_value(name, str(value) if isinstance(value, Path) else value)
    if masked == SECRET_MASK:
        return SECRET_MASK
    return repr(str(masked)) if annotation is str else str(masked)


def job_command(spec: JobSpec) -> click.Command:
    """A click command whose options are the job's parameters (all parsed as text, converted later)."""
    from runner.params import strip_param_docs

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
    options += [_param_option(spec, param) for param in spec.params if param.name not in RESERVED]

    def callback(**values: Any) -> dict[str, Any]:
        return {
            k: (("true" if v else "false") if isinstance(v, bool) and k not in RESERVED else v)
            for k, v in values.items()
        }

    doc = strip_param_docs(spec.func.__doc__ or "")
    return click.Command(
        name=spec.name,
        params=options,
        callback=callback,
        help=doc or spec.description or None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        epilog=f"Runs {spec.target} supervised, recorded in `runner history`.",
    )


def _param_option(spec: JobSpec, param: ParamSpec) -> click.Option:
    """The --name option of one job parameter, its help saying its type, default and configured value."""
    from runner.params import REQUIRED
    from runner.settings import is_secret

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
        return click.Option([f"{flag}/--no-{flag[2:]}", param.name], default=None, help=text, flag_value=True)
    return click.Option([flag, param.name], metavar=param.type_name.upper(), help=text)
