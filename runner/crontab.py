"""The user's crontab: our lines live in one managed block; every other line is kept byte for byte."""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from runner.config import Settings, system_timezone
from runner.errors import ConfigError, RunnerError
from runner.systemd import runner_executable
from runner.triggers import CronSchedule

BEGIN = "# BEGIN runner {config}"
END = "# END runner"
SANE_PATH = "/usr/local/bin:/usr/bin:/bin"
PLACEHOLDERS = {
    "runner": "/path/to/.venv/bin/runner",
    "config": "/path/to/config/runner.ini",
    "log_dir": "/path/to/var/log",
}


@dataclass(frozen=True, slots=True)
class Block:
    text: str  # the managed block, BEGIN and END lines included, newline-terminated
    notes: tuple[str, ...]  # jobs left out, and why


def render_block(settings: Settings, *, user: str | None = None, placeholders: bool = False) -> Block:
    """Our crontab lines for every cron-scheduled job of `settings` (with a user field for cron.d)."""
    exe = PLACEHOLDERS["runner"] if placeholders else runner_executable()
    config = PLACEHOLDERS["config"] if placeholders else str(settings.path)
    log_dir = PLACEHOLDERS["log_dir"] if placeholders else str(settings.runner.log_dir)
    bin_dir = str(Path(exe).parent)
    system_tz = system_timezone()
    prefix = (
        f"env PATH={shlex.quote(bin_dir + ':' + SANE_PATH)} {shlex.quote(exe)} --config {shlex.quote(config)}"
    )
    lines = [
        BEGIN.format(config=config),
        "# Managed by `runner crontab install`; edit that config file instead, then install again.",
    ]
    notes = []
    for name in sorted(settings.jobs):
        job = settings.jobs[name]
        crons = [s for s in job.schedules if isinstance(s, CronSchedule)]
        others = [s for s in job.schedules if not isinstance(s, CronSchedule)]
        if others:
            notes.append(
                f"job {name}: {', '.join(map(str, others))} needs `runner daemon` (cron has no such schedule)"
            )
        if not crons:
            continue
        if job.timezone != system_tz:
            raise ConfigError(
                f"timezone {job.timezone} differs from this system's ({system_tz}), and Debian's cron ignores "
                "CRON_TZ; run this job from `runner daemon`, or drop its timezone",
                path=settings.path,
                section=f"job:{name}",
                key="timezone",
            )
        log_file = shlex.quote(f"{log_dir}/cron/{name}.log")
        command = _escape(f"{prefix} run {shlex.quote(name)} --from-cron >>{log_file} 2>&1")
        for cron in crons:
            fields = f"{cron.text} {user}" if user else cron.text
            lines.append(f"{fields} {command}")
    catchup_log = shlex.quote(f"{log_dir}/cron/catchup.log")
    reboot = _escape(f"{prefix} catchup >>{catchup_log} 2>&1")
    lines.append(f"@reboot {user} {reboot}" if user else f"@reboot {reboot}")
    lines.append(END)
    return Block("\n".join(lines) + "\n", tuple(notes))


def _escape(command: str) -> str:
    """cron turns an unescaped % into a newline (stdin for the command)."""
    return command.replace("%", "\\%")


def merge(current: str, block: Block, config: str) -> str:
    """`current` with our block for `config` replaced (or appended), everything else untouched."""
    kept, inserted = _without_block(current, config)
    if inserted is None:
        if kept and not kept.endswith("\n"):
            kept += "\n"
        return kept + block.text
    return kept[:inserted] + block.text + kept[inserted:]


def remove_block(current: str, config: str) -> str:
    return _without_block(current, config)[0]


def _without_block(current: str, config: str) -> tuple[str, int | None]:
    begin = BEGIN.format(config=config)
    out: list[str] = []
    position: int | None = None
    inside = False
    for line in current.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if not inside and stripped == begin:
            inside = True
            position = sum(len(x) for x in out)
            continue
        if inside:
            if stripped == END:
                inside = False
            continue
        out.append(line)
    if inside:
        raise RunnerError(f"crontab has '{begin}' without '{END}'; fix it with `crontab -e` first")
    return "".join(out), position


def read_crontab() -> str:
    try:
        done = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RunnerError(
            "`crontab` is not installed; install cron (apt install cron) or use `runner daemon`"
        ) from None
    if done.returncode != 0:
        if "no crontab" in done.stderr.lower():
            return ""
        raise RunnerError(f"crontab -l failed: {done.stderr.strip()}")
    return done.stdout


def write_crontab(text: str) -> None:
    done = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RunnerError(f"crontab refused the new table: {done.stderr.strip() or done.returncode}")


def backup(settings: Settings, text: str) -> Path:
    folder = settings.runner.var_dir / "crontab-backups"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crontab.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}.txt"
    path.write_text(text)
    return path


def install(settings: Settings) -> tuple[bool, Path | None, Block]:
    """Merge our block into the user's crontab. Returns (changed, backup path, block)."""
    block = render_block(settings)
    (settings.runner.log_dir / "cron").mkdir(parents=True, exist_ok=True)
    current = read_crontab()
    new = merge(current, block, str(settings.path))
    if new == current:
        return False, None, block
    saved = backup(settings, current)
    write_crontab(new)
    return True, saved, block


def remove(settings: Settings) -> tuple[bool, Path | None]:
    current = read_crontab()
    new = remove_block(current, str(settings.path))
    if new == current:
        return False, None
    saved = backup(settings, current)
    write_crontab(new)
    return True, saved


def write_cron_d(settings: Settings, path: Path, user: str | None) -> Block:
    """An /etc/cron.d file: our block alone, with the user field."""
    block = render_block(settings, user=user or getpass.getuser())
    (settings.runner.log_dir / "cron").mkdir(parents=True, exist_ok=True)
    header = "SHELL=/bin/sh\n"
    path.write_text(header + block.text)
    return block
