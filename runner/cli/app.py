"""The `runner` group, what every command needs (App: settings and store, loaded on first use),
and the console-script entry point."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING

import click

from runner.cli.output import finish
from runner.version import __version__

if TYPE_CHECKING:
    from runner.settings import Settings
    from runner.store import Store


class App:
    """What every command needs, loaded on first use: the settings and the run-history store."""

    def __init__(self, config: str | None) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._store: Store | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from runner.config import load_settings

            self._settings = load_settings(self.config)
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            from runner.store import Store

            self._store = Store(
                self.settings.runner.database,
                lock_timeout_s=self.settings.runner.lock_timeout_s,
                data_url=self.settings.runner.data_database,
            )
        return self._store

    def reaped_store(self) -> Store:
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
        finish(lambda: cli.main(args=args, prog_name="runner", standalone_mode=False))
    finally:
        gc.freeze()
