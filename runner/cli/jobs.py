"""What the config says: `runner list` (every job), `runner show JOB` (its settings and
parameters) and `runner next` (upcoming fires)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from runner.cli.app import App, cli, pass_app
from runner.cli.output import print_json, print_table, text
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.jobapi import JobSpec
    from runner.settings import JobSettings, Settings

MAX_NEXT_COUNT = 1000  # fires per job `runner next --count` shows


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
        print_json(rows)
        return
    print_table(
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
    from runner.discovery import find_job
    from runner.ini import JOB_PREFIX

    spec = find_job(app.settings, job)
    section = app.settings.printable().get(JOB_PREFIX + job, {})
    params = _parameters(spec)
    settings = _effective_settings(app.settings, spec)
    if as_json:
        print_json(
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
    print_table(
        ["PARAMETER", "TYPE", "DEFAULT", "CONFIGURED", "DESCRIPTION"],
        [
            [
                p["name"],
                p["type"],
                "(required)" if p["required"] else text(p["default"]),
                text(p["configured"]),
                p["help"],
            ]
            for p in params
        ],
        empty="(this job takes no parameters)",
    )


def _parameters(spec: JobSpec) -> list[dict[str, Any]]:
    """The job's parameters as `show` prints them, secret values masked."""
    from runner.params import REQUIRED
    from runner.settings import mask_value

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
    return params


def _effective_settings(settings: Settings, spec: JobSpec) -> dict[str, Any]:
    """The job's settings in effect, the [runner] defaults included (they decide when a fire runs)."""
    from runner.durations import format_duration
    from runner.settings import mask_url_path

    section = settings.jobs.get(spec.name)
    defaults = settings.runner
    alerts = spec.alerts
    notify = {
        "notify": "; ".join(f"{c.name}: {c.describe()}" for c in alerts.channels) or None if alerts else None,
        "notify_every": format_duration(alerts.every_s) if alerts and alerts.channels else None,
        "ping_url": mask_url_path(alerts.ping_url) if alerts and alerts.ping_url else None,
    }
    return {
        "function": spec.target,
        "timeout": format_duration(spec.timeout_s) if spec.timeout_s else None,
        "retries": spec.retries,
        "retry_backoff": format_duration(spec.retry_backoff_s),
        "overlap": spec.overlap,
        "timezone": section.timezone if section else defaults.timezone,
        "jitter": format_duration(section.jitter_s if section else defaults.jitter_s),
        "catchup": format_duration(section.catchup_s if section else defaults.catchup_s),
        **notify,
    }


@cli.command("next")
@click.argument("job", required=False)
@click.option(
    "--count", type=click.IntRange(1, MAX_NEXT_COUNT), default=5, show_default=True, help="Fires per job."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def next_fires(app: App, job: str | None, count: int, as_json: bool) -> None:
    """Show the upcoming fires of scheduled jobs, in local time and UTC, with DST moves flagged."""
    from runner.models import utcnow

    settings = app.settings
    names = [job] if job else sorted(n for n, j in settings.jobs.items() if j.scheduled)
    if job:
        from runner.discovery import require_known_job

        require_known_job(settings, job)
    if job and (job not in settings.jobs or not settings.jobs[job].scheduled):
        raise RunnerError(f"job {job} has no schedule; add `schedule = ...` to its [job:{job}] section")
    now = utcnow()
    result = [_upcoming(name, settings.jobs[name], now, count) for name in names]
    if as_json:
        print_json(result)
        return
    if not result:
        click.echo(
            "no scheduled jobs: add `schedule = cron 0 7 * * mon` (or every 15m) to a [job:NAME] section"
        )
    for entry in result:
        for schedule in entry["schedules"]:
            click.echo(f"{entry['job']}: {schedule['schedule']}  ({schedule['description']})")
        print_table(
            ["LOCAL", "UTC", "NOTE"],
            [[f.pop("shown"), f["utc"], f["dst"] or ""] for f in entry["fires"]],
            empty="  (no more fires)",
        )
        click.echo()


def _upcoming(name: str, section: JobSettings, now: datetime, count: int) -> dict[str, Any]:
    """The next `count` fires of one job, across its schedules, in local time and UTC."""
    from itertools import islice

    from runner.triggers import fire_key, zone

    tz = zone(section.timezone)
    fires = sorted(
        {f.at: f for s in section.schedules for f in islice(s.fires_after(now), count)}.values(),
        key=lambda f: f.at,
    )[:count]
    return {
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
