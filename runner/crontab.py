"""The user's crontab: our lines live in one managed block; every other line is kept byte for byte."""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from runner.config import system_timezone
from runner.errors import ConfigError, RunnerError
from runner.private import private_folder, write_private
from runner.settings import Settings
from runner.systemd import check_user, runner_executable
from runner.triggers import CronSchedule

BEGIN = "# BEGIN runner {config}"
END = "# END runner"
SANE_PATH = "/usr/local/bin:/usr/bin:/bin"
# A user crontab may set its own PATH (without /usr/bin): what our lines call is named in full.
ENV_CANDIDATES = ("/usr/bin/env", "/bin/env")
# cron turns a newline into a new line of the table and gives `\%` no way to follow a backslash.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")
# Debian's cron reads only /etc/cron.d names made of these (run-parts rules): no dots.
CRON_D_NAME = re.compile(r"[A-Za-z0-9_-]+")
CRON_D_HEADER = "SHELL=/bin/sh\n"
PRUNE_AT = "17 4 * * *"  # daily retention (`runner prune`): a quiet hour that no DST change skips
ZONE_SAMPLE_STEP_S = 3600  # zones compared hour by hour ...
ZONE_SAMPLE_SPAN_S = 3 * 366 * 86400  # ... from a year ago to two years ahead
# Where crons keep users' tables: Debian's, then cronie's, then the BSDs' and macOS's.
SPOOL_FOLDERS = ("/var/spool/cron/crontabs", "/var/spool/cron", "/var/cron/tabs", "/usr/lib/cron/tabs")
FS_CLOCK_TICK_S = 0.02  # the kernel's timer tick is 1-10 ms (HZ 1000-100)
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
    exe = (
        PLACEHOLDERS["runner"] if placeholders else _safe(runner_executable(), "the runner executable's path")
    )
    config = PLACEHOLDERS["config"] if placeholders else _safe(str(settings.path), "the config file's path")
    if placeholders:
        log_dir = PLACEHOLDERS["log_dir"]
    else:
        log_dir = _safe(str(settings.runner.log_dir), "", settings=settings, key="log_dir")
    if user is not None:
        check_user(user)
    bin_dir = str(Path(exe).parent)
    system_tz = system_timezone()
    prefix = (
        f"{env_executable()} PATH={shlex.quote(bin_dir + ':' + SANE_PATH)} "
        f"{shlex.quote(exe)} --config {shlex.quote(config)}"
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
        if not same_zone(job.timezone, system_tz):
            own = "timezone" in settings.sections.get(f"job:{name}", {})
            raise ConfigError(
                f"timezone {job.timezone} differs from this system's ({system_tz}), and Debian's cron ignores "
                "CRON_TZ; run this job from `runner daemon`, or drop the timezone",
                path=settings.path,
                section=f"job:{name}" if own else "runner",
                key="timezone",
            )
        _safe(name, "job name", settings=settings, section=f"job:{name}")
        log_file = shlex.quote(f"{log_dir}/cron/{name}.log")
        command = _escape(f"{prefix} run {shlex.quote(name)} --from-cron >>{log_file} 2>&1")
        for cron in crons:
            fields = f"{cron.text} {user}" if user else cron.text
            lines.append(f"{fields} {command}")
    prune_log = shlex.quote(f"{log_dir}/cron/prune.log")
    prune = _escape(f"{prefix} prune >>{prune_log} 2>&1")
    lines.append(f"{PRUNE_AT} {user} {prune}" if user else f"{PRUNE_AT} {prune}")
    catchup_log = shlex.quote(f"{log_dir}/cron/catchup.log")
    reboot = _escape(f"{prefix} catchup >>{catchup_log} 2>&1")
    lines.append(f"@reboot {user} {reboot}" if user else f"@reboot {reboot}")
    lines.append(END)
    return Block("\n".join(lines) + "\n", tuple(notes))


def _safe(
    value: str,
    what: str,
    *,
    settings: Settings | None = None,
    section: str = "runner",
    key: str | None = None,
) -> str:
    """`value` if cron can carry it on one line; a newline, a control character or a backslash
    (which would break the `\\%` escape) is refused, naming where it came from."""
    if not _UNSAFE.search(value):
        return value
    problem = "holds a newline, a control character or a backslash, which a crontab line cannot carry"
    if settings is not None:
        raise ConfigError(problem, path=settings.path, section=section, key=key, value=value if key else None)
    raise RunnerError(f"{what} {value!r} {problem}; move it to a plainer path")


def env_executable() -> str:
    for candidate in ENV_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("env")
    if not found:
        raise RunnerError("cannot find the `env` program (looked in /usr/bin and /bin)")
    return str(Path(found).resolve())


def same_zone(a: str, b: str) -> bool:
    """Whether two IANA names mean the same clock (UTC and Etc/UTC do): same zone data, or the same
    UTC offset at every hour from a year ago to two years ahead."""
    if a == b:
        return True
    from datetime import UTC, datetime, timedelta
    from zoneinfo import TZPATH, ZoneInfo

    for root in TZPATH:
        try:
            if (Path(root) / a).read_bytes() == (Path(root) / b).read_bytes():
                return True
        except OSError:
            continue
    za, zb = ZoneInfo(a), ZoneInfo(b)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=366)
    for step in range(0, ZONE_SAMPLE_SPAN_S, ZONE_SAMPLE_STEP_S):
        moment = start + timedelta(seconds=step)
        if moment.astimezone(za).utcoffset() != moment.astimezone(zb).utcoffset():
            return False
    return True


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


def installed_block(current: str, config: str) -> str | None:
    """Our block for `config` as `current` holds it (BEGIN to END, newline-terminated), or None."""
    begin = BEGIN.format(config=config)
    lines = current.splitlines()
    if begin not in lines:
        return None
    start = lines.index(begin)
    end = next((at for at in range(start, len(lines)) if lines[at] == END), len(lines) - 1)
    return "\n".join(lines[start : end + 1]) + "\n"


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


def after_last_change(*paths: str | Path) -> None:
    """Wait (two seconds at most) until the clock's whole second is later than every path's mtime.

    Debian's cron notices a changed table only by an mtime (of the spool folder, /etc/cron.d or the
    file) that differs, in whole seconds, from the one it read at its last look. A change made in
    the same second as an earlier one that cron has already read is therefore never noticed, until
    something else changes. cronie guards against this itself; for Debian's cron we write later."""
    stamps = []
    for path in paths:
        try:
            stamps.append(os.stat(path).st_mtime)
        except OSError:
            continue
    now = time.time()
    latest = int(max(stamps, default=now))  # nothing to read: assume a change this second
    if not int(now) <= latest <= int(now) + 1:
        return  # an older change, or a future mtime (the clock stepped back): no wait helps
    # A file's time comes from the kernel's coarse clock, up to a tick behind time.time().
    while (now := time.time()) < latest + 1 + FS_CLOCK_TICK_S:
        time.sleep(latest + 1 + FS_CLOCK_TICK_S - now)


def write_crontab(text: str) -> None:
    """Install `text` as the user's crontab; an empty table removes the crontab, as before install."""
    after_last_change(*(folder for folder in SPOOL_FOLDERS if os.path.isdir(folder)))
    if not text.strip():
        done = subprocess.run(["crontab", "-r"], capture_output=True, text=True, check=False)
        if done.returncode != 0 and "no crontab" not in done.stderr.lower():
            raise RunnerError(f"crontab -r failed: {done.stderr.strip() or done.returncode}")
        return
    done = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RunnerError(f"crontab refused the new table: {done.stderr.strip() or done.returncode}")


def backup(settings: Settings, text: str, name: str = "crontab") -> Path:
    """A private copy (0600 in a 0700 folder) of what we are about to change."""
    folder = private_folder(private_folder(settings.runner.var_dir, tighten=False) / "crontab-backups")
    path = folder / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}.txt"
    try:
        return write_private(path, text)
    except OSError as exc:
        raise RunnerError(f"cannot save a backup in {folder}: {exc.strerror}") from None


def _cron_log_folder(settings: Settings) -> None:
    private_folder(private_folder(settings.runner.log_dir, tighten=False) / "cron")


def install(settings: Settings) -> tuple[bool, Path | None, Block]:
    """Merge our block into the user's crontab. Returns (changed, backup path, block)."""
    block = render_block(settings)
    _cron_log_folder(settings)
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


def check_cron_d_path(path: Path) -> Path:
    if not CRON_D_NAME.fullmatch(path.name):
        raise RunnerError(
            f"--file {path}: Debian's cron ignores /etc/cron.d names with dots or anything but letters, "
            f"digits, '_' and '-' (run-parts rules); use e.g. {path.parent / 'runner'}"
        )
    if not path.parent.is_dir():
        raise RunnerError(f"--file {path}: folder {path.parent} does not exist")
    _safe(str(path), "--file")
    return path


def _read_cron_d(path: Path) -> str | None:
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise RunnerError(
            f"--file {path}: not a regular file (a link, a device or a folder); refusing to replace it"
        )
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunnerError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _write_cron_d(path: Path, text: str) -> None:
    """Write beside it under a dot name (which cron ignores), then rename into place."""
    after_last_change(path.parent, path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)  # cron refuses group- or world-writable files
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise RunnerError(f"cannot write {path}: {exc.strerror}") from None


def install_cron_d(
    settings: Settings, path: Path, user: str | None, *, force: bool = False
) -> tuple[bool, Path | None, Block]:
    """Our block, with a user field, in a cron.d file; other lines of the file are kept.

    A file that exists without a block of ours is someone else's: refused unless `force`."""
    check_cron_d_path(path)
    block = render_block(settings, user=user or getpass.getuser())
    config = str(settings.path)
    current = _read_cron_d(path)
    if current is not None and BEGIN.format(config=config) not in current.splitlines() and not force:
        raise RunnerError(
            f"{path} exists and holds no block of ours; pass --force to add our block to it "
            "(the file is backed up first)"
        )
    new = merge(CRON_D_HEADER if current is None else current, block, config)
    if new == current:
        return False, None, block
    _cron_log_folder(settings)
    saved = None if current is None else backup(settings, current, f"cron.d-{path.name}")
    _write_cron_d(path, new)
    return True, saved, block


def remove_cron_d(settings: Settings, path: Path) -> tuple[bool, Path | None]:
    """Our block out of a cron.d file; a file left with nothing but our header is deleted."""
    current = _read_cron_d(path)
    if current is None:
        return False, None
    new = remove_block(current, str(settings.path))
    if new == current:
        return False, None
    saved = backup(settings, current, f"cron.d-{path.name}")
    if new.strip() in ("", CRON_D_HEADER.strip()):
        try:
            after_last_change(path.parent, path)
            path.unlink()
        except OSError as exc:
            raise RunnerError(f"cannot remove {path}: {exc.strerror}") from None
    else:
        _write_cron_d(path, new)
    return True, saved
