"""`runner doctor`: check a deployment the way a newcomer needs it checked — config, jobs,
database, clock, folders, inotify limits, crontab block, systemd unit, metrics — one finding per
check, each with the fix to apply. Nothing is changed: no database or folder is created."""

from __future__ import annotations

import enum
import os
import shlex
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.settings import Settings
    from runner.store import Store

CLOCK_WARN_S = 1.0  # a skew above this is worth fixing; above stale_after / 2 it breaks leases
INOTIFY_WARN_SHARE = 0.5  # warn when watched folders need more than this share of a limit
INOTIFY_PROC = Path("/proc/sys/fs/inotify")
MAX_COUNTED_FOLDERS = 1_000_000  # a recursive watch's folders are counted up to here
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
CRON_DAEMONS = ("cron", "crond", "fcron")  # Debian's and Ubuntu's; cronie's, dcron's, busybox's; fcron


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # short name: config, jobs, database, ...
    level: Level
    message: str
    fix: str | None = None  # what to do about it (None when nothing needs doing)

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.level.value:<4}  {self.check:<9} {self.message}{fix}"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "level": self.level.value, "message": self.message, "fix": self.fix}


def ok(check: str, message: str) -> Finding:
    return Finding(check, Level.OK, message)


def warn(check: str, message: str, fix: str) -> Finding:
    return Finding(check, Level.WARN, message, fix)


def fail(check: str, message: str, fix: str) -> Finding:
    return Finding(check, Level.FAIL, message, fix)


@dataclass(frozen=True, slots=True)
class Places:
    """Where the installed units are looked for (tests point these at folders of their own)."""

    system_units: Path = SYSTEM_UNIT_DIR
    user_units: Path | None = None  # default: $XDG_CONFIG_HOME/systemd/user or ~/.config/systemd/user

    def unit_dirs(self) -> list[tuple[Path, bool]]:
        """(folder, holds user units)."""
        user = self.user_units
        if user is None:
            config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
            user = Path(config_home) / "systemd" / "user"
        return [(self.system_units, False), (user, True)]


def diagnose(config: str | None, places: Places | None = None) -> Iterator[Finding]:
    """Every finding, in the order a newcomer would fix them. A config that does not load is the
    only finding: everything else depends on it."""
    from runner.config import load_settings

    try:
        settings = load_settings(config)
    except RunnerError as exc:
        yield fail("config", str(exc), "correct the file as the message says, then run `runner doctor` again")
        return
    yield ok("config", f"{settings.path} is valid")
    yield from _jobs(settings)
    store = yield from _database(settings)
    if store is not None:
        yield _clock(settings, store)
        store.engine.dispose()
    yield _folder("var_dir", settings.runner.var_dir)
    yield _folder("log_dir", settings.runner.log_dir)
    yield from _watch(settings)
    yield from _inotify(settings)
    yield _crontab(settings)
    yield from _systemd(settings, places or Places())
    yield from _metrics(settings)


def _runner(settings: Settings, command: str) -> str:
    """The command line that fixes something, for this config file."""
    return f"runner --config {shlex.quote(str(settings.path))} {command}"


def _store(settings: Settings) -> Store:
    from runner.store import Store

    return Store(
        settings.runner.database,
        lock_timeout_s=settings.runner.lock_timeout_s,
        data_url=settings.runner.data_database,
    )


# --- jobs and database ------------------------------------------------------------------------------


def _jobs(settings: Settings) -> Iterator[Finding]:
    from runner.discovery import discover

    catalog = discover(settings)
    problems = list(catalog.errors)
    problems += [reason for reason in catalog.broken.values() if reason not in problems]
    for problem in problems:
        yield fail(
            "jobs",
            problem,
            f"fix the module or the section it names (`{_runner(settings, 'list')}` shows what is broken)",
        )
    if not problems:
        names = sorted(catalog.jobs)
        yield ok("jobs", f"{len(names)} import and bind their settings: {', '.join(names) or '-'}")


def _database(settings: Settings) -> Generator[Finding, None, Store | None]:
    """The database finding; returns the Store when the database answered (`yield from` gives it).
    A SQLite file that does not exist yet is not created: opening a Store would."""
    from runner.config import sqlite_path
    from runner.models import SCHEMA_REVISION

    sqlite_file = sqlite_path(settings.runner.database)
    if sqlite_file is not None and not sqlite_file.exists():
        yield ok(
            "database", f"{sqlite_file} is not created yet: the first run (or `runner db upgrade`) makes it"
        )
        return None
    store = None
    try:
        store = _store(settings)
        revision = store.schema_revision()
    except RunnerError as exc:
        if store is not None:
            store.engine.dispose()
        yield fail(
            "database",
            str(exc),
            "correct [runner] database, or start the database server and let this host reach it",
        )
        return None
    shown = _masked(store.url) if sqlite_file is None else str(sqlite_file)
    if revision == SCHEMA_REVISION:
        yield ok("database", f"{shown} answers, schema at revision {revision}")
    elif revision is None or (revision.isdigit() and revision < SCHEMA_REVISION):
        yield warn(
            "database",
            f"{shown} answers, schema at revision {revision or 'none'} (this runner needs {SCHEMA_REVISION})",
            f"{_runner(settings, 'db upgrade')} (any run also does it)",
        )
    else:
        yield fail(
            "database",
            f"{shown} is at schema revision {revision}, which this runner does not know "
            "(a newer runner migrated it)",
            "install the same runner version on every host that uses this database",
        )
    return store


def _masked(url: str) -> str:
    from runner.settings import mask_url_password

    return mask_url_password(url)


def _clock(settings: Settings, store: Store) -> Finding:
    """This host's clock against the database server's: leases and heartbeats written by one host
    are judged by another's clock."""
    import time

    from runner.store.clock import host_offset

    if not store.url.startswith("postgresql"):
        return ok("clock", "embedded SQLite: this host's clock is the only one (nothing to compare)")
    try:
        started = time.monotonic()
        skew_s = -host_offset(store).total_seconds()  # the server's clock minus this host's
        margin_s = (time.monotonic() - started) / 2
    except RunnerError as exc:
        return fail("clock", f"cannot read the database server's clock: {exc}", "see the database line above")
    off_by = abs(skew_s) - margin_s
    shown = f"this host's clock is {abs(skew_s):.3f}s {'behind' if skew_s > 0 else 'ahead of'} the database server's"
    fix = "keep every host's clock in sync (`timedatectl set-ntp true`, chrony or ntpd)"
    if off_by >= settings.runner.stale_after_s / 2:
        return fail(
            "clock",
            f"{shown}: runs may be judged lost (stale_after is {settings.runner.stale_after_s:g}s)",
            fix,
        )
    if off_by > CLOCK_WARN_S:
        return warn("clock", shown, fix)
    return ok("clock", f"{shown} (within {CLOCK_WARN_S:g}s)")


# --- folders ----------------------------------------------------------------------------------------


def _folder(key: str, path: Path) -> Finding:
    """A folder runner writes (created on first use if missing): it, or the nearest existing
    folder above it, must be a folder this user can write."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    setting = f"[runner] {key}"
    if not existing.is_dir():
        return fail(key, f"{path} cannot be made: {existing} is not a folder", f"point {setting} at a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        return fail(
            key,
            f"{existing} is not writable by this user",
            f"give this user write access to {existing} (chown/chmod), or point {setting} elsewhere",
        )
    if existing != path:
        return ok(key, f"{path} will be created in {existing} (writable)")
    return ok(key, f"{path} is writable")


def _watch(settings: Settings) -> Iterator[Finding]:
    from runner.watch import check_folders

    watched = {name: job.watch for name, job in sorted(settings.jobs.items()) if job.watch is not None}
    for name, watch in watched.items():
        problem = check_folders(watch)
        if problem is None:
            folders = " ".join(str(f) for f in watch.folders)
            yield ok("watch", f"[job:{name}] {folders} readable")
            continue
        missing = [f for f in watch.folders if not f.is_dir()]
        fix = (
            f"mkdir -p {' '.join(shlex.quote(str(f)) for f in missing)}, or correct `watch` in [job:{name}]"
            if missing
            else f"give this user read access to the folder, or correct `watch` in [job:{name}]"
        )
        yield fail("watch", f"[job:{name}] {problem}", fix)
    if not watched:
        yield ok("watch", "no job watches a folder")


def _inotify(settings: Settings) -> Iterator[Finding]:
    """The daemon needs an inotify watch per watched folder (and per subfolder of a recursive
    one) and, through watchdog, an inotify instance per watched folder; both are per-user limits."""
    watches = [job.watch for job in settings.jobs.values() if job.watch and job.watch.mode == "events"]
    if not watches:
        return
    folders = [f for w in watches for f in w.folders]
    needed = {
        "max_user_watches": sum(_folders_under(f) if w.recursive else 1 for w in watches for f in w.folders),
        "max_user_instances": len(folders),
    }
    for name, count in needed.items():
        try:
            limit = int((INOTIFY_PROC / name).read_text())
        except (OSError, ValueError):
            yield ok("inotify", f"fs.inotify.{name} cannot be read here; {count} needed")
            continue
        raise_to = max(count * 4, 524288 if name == "max_user_watches" else 1024)
        fix = (
            f"`sudo sysctl fs.inotify.{name}={raise_to}` (and the same line in /etc/sysctl.d/ to keep it), "
            "or `watch_mode = polling` in the job's section"
        )
        what = f"the watched folders need {count} of fs.inotify.{name} = {limit} (per user, shared with other programs)"
        if count >= limit:
            yield fail("inotify", what, fix)
        elif count > limit * INOTIFY_WARN_SHARE:
            yield warn("inotify", what, fix)
        else:
            yield ok("inotify", what)


def _folders_under(folder: Path) -> int:
    count = 0
    for _root, _dirs, _files in os.walk(folder):
        count += 1
        if count >= MAX_COUNTED_FOLDERS:
            break
    return max(count, 1)


# --- what we install for other programs -------------------------------------------------------------


def _crontab(settings: Settings) -> Finding:
    from runner import crontab

    config = str(settings.path)
    try:
        current = crontab.read_crontab()
    except RunnerError as exc:
        return ok("crontab", f"not used here ({exc}); fine when `runner daemon` fires the jobs")
    installed = crontab.installed_block(current, config)
    if installed is None:
        return ok(
            "crontab", "no block for this config in your crontab (fine when `runner daemon` fires the jobs)"
        )
    fix = _runner(settings, "crontab install")
    try:
        wanted = crontab.render_block(settings).text
    except RunnerError as exc:
        return fail("crontab", f"the installed block cannot be brought up to date: {exc}", "see the message")
    if installed == wanted:
        if not cron_daemon_running():
            return fail(
                "crontab",
                "the installed block matches the config, but no cron daemon runs on this host "
                f"(looked for a process named {', '.join(CRON_DAEMONS)}): its lines never fire",
                "start cron and enable it at boot (`systemctl enable --now cron` on Debian and "
                "Ubuntu, `systemctl enable --now crond` with cronie, `crond` on Alpine), or run "
                f"`{_runner(settings, 'daemon')}` instead",
            )
        return ok("crontab", "the installed block matches the config")
    have, want = set(installed.splitlines()), set(wanted.splitlines())
    gone, new = len(have - want), len(want - have)
    return fail(
        "crontab",
        f"the installed block is stale: {new} line(s) of the config missing from it, "
        f"{gone} line(s) in it no longer configured",
        fix,
    )


def cron_daemon_running(proc: Path = Path("/proc")) -> bool:
    """A cron daemon among this host's (this PID namespace's) processes, not a zombie."""
    for stat in proc.glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().split(" (", 1)[1].rsplit(") ", 1)
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
        if name in CRON_DAEMONS and not rest.startswith(("Z", "X")):
            return True
    return False


def _systemd(settings: Settings, places: Places) -> Iterator[Finding]:
    """Installed units that start this config's daemon, compared with what `runner systemd-unit`
    writes now. A unit of someone else's config is none of our business."""
    from runner.systemd import render_unit

    try:
        probe = render_unit(settings, user_unit=False)
    except RunnerError as exc:
        yield fail("systemd", f"no unit can be written for this config: {exc}", "see the message")
        return
    exec_start = next(line for line in probe.splitlines() if line.startswith("ExecStart="))
    found = False
    for folder, user_unit in places.unit_dirs():
        for unit in sorted(folder.glob("*.service")) if folder.is_dir() else []:
            try:
                text = unit.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if exec_start not in text.splitlines():
                continue
            found = True
            yield _unit_finding(settings, unit, text, user_unit)
    if not found:
        yield ok("systemd", "no installed unit runs this config's daemon (fine when crontab fires the jobs)")


def _unit_finding(settings: Settings, unit: Path, text: str, user_unit: bool) -> Finding:
    from runner.systemd import render_unit

    user = next((line[5:] for line in text.splitlines() if line.startswith("User=")), None)
    wanted = render_unit(settings, user_unit=user_unit, user=user)
    if text == wanted:
        return ok("systemd", f"{unit} matches `runner systemd-unit`")
    if user_unit:
        write = f"{_runner(settings, 'systemd-unit --user')} > {shlex.quote(str(unit))}"
        reload = "systemctl --user daemon-reload"
    else:
        run_as = f" --run-as {shlex.quote(user)}" if user else ""
        write = f"{_runner(settings, 'systemd-unit' + run_as)} | sudo tee {shlex.quote(str(unit))}"
        reload = "sudo systemctl daemon-reload"
    have, want = set(text.splitlines()), set(wanted.splitlines())
    return warn(
        "systemd",
        f"{unit} differs from what `runner systemd-unit` writes now ({len(want - have)} line(s) missing, "
        f"{len(have - want)} extra); lines of your own are fine",
        f"{write} && {reload}, then restart the service",
    )


def _metrics(settings: Settings) -> Iterator[Finding]:
    import importlib.util

    runner = settings.runner
    if runner.metrics_listen is None and runner.metrics_textfile is None:
        yield ok("metrics", "not configured (README: Metrics)")
        return
    if importlib.util.find_spec("prometheus_client") is None:
        yield fail(
            "metrics",
            "metrics are configured but prometheus_client is not installed",
            "pip install 'prometheus_client>=0.26.0' in runner's environment",
        )
        return
    if runner.metrics_listen is not None:
        host, port = runner.metrics_listen
        yield ok("metrics", f"`runner daemon` serves http://{host}:{port}/metrics")
    if runner.metrics_textfile is not None:
        found = _folder("metrics", runner.metrics_textfile.parent)
        if found.level is Level.OK and not runner.metrics_textfile.parent.is_dir():
            found = fail(
                "metrics",
                f"the folder of [runner] metrics_textfile, {runner.metrics_textfile.parent}, does not exist",
                f"mkdir -p {shlex.quote(str(runner.metrics_textfile.parent))} (node_exporter's "
                "--collector.textfile.directory)",
            )
        elif found.level is Level.OK:
            found = ok("metrics", f"`runner run` writes {runner.metrics_textfile}")
        yield found


def exit_code(findings: list[Finding]) -> int:
    from runner.errors import EXIT_USAGE

    return EXIT_USAGE if any(f.level is Level.FAIL for f in findings) else 0


def run_doctor(
    config: str | None, emit: Callable[[Finding], None], places: Places | None = None
) -> list[Finding]:
    """Every finding, each handed to `emit` as soon as it is known (a slow check shows where it is)."""
    findings = []
    for finding in diagnose(config, places):
        emit(finding)
        findings.append(finding)
    return findings
