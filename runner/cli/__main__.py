"""`python -m runner.cli` is the `runner` command (what a unit or crontab line runs when the
console script is not on PATH)."""

from runner.cli import main

main()
