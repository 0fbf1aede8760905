"""`runner files JOB`: a watch job's files, and handing its failed ones out again."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from runner.cli.app import App, cli, pass_app
from runner.cli.output import EnumChoice, local, print_json, print_table
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.models import ClaimState


def _listed_states() -> list[ClaimState]:
    """The states `--state` takes: a vanished claim is not listed (its file is gone)."""
    from runner.models import ClaimState

    return [s for s in ClaimState if s is not ClaimState.VANISHED]


class _ListByDefault(click.Group):
    """`runner files JOB` is `runner files list JOB`."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
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
@click.option("--state", type=EnumChoice(_listed_states), help="Only files in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_app
def files_list(app: App, job: str, state: str | None, as_json: bool) -> None:
    """List JOB's files: state, attempts (runs that took the file on), when claimed and done."""
    from runner.discovery import require_known_job

    require_known_job(app.settings, job)
    rows = app.reaped_store().files.versions(job, state)
    if as_json:
        print_json(rows)
        return
    what = f"no files of job {job}" + (f" with state {state}" if state else "")
    print_table(
        ["STATE", "ATTEMPTS", "CLAIMED", "DONE", "PATH"],
        [[r["state"], r["attempts"], local(r["claimed_at"]), local(r["done_at"]), r["path"]] for r in rows],
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
    from runner.models import ClaimState

    require_known_job(app.settings, job)
    wanted = [str(p.absolute()) for p in paths] or None
    store = app.reaped_store()
    if wanted:
        failed = {r["path"] for r in store.files.versions(job, ClaimState.FAILED)}
        if unknown := [p for p in wanted if p not in failed]:
            raise RunnerError(
                f"not a failed file of job {job}: {unknown[0]}; see `runner files {job} --state failed`"
            )
    changed = store.files.retry(job, wanted)
    if as_json:
        print_json({"job": job, "retried": changed})
    elif changed:
        click.echo(f"{len(changed)} file(s) of job {job} will be handed out again")
    else:
        click.echo(f"no failed files of job {job}")
