"""INI file -> validated, frozen settings (`[runner]` and one `[job:NAME]` per configured job).

Every key is read through one `SectionReader`, so every mistake is reported the same way: one line
naming the file, the section, the key and its value, and what was expected."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from runner.durations import DurationTooLong, format_duration, parse_duration
from runner.errors import ConfigError
from runner.ini import JOB_PREFIX, NOTIFY_PREFIX, read_sections
from runner.settings import (
    CONTAIN_CHOICES,
    DEFAULT_CATCHUP_S,
    DEFAULT_IGNORE,
    DEFAULT_KEEP_LOGS,
    DEFAULT_KEEP_RUNS,
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_MAX_LOG_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PATTERNS,
    DEFAULT_PRUNE_EVERY_S,
    SECRET_MASK,
    WATCH_MODES,
    JobSettings,
    Overlap,
    Retention,
    RunnerSettings,
    Settings,
    WatchSettings,
)

if TYPE_CHECKING:
    from runner.channels import Alerts, Channel
    from runner.triggers import Schedule

__all__ = [
    "JOB_KEYS",
    "RUNNER_KEYS",
    "SectionReader",
    "find_config",
    "format_size",
    "job_name_problem",
    "load_settings",
    "parse_size",
    "sqlite_path",
    "system_timezone",
]

# Alert keys (runner.channels reads them; it is imported only by a config that sets one).
ALERT_KEYS = {
    "notify": "[notify:NAME] sections told of failures, recoveries and missed fires (none: nobody)",
    "notify_every": "at most one failure notification per channel within this (0 = every failure)",
    "notify_timeout": "longest one notification may take to deliver",
    "ping_timeout": "longest one dead-man ping may take",
}
JOB_ALERT_KEYS = {**ALERT_KEYS, "ping_url": "dead-man URL: pinged URL/start, then URL or URL/fail"}
DEFAULT_CONFIG = Path("config/runner.ini")
CONFIG_ENV = "RUNNER_CONFIG"
RUNNER_KEYS = {
    "database": "SQLAlchemy URL of the run history",
    "var_dir": "folder for the embedded database, logs and saved files",
    "log_dir": "folder for one log file per run",
    "timezone": "IANA timezone schedules are evaluated in",
    "max_workers": "how many jobs the daemon runs at once",
    "job_packages": "Python packages whose modules define jobs",
    "heartbeat": "how often a running job's supervisor reports it is alive",
    "stale_after": "how old a heartbeat may get before the run counts as lost",
    "kill_grace": "how long a job may take to stop after SIGTERM before SIGKILL",
    "jitter": "default random delay added to each scheduled fire",
    "catchup": "default for how late a missed fire may still run (0 = never)",
    "shutdown_grace": "how long the daemon lets running jobs finish when it stops",
    "lock_timeout": "how long a write waits for another writer of the database before giving up",
    "contain": "how every process a job starts is kept within reach: subreaper or cgroup",
    "data_database": "SQLAlchemy URL for the jobs' own tables and state (default: beside the history)",
    "max_log_bytes": "largest a run's log may grow: beyond it the head and the tail are kept (0 = no cap)",
    **ALERT_KEYS,
    "metrics_listen": "HOST:PORT where `runner daemon` serves Prometheus metrics (unset: no endpoint)",
    "metrics_textfile": "a *.prom file `runner run` rewrites for node_exporter's textfile collector",
    "keep_runs": "default history kept per job: an age (90d), a count (50000), both (90d, 50000) or forever",
    "keep_logs": "default run logs kept per job: an age (30d), a count (10000), both or forever",
    "prune_every": "how often the daemon applies keep_runs and keep_logs (0 = never; see `runner prune`)",
}
JOB_KEYS = {
    "uses": "package.module:function that implements the job",
    "timeout": "longest a run may take before it is stopped",
    "retries": "how many more attempts after a failure",
    "retry_backoff": "least wait before the first retry; doubles each time, up to 25% jitter on top",
    "overlap": "what a fire does while the previous run still runs: skip, queue or allow",
    "max_log_bytes": "largest a run's log may grow (default: [runner] max_log_bytes)",
    "max_queue": "with overlap = queue: most fires waiting for the previous run; more are skipped",
    "keep_runs": "this job's history kept: an age (90d), a count (50000), both or forever",
    "keep_logs": "this job's run logs kept: an age (30d), a count (10000), both or forever",
    "description": "one line shown by `runner list`",
    "schedule": "when it fires: 'cron M H DoM Mon DoW', 'every 15m' or 'at 2026-12-01 09:00', one a line",
    "timezone": "IANA timezone its schedule is evaluated in (default: [runner] timezone)",
    "jitter": "random delay added to each scheduled fire",
    "catchup": "how late a missed fire may still run (0 = never)",
    "watch": "folder(s) whose new files fire the job, one a line or separated by spaces",
    "patterns": "file names that fire it (default *)",
    "ignore": "file names that never fire it (default *.part *.tmp *.crdownload *.swp *~ .*)",
    "recursive": "watch subfolders too (true/false)",
    "settle": "how long a file without a close event must stay unchanged to count as complete",
    "batch": "most files handed to one run",
    "watch_mode": "events (inotify) or polling (NFS/SMB shares, some containers)",
    "rescan": "how often the folders are listed in full, to catch anything events missed",
    "follow_symlinks": "hand out symlinks whose target is a regular file inside a watched folder (true/false)",
    **JOB_ALERT_KEYS,
}
WATCH_KEYS = ("patterns", "ignore", "recursive", "settle", "batch", "watch_mode", "rescan", "follow_symlinks")
# Bounds (documented in the README): a value outside them is a typo.
MIN_HEARTBEAT_S = 0.1  # a heartbeat is a database write
MIN_RESCAN_S = 1.0  # a rescan lists whole folders
MIN_MAX_LOG_BYTES = 16 * 1024
MAX_JOB_NAME_CHARS = 200  # the history's job columns (PostgreSQL enforces the length)
JOB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
MAX_WORKERS = 1024
MAX_RETRIES = 100
MAX_QUEUE = 1000
MAX_BATCH = 100_000
MIN_KEEP_AGE_S = 3600.0  # keep_runs/keep_logs: a shorter age is a typo (and would race running jobs)
MAX_KEEP_COUNT = 1_000_000_000
MIN_PRUNE_EVERY_S = 1.0
_KEEP_EXPECTED = "expected an age like 90d, a count like 50000, both (90d, 50000) or forever"

_USES = re.compile(r"[\w.]+(:\w+)?")
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,20}")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")
_CONTROL_PROBLEM = "holds a newline or control character; a path or URL must be one plain line"

_Choice = TypeVar("_Choice", bound=str)
_Default = TypeVar("_Default")


def parse_size(text: str) -> int:
    """'50MiB', '200k', '1G', '4096' -> bytes (K, M, G are powers of 1024, with or without 'iB'/'B')."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(text)
    return int(float(found.group(1)) * 1024 ** " kmgt".index(found.group(2).lower() or " "))


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.4g}{unit}"
    return f"{size}B"


def system_timezone() -> str:
    """The machine's IANA timezone name (TZ, /etc/timezone, /etc/localtime), else UTC."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and "/" in tz and not tz.startswith("/"):
        return tz
    try:
        name = Path("/etc/timezone").read_text().strip()
        if name:
            return name
    except OSError:
        pass
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return "UTC"


def find_config(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        path, how = Path(explicit), "--config"
    elif os.environ.get(CONFIG_ENV):
        path, how = Path(os.environ[CONFIG_ENV]), f"${CONFIG_ENV}"
    else:
        path, how = DEFAULT_CONFIG, "default"
    if not path.is_file():
        hint = (
            "pass --config PATH or set RUNNER_CONFIG"
            if how == "default"
            else f"check the path given by {how}"
        )
        raise ConfigError(f"config file not found ({hint})", path=path)
    return path.resolve()


def load_settings(explicit: str | os.PathLike[str] | None = None) -> Settings:
    """Find, read, interpolate and validate the INI file (job functions are checked later)."""
    path = find_config(explicit)
    sections, unusable = read_sections(path)
    for name in sections:
        if name != "runner" and not name.startswith((JOB_PREFIX, NOTIFY_PREFIX)):
            raise ConfigError(
                "unknown section; expected [runner], [job:NAME] or [notify:NAME]", path=path, section=name
            )
    channels = _channels(path, sections, unusable)
    runner = _runner_settings(SectionReader(path, "runner", sections.get("runner", {})), channels)
    jobs: dict[str, JobSettings] = {}
    for section, values in sections.items():
        if section.startswith(JOB_PREFIX):
            name = section[len(JOB_PREFIX) :].strip()
            if problem := job_name_problem(name):
                raise ConfigError(problem, path=path, section=section)
            if name in jobs:
                raise ConfigError(
                    f"a second section for job {name} (spaces in section names do not count)",
                    path=path,
                    section=section,
                )
            jobs[name] = _job_settings(name, SectionReader(path, section, values), runner, channels)
    frozen = {k: MappingProxyType(dict(v)) for k, v in sections.items()}
    return Settings(
        path,
        runner,
        MappingProxyType(jobs),
        MappingProxyType(frozen),
        MappingProxyType(unusable),
        MappingProxyType(channels),
    )


def _channels(
    path: Path, sections: Mapping[str, Mapping[str, str]], unusable: dict[str, str]
) -> dict[str, Channel]:
    """The [notify:NAME] sections; one whose ${env:NAME} is unset here fails its deliveries."""
    names = [s for s in (*sections, *unusable) if s.startswith(NOTIFY_PREFIX)]
    if not names:
        return {}
    from runner.channels import UnusableChannel, read_channel  # not paid by a config without any

    channels: dict[str, Channel] = {}
    for section in names:
        name = section[len(NOTIFY_PREFIX) :].strip()
        if problem := job_name_problem(name):
            raise ConfigError(problem.replace("job names", "notify names"), path=path, section=section)
        if section in unusable:
            channels[name] = UnusableChannel(name, unusable.pop(section))
        else:
            channels[name] = read_channel(name, SectionReader(path, section, sections[section]))
    return channels


def _alerts(
    reader: SectionReader, channels: Mapping[str, Channel], defaults: Alerts | None, *, job: bool
) -> Alerts | None:
    """The alert keys of [runner] (`job` False: the defaults) or of a job section over them; None
    when nothing is set (runner.channels is then never imported)."""
    if defaults is None and not any(key in reader for key in (JOB_ALERT_KEYS if job else ALERT_KEYS)):
        return None
    from runner.channels import Alerts, read_alerts

    alerts = read_alerts(reader, channels, defaults or Alerts(), job=job)
    return alerts if alerts.active or not job else None


def job_name_problem(name: str) -> str | None:
    """Why `name` cannot be a job's name (it goes into crontab lines, log paths and a 200-character
    column), or None."""
    if not JOB_NAME.fullmatch(name):
        return "job names use letters, digits, '_', '-' and '.'"
    if len(name) > MAX_JOB_NAME_CHARS:
        return f"job names are at most {MAX_JOB_NAME_CHARS} characters"
    return None


class SectionReader:
    """One section's values, read key by key into typed values (click's `ParamType`s are the model).

    An absent key gives the default; a present one must be valid, or the reader raises a
    ConfigError naming the file, section, key and value."""

    def __init__(self, path: Path, section: str, values: Mapping[str, str]) -> None:
        self.path = path
        self.section = section
        self.values = values

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def error(self, key: str, message: str, *, value: str | None = None) -> ConfigError:
        """The error to raise for `key` (the value is shown when given)."""
        return ConfigError(message, path=self.path, section=self.section, key=key, value=value)

    def invalid(self, key: str, expected: str) -> ConfigError:
        """The error to raise for `key`, showing its value as written."""
        return self.error(key, expected, value=self.values.get(key))

    def refuse_unknown(self, known: Iterable[str]) -> None:
        known = sorted(known)
        for key in self.values:
            if key not in known:
                raise self.error(key, f"unknown key; expected one of: {', '.join(known)}")

    def raw(self, key: str, default: str | None = None) -> str | None:
        """The value as written (after interpolation)."""
        return self.values.get(key, default)

    def text(self, key: str, default: str | None = None) -> str | None:
        """The value without surrounding blanks; `default` when absent or blank."""
        return self.values.get(key, "").strip() or default

    def folder(self, key: str, default: Path) -> Path:
        """A path, relative to the config file's folder; one plain line."""
        value = self.values.get(key, "").strip()
        if _CONTROL.search(value):
            raise self.error(key, _CONTROL_PROBLEM, value=value)
        return (self.path.parent / value).resolve() if value else default

    def duration(
        self, key: str, default: _Default = None, *, minimum: float | None = None
    ) -> float | _Default:
        """Seconds, from '90s', '15m', '1h30m', '500ms' or a bare number."""
        if key not in self.values:
            return default
        try:
            seconds = parse_duration(self.values[key])
        except DurationTooLong as exc:
            raise self.invalid(key, str(exc)) from None
        except ValueError:
            raise self.invalid(key, "expected a duration like 90s, 15m, 2h") from None
        if minimum is not None and seconds < minimum:
            raise self.invalid(key, f"must be at least {format_duration(minimum)}")
        return seconds

    def size(self, key: str, default: int) -> int:
        """Bytes, from '50MiB', '200KiB' or 0 (no cap)."""
        if key not in self.values:
            return default
        try:
            size = parse_size(self.values[key])
        except ValueError:
            size = -1
        if size != 0 and size < MIN_MAX_LOG_BYTES:
            raise self.invalid(
                key,
                f"expected a size like 50MiB, 200KiB or 0 (no cap), at least {format_size(MIN_MAX_LOG_BYTES)}",
            )
        return size

    def choice(
        self,
        key: str,
        choices: Iterable[_Choice],
        default: _Default,
        *,
        problem: str = "",
        blank: bool = False,
    ) -> _Choice | _Default:
        """One of a few words, in any case (an Enum of str gives its member); `blank`: a blank value
        means the default too."""
        if key not in self.values or (blank and not self.values[key].strip()):
            return default
        word = self.values[key].strip().lower()
        choices = tuple(choices)
        for choice in choices:
            if choice == word:
                return choice
        raise self.invalid(key, f"{problem}expected one of: {', '.join(choices)}")

    def timezone(self, key: str, default: str | None = None) -> str:
        """An IANA timezone name; absent or blank: `default`, else the machine's timezone."""
        from runner.triggers import zone

        name = self.text(key) or default or system_timezone()
        try:
            zone(name)
        except ValueError:
            raise self.error(
                key, "unknown timezone; expected an IANA name like Europe/Berlin or UTC", value=name
            ) from None
        return name

    def retention(self, key: str, default: Retention) -> Retention:
        """keep_runs / keep_logs: an age, a count of runs, both (comma separated), or `forever`."""
        if key not in self.values:
            return default
        text = self.values[key].strip().lower()
        if text == "forever":
            return Retention()
        age: float | None = None
        count: int | None = None
        for part in (p.strip() for p in text.split(",")):
            if part.isascii() and part.isdigit():
                if count is not None:
                    raise self.invalid(key, f"{_KEEP_EXPECTED}; one count at most")
                if not 1 <= int(part) <= MAX_KEEP_COUNT:
                    raise self.invalid(key, f"{_KEEP_EXPECTED}; a count is 1 to {MAX_KEEP_COUNT}")
                count = int(part)
                continue
            try:
                seconds = parse_duration(part)
            except ValueError as exc:  # DurationTooLong too
                hint = f" ({exc})" if isinstance(exc, DurationTooLong) else ""
                raise self.invalid(key, f"{_KEEP_EXPECTED}{hint}") from None
            if age is not None:
                raise self.invalid(key, f"{_KEEP_EXPECTED}; one age at most")
            if seconds < MIN_KEEP_AGE_S:
                raise self.invalid(
                    key, f"{_KEEP_EXPECTED}; an age is at least {format_duration(MIN_KEEP_AGE_S)}"
                )
            age = seconds
        return Retention(age, count)

    # Last in the class body, so that `int` and `bool` in the annotations above are the builtins.
    def int(self, key: str, default: _Default, *, minimum: int, maximum: int) -> int | _Default:
        """A whole number from `minimum` to `maximum`."""
        if key not in self.values:
            return default
        text = self.values[key].strip()
        number = int(text) if _WHOLE_NUMBER.fullmatch(text) else None
        if number is None or not minimum <= number <= maximum:
            raise self.invalid(key, f"expected a whole number from {minimum} to {maximum}")
        return number

    def bool(self, key: str) -> bool:
        """true/false, yes/no, on/off or 1/0; false when absent."""
        word = self.values.get(key, "false").strip().lower()
        if word not in _TRUE + _FALSE:
            raise self.invalid(key, "expected true or false")
        return word in _TRUE


def _runner_settings(reader: SectionReader, channels: Mapping[str, Channel]) -> RunnerSettings:
    reader.refuse_unknown(RUNNER_KEYS)
    base = reader.path.parent
    var_dir = reader.folder("var_dir", (base / "var").resolve())
    log_dir = reader.folder("log_dir", var_dir / "log")
    database = _database_url(reader, var_dir)
    timezone = reader.timezone("timezone")
    max_workers = reader.int("max_workers", 4, minimum=1, maximum=MAX_WORKERS)
    job_packages = _job_packages(reader)
    heartbeat = reader.duration("heartbeat", 5.0, minimum=MIN_HEARTBEAT_S)
    return RunnerSettings(
        var_dir=var_dir,
        log_dir=log_dir,
        database=database,
        timezone=timezone,
        max_workers=max_workers,
        job_packages=job_packages,
        heartbeat_s=heartbeat,
        stale_after_s=_stale_after(reader, heartbeat),
        kill_grace_s=reader.duration("kill_grace", 10.0),
        jitter_s=reader.duration("jitter", 0.0),
        catchup_s=reader.duration("catchup", DEFAULT_CATCHUP_S),
        shutdown_grace_s=reader.duration("shutdown_grace", 30.0),
        lock_timeout_s=reader.duration("lock_timeout", DEFAULT_LOCK_TIMEOUT_S),
        contain=reader.choice("contain", CONTAIN_CHOICES, CONTAIN_CHOICES[0], blank=True),
        data_database=_absolute_sqlite_url(data, base) if (data := reader.text("data_database")) else None,
        max_log_bytes=reader.size("max_log_bytes", DEFAULT_MAX_LOG_BYTES),
        alerts=_alerts(reader, channels, None, job=False),
        metrics_listen=_listen(reader, "metrics_listen"),
        metrics_textfile=_textfile(reader, "metrics_textfile"),
        keep_runs=reader.retention("keep_runs", DEFAULT_KEEP_RUNS),
        keep_logs=reader.retention("keep_logs", DEFAULT_KEEP_LOGS),
        prune_every_s=_prune_every(reader),
    )


def _listen(reader: SectionReader, key: str) -> tuple[str, int] | None:
    """HOST:PORT ([::1]:PORT for IPv6); unset or blank: None."""
    text = reader.text(key)
    if text is None:
        return None
    found = _LISTEN.fullmatch(text)
    port = int(found.group("port")) if found else 0
    if found is None or not 1 <= port <= 65535:
        raise reader.invalid(key, "expected HOST:PORT like 127.0.0.1:9464 (port 1 to 65535)")
    return found.group("host").strip("[]"), port


def _textfile(reader: SectionReader, key: str) -> Path | None:
    """A file named *.prom (node_exporter's textfile collector reads no other), relative to the config."""
    if reader.text(key) is None:
        return None
    path = reader.folder(key, Path())
    if path.suffix != ".prom":
        raise reader.invalid(key, "expected a file name ending in .prom (node_exporter reads no other)")
    return path


def _prune_every(reader: SectionReader) -> float:
    every = reader.duration("prune_every", DEFAULT_PRUNE_EVERY_S)
    if 0 < every < MIN_PRUNE_EVERY_S:
        raise reader.invalid(
            "prune_every", f"expected 0 (never) or at least {format_duration(MIN_PRUNE_EVERY_S)}"
        )
    return every


def _job_packages(reader: SectionReader) -> tuple[str, ...]:
    packages = tuple((reader.raw("job_packages", "jobs") or "").replace(",", " ").split())
    if not packages:
        raise reader.error("job_packages", "expected at least one package name")
    return packages


def _stale_after(reader: SectionReader, heartbeat: float) -> float:
    stale_after = reader.duration("stale_after", max(30.0, heartbeat * 4))
    if stale_after <= heartbeat:
        raise reader.invalid("stale_after", f"must be longer than heartbeat ({format_duration(heartbeat)})")
    return stale_after


def _job_settings(
    name: str, reader: SectionReader, runner: RunnerSettings, channels: Mapping[str, Channel]
) -> JobSettings:
    overlap = reader.choice("overlap", Overlap, None, problem="unknown overlap policy; ")
    uses = reader.raw("uses")
    if uses is not None and not _USES.fullmatch(uses.strip()):
        raise reader.invalid("uses", "expected package.module:function")
    timeout = reader.duration("timeout")
    timezone = reader.timezone("timezone", runner.timezone)
    schedules = _schedules(reader, timezone)
    jitter = reader.duration("jitter", runner.jitter_s)
    catchup = reader.duration("catchup", runner.catchup_s)
    watch = _watch_settings(reader) if reader.text("watch") else None
    if watch is None:
        for key in WATCH_KEYS:
            if key in reader:
                raise reader.error(key, "only means something with `watch = FOLDER`")
    return JobSettings(
        name=name,
        uses=uses.strip() if uses else None,
        timeout_s=timeout or None,  # 0: no timeout
        overlap=overlap,
        description=reader.raw("description"),
        params=MappingProxyType({k: v for k, v in reader.values.items() if k not in JOB_KEYS}),
        timezone=timezone,
        schedules=schedules,
        jitter_s=jitter,
        catchup_s=catchup,
        watch=watch,
        retries=reader.int("retries", None, minimum=0, maximum=MAX_RETRIES),
        max_queue=reader.int("max_queue", DEFAULT_MAX_QUEUE, minimum=1, maximum=MAX_QUEUE),
        retry_backoff_s=reader.duration("retry_backoff"),
        max_log_bytes=reader.size("max_log_bytes", runner.max_log_bytes),
        alerts=_alerts(reader, channels, runner.alerts, job=True),
        keep_runs=reader.retention("keep_runs", runner.keep_runs),
        keep_logs=reader.retention("keep_logs", runner.keep_logs),
    )


def _schedules(reader: SectionReader, timezone: str) -> tuple[Schedule, ...]:
    text = reader.text("schedule")
    if text is None:
        return ()
    from runner.triggers import ScheduleError, parse_schedules  # not paid by jobs without a schedule

    try:
        return parse_schedules(text, timezone)
    except ScheduleError as exc:
        raise reader.error("schedule", str(exc), value=exc.line) from None


def _watch_settings(reader: SectionReader) -> WatchSettings:
    patterns, ignore = reader.text("patterns"), reader.raw("ignore")
    return WatchSettings(
        folders=_watch_folders(reader),
        mode=reader.choice("watch_mode", WATCH_MODES, WATCH_MODES[0]),
        settle_s=reader.duration("settle", 2.0),
        rescan_s=reader.duration("rescan", 600.0, minimum=MIN_RESCAN_S),
        patterns=tuple(patterns.split()) if patterns else DEFAULT_PATTERNS,
        ignore=tuple(ignore.split()) if ignore is not None else DEFAULT_IGNORE,
        recursive=reader.bool("recursive"),
        follow_symlinks=reader.bool("follow_symlinks"),
        batch=reader.int("batch", 100, minimum=1, maximum=MAX_BATCH),
    )


def _watch_folders(reader: SectionReader) -> tuple[Path, ...]:
    import shlex

    base = reader.path.parent
    try:
        return tuple((base / Path(p).expanduser()).resolve() for p in shlex.split(reader.values["watch"]))
    except ValueError as exc:
        raise reader.invalid("watch", f"cannot read the folder list: {exc}") from None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    prefix, sep, rest = url.partition(":///")
    file_part = rest.partition("?")[0]
    if not sep or not prefix.startswith("sqlite") or file_part in ("", ":memory:"):
        return None
    return Path(file_part)


def _database_url(reader: SectionReader, var_dir: Path) -> str:
    """A URL we can hand to SQLAlchemy (relative SQLite paths resolved); errors never show its password."""
    from urllib.parse import urlsplit

    url = reader.text("database") or f"sqlite:///{var_dir / 'runner.db'}"

    def refuse(problem: str) -> ConfigError:
        # Not a URL we can parse, so we cannot tell where its password is: mask ':...@' whole.
        return reader.error("database", problem, value=re.sub(r":[^@]*@", f":{SECRET_MASK}@", url))

    if _CONTROL.search(url):
        raise refuse(_CONTROL_PROBLEM)
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise refuse("expected a SQLAlchemy URL like sqlite:///var/runner.db or postgresql://user@host/db")
    try:
        _ = urlsplit(url).port
    except ValueError:
        raise refuse("the port must be a number from 0 to 65535") from None
    return _absolute_sqlite_url(url, reader.path.parent)


def _absolute_sqlite_url(url: str, base: Path) -> str:
    """Relative SQLite paths are relative to the config file, not to the current directory."""
    prefix, sep, rest = url.partition(":///")
    if not sep or not prefix.startswith("sqlite") or rest.startswith("/") or rest in ("", ":memory:"):
        return url
    file_part, q, query = rest.partition("?")
    return f"{prefix}:///{(base / file_part).resolve()}{q}{query}"
