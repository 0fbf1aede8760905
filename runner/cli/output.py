"""How commands print: aligned tables in local time, JSON for scripts, one line per user error."""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import click

from runner import jsonsafe
from runner.errors import RunnerError


class EnumChoice(click.Choice):
    """A choice of an enum's values, loaded when the option is used or shown: the enums live in
    runner.models, which imports SQLAlchemy, and `runner --help` should not pay for that."""

    def __init__(self, load: Callable[[], Iterable[enum.Enum]]) -> None:
        self._load = load
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(str(member.value) for member in self._load())

    @choices.setter
    def choices(self, _value: Sequence[str]) -> None:
        """click.Choice.__init__ sets the choices; ours come from the enum."""


def print_json(data: Any) -> None:
    click.echo(jsonsafe.dumps(data, indent=2))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str) -> None:
    cells = [[text(cell) for cell in row] for row in rows]
    if not cells:
        click.echo(empty)
        return
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])  # the last column is free text: no padding
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def text(value: Any) -> str:
    return "-" if value is None else str(value)


def local(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 60 else f"{int(value // 60)}m{int(value % 60):02d}s"


def finish(call: Callable[[], int | None]) -> None:
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
