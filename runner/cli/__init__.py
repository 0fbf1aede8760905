"""The `runner` command: parse arguments, call one engine function, format the result.

app.py holds the group and the entry point; each other module holds the commands of one concern
(run, jobs, history, files, ops) and registers them on the group when imported here."""

from __future__ import annotations

from runner.cli import files, history, jobs, ops, prune, run  # noqa: F401 (each registers its commands)
from runner.cli.app import App, cli, config_first, main
from runner.cli.run import run_module

__all__ = ["App", "cli", "config_first", "main", "run_module"]
