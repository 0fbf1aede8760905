"""INI file -> validated, frozen settings (`[runner]` and one `[job:NAME]` per configured job)."""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from runner.errors import ConfigError

if TYPE_CHECKING:
    from runner.triggers import Schedule
    from runner.watch import WatchSettings

DEFAULT_CONFIG = Path("config/runner.ini")
CONFIG_ENV = "RUNNER_CONFIG"
JOB_PREFIX = "job:"
CONTAIN_CHOICES = ("subreaper", "cgroup")
DEFAULT_LOCK_TIMEOUT_S = 60.0  # how long a write waits for another writer of the database
DEFAULT_MAX_LOG_BYTES = 50 * 1024 * 1024  # a run's log keeps its head and tail beyond this
MIN_MAX_LOG_BYTES = 16 * 1024

OVERLAP_POLICIES = ("skip", "queue", "allow")
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
}
JOB_KEYS = {
    "uses": "package.module:function that implements the job",
    "timeout": "longest a run may take before it is stopped",
    "retries": "how many more attempts after a failure",
    "retry_backoff": "least wait before the first retry; doubles each time, up to 25% jitter on top",
    "overlap": "what a fire does while the previous run still runs: skip, queue or allow",
    "max_log_bytes": "largest a run's log may grow (default: [runner] max_log_bytes)",
    "max_queue": "with overlap = queue: most fires waiting for the previous run; more are skipped",
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
}
DEFAULT_CATCHUP_S = 3600.0
DEFAULT_MAX_QUEUE = 3  # a queue of fires longer than this only ever grows: record them skipped
MAX_QUEUE = 1000
# Bounds (documented in the README): a value outside them is a typo, and some would overflow dates.
MAX_DURATION_S = 366 * 86400.0  # longest duration or interval any setting takes: a year and a day
MIN_INTERVAL_S = 1.0  # shortest `every`: a fire per second is already a busy daemon
MIN_HEARTBEAT_S = 0.1  # a heartbeat is a database write
MIN_RESCAN_S = 1.0  # a rescan lists whole folders
MAX_JOB_NAME_CHARS = 200  # the history's job columns (PostgreSQL enforces the length)
JOB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
MAX_WORKERS = 1024
MAX_RETRIES = 100
MAX_BATCH = 100_000
WATCH_MODES = ("events", "polling")
SECRET_PATTERNS = ("*password*", "*passwd*", "*token*", "*secret*", "*_key", "key")
SECRET_MASK = "***"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_DURATION_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_PROBLEM = "holds a newline or control character; a path or URL must be one plain line"
INLINE_COMMENT_PREFIXES = (";", "#")
# After configparser took off every `;`/`#` comment that follows whitespace, a `;` or `#` glued to
# the value and followed by a space is almost surely a comment missing its space: refuse it.
# `$;` and `$#` are the documented literal forms.
_GLUED_COMMENT = re.compile(r"(?<![\s$])[;#]\s")
# Free text, where "a; b" is prose, not a comment.
_PROSE_KEYS = ("description",)
_MAX_INTERPOLATION_DEPTH = 10
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)\S*@(?=[^@/\s]*(?:[/?#\s]|$))")


def parse_duration(text: str) -> float:
    """'90s', '15m', '2h', '1h30m', '500ms', '1d' or a bare number of seconds -> seconds."""
    text = text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos and text[pos : match.start()].strip():
                break
            value += float(match.group(1)) * _DURATION_UNIT_S[match.group(2)]
            pos = match.end()
        if pos == 0 or text[pos:].strip():
            raise ValueError(text) from None
    if value < 0 or value != value:
        raise ValueError(text)
    if value > MAX_DURATION_S:
        raise DurationTooLong(f"must be at most {format_duration(MAX_DURATION_S)}")
    return value


class DurationTooLong(ValueError):
    """A well-formed duration beyond MAX_DURATION_S."""


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


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def is_secret(key: str) -> bool:
    key = key.lower()
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in SECRET_PATTERNS)


def mask_url_password(text: str) -> str:
    """`scheme://user:PASSWORD@host` -> `scheme://user:***@host` wherever a URL appears in `text`
    (a password may itself hold '@' or '/': everything up to the last '@' before the host goes)."""
    return _URL_PASSWORD.sub(lambda m: m.group(1) + SECRET_MASK + "@", text)


def mask_value(key: str, value: object) -> object:
    """A setting or parameter as it may be printed or stored: secret-looking keys wholly masked,
    URL passwords masked in any text (also inside lists and mappings)."""
    if value is None:
        return None
    if is_secret(key):
        return SECRET_MASK
    if isinstance(value, str):
        return mask_url_password(value)
    if isinstance(value, list | tuple):
        return type(value)(mask_value("", v) for v in value)
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    return value


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


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    database: str
    var_dir: Path
    log_dir: Path
    timezone: str
    max_workers: int
    job_packages: tuple[str, ...]
    heartbeat_s: float
    stale_after_s: float
    kill_grace_s: float
    jitter_s: float = 0.0
    catchup_s: float = DEFAULT_CATCHUP_S
    shutdown_grace_s: float = 30.0
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    data_database: str | None = None  # None: NAME-jobs.db beside a SQLite history, else the same
    contain: str = "subreaper"  # or "cgroup": a cgroup v2 per attempt as well, where one can be made
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES


@dataclass(frozen=True, slots=True)
class JobSettings:
    """One `[job:NAME]` section; None means 'use the @job decorator's default'."""

    name: str
    uses: str | None = None
    timeout_s: float | None = None
    retries: int | None = None
    retry_backoff_s: float | None = None
    overlap: str | None = None
    description: str | None = None
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    schedules: tuple[Schedule, ...] = ()
    timezone: str = "UTC"
    jitter_s: float = 0.0
    catchup_s: float = DEFAULT_CATCHUP_S
    watch: WatchSettings | None = None
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES  # 0: no cap
    max_queue: int = DEFAULT_MAX_QUEUE

    @property
    def scheduled(self) -> bool:
        return bool(self.schedules)


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    runner: RunnerSettings
    jobs: Mapping[str, JobSettings]
    sections: Mapping[str, Mapping[str, str]]
    unusable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # job -> why

    def job(self, name: str) -> JobSettings | None:
        return self.jobs.get(name)

    def printable(self) -> dict[str, dict[str, str]]:
        """Every resolved section with secrets replaced by ***."""
        return {
            section: {
                key: SECRET_MASK if is_secret(key) else mask_url_password(value)
                for key, value in values.items()
            }
            for section, values in self.sections.items()
        }


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
    parser = configparser.ConfigParser(
        interpolation=None, default_section="DEFAULT", inline_comment_prefixes=INLINE_COMMENT_PREFIXES
    )
    try:
        with path.open(encoding="utf-8-sig") as handle:  # editors on Windows start files with a BOM
            parser.read_file(handle)
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0].rstrip(".")
        raise ConfigError(f"not a valid INI file: {first_line}", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=path) from None
    for section in parser.sections():
        for key in parser.options(section):
            if key.startswith("["):
                raise ConfigError(
                    f"malformed section header {key!r}; expected [runner] or [job:NAME]", path=path
                )
    sections, unusable = _interpolate(parser, path)
    for name in sections:
        if name != "runner" and not name.startswith(JOB_PREFIX):
            raise ConfigError("unknown section; expected [runner] or [job:NAME]", path=path, section=name)
    base = path.parent
    runner = _runner_settings(sections.get("runner", {}), path, base)
    jobs = {}
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
            jobs[name] = _job_settings(name, section, values, path, runner)
    frozen = {k: MappingProxyType(dict(v)) for k, v in sections.items()}
    return Settings(
        path, runner, MappingProxyType(jobs), MappingProxyType(frozen), MappingProxyType(unusable)
    )


def job_name_problem(name: str) -> str | None:
    """Why `name` cannot be a job's name (it goes into crontab lines, log paths and a 200-character
    column), or None."""
    if not JOB_NAME.fullmatch(name):
        return "job names use letters, digits, '_', '-' and '.'"
    if len(name) > MAX_JOB_NAME_CHARS:
        return f"job names are at most {MAX_JOB_NAME_CHARS} characters"
    return None


class _EnvMissing(ConfigError):
    """An ${env:NAME} that is not set: it breaks the job that uses it, not every command."""


def _interpolate(
    parser: configparser.ConfigParser, path: Path
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Resolve ${env:NAME}, ${section:key} and ${key} (same section); $$, $; and $# are literal
    $, ; and # (a `;` or `#` after whitespace starts a comment).

    Returns (sections, {job name: why it is unusable}): a job section whose environment variable is
    unset (a crontab line has a bare environment) leaves the other jobs working."""
    raw = {s: {k: parser.get(s, k) for k in parser.options(s)} for s in parser.sections()}
    for section, keys in raw.items():
        for key, value in keys.items():
            if key not in _PROSE_KEYS and (glued := _GLUED_COMMENT.search(value)):
                mark = glued.group()[0]
                raise ConfigError(
                    f"{mark!r} followed by a space looks like a comment; put a space before it to make "
                    f"it one (`value  {mark} comment`), or write ${mark} for a literal {mark}",
                    path=path,
                    section=section,
                    key=key,
                    value=value,
                )

    def resolve(section: str, key: str, depth: int) -> str:
        value = raw[section][key]
        if depth > _MAX_INTERPOLATION_DEPTH:
            raise ConfigError("references nest too deep (a loop?)", path=path, section=section, key=key)

        def substitute(match: re.Match[str]) -> str:
            ref = match.group(1).strip()
            if ref.startswith("env:"):
                name = ref[4:]
                if name not in os.environ:
                    raise _EnvMissing(
                        f"environment variable {name} is not set; export it or change the value",
                        path=path,
                        section=section,
                        key=key,
                    )
                return os.environ[name]
            ref_section, _, ref_key = ref.rpartition(":")
            ref_section = ref_section or section
            ref_key = ref_key.lower()
            if ref_section not in raw or ref_key not in raw[ref_section]:
                raise ConfigError(
                    f"${{{ref}}} refers to a key that does not exist",
                    path=path,
                    section=section,
                    key=key,
                )
            return resolve(ref_section, ref_key, depth + 1)

        parts = value.split("$$")
        return "$".join(_REFERENCE.sub(substitute, _unescape(part)) for part in parts)

    resolved: dict[str, dict[str, str]] = {}
    unusable: dict[str, str] = {}
    for section, keys in raw.items():
        try:
            resolved[section] = {k: resolve(section, k, 0) for k in keys}
        except _EnvMissing as exc:
            if not section.startswith(JOB_PREFIX):
                raise
            unusable[section[len(JOB_PREFIX) :].strip()] = str(exc)
    return resolved, unusable


def _unescape(text: str) -> str:
    return text.replace("$;", ";").replace("$#", "#")


def _runner_settings(values: Mapping[str, str], path: Path, base: Path) -> RunnerSettings:
    for key in values:
        if key not in RUNNER_KEYS and key not in ("timezone",):
            known = ", ".join(sorted(RUNNER_KEYS))
            raise ConfigError(f"unknown key; expected one of: {known}", path=path, section="runner", key=key)

    def get_path(key: str, default: Path) -> Path:
        value = values.get(key, "").strip()
        if _CONTROL.search(value):
            raise ConfigError(_CONTROL_PROBLEM, path=path, section="runner", key=key, value=value)
        return (base / value).resolve() if value else default

    def get_duration(key: str, default: float) -> float:
        value = _duration(values, key, path, "runner")
        return default if value is None else value

    var_dir = get_path("var_dir", (base / "var").resolve())
    log_dir = get_path("log_dir", var_dir / "log")
    database = values.get("database", "").strip() or f"sqlite:///{var_dir / 'runner.db'}"
    _check_database_url(database, path)
    database = _absolute_sqlite_url(database, base)
    timezone = values.get("timezone", "").strip() or system_timezone()
    _check_timezone(timezone, path, "runner")
    max_workers = _int(values, "max_workers", 4, path, "runner", minimum=1, maximum=MAX_WORKERS)
    packages = tuple(values.get("job_packages", "jobs").replace(",", " ").split())
    if not packages:
        raise ConfigError(
            "expected at least one package name", path=path, section="runner", key="job_packages"
        )
    heartbeat = _at_least(
        get_duration("heartbeat", 5.0), MIN_HEARTBEAT_S, values, "heartbeat", path, "runner"
    )
    stale_after = get_duration("stale_after", max(30.0, heartbeat * 4))
    if stale_after <= heartbeat:
        raise ConfigError(
            f"must be longer than heartbeat ({format_duration(heartbeat)})",
            path=path,
            section="runner",
            key="stale_after",
            value=values.get("stale_after"),
        )
    return RunnerSettings(
        database=database,
        var_dir=var_dir,
        log_dir=log_dir,
        timezone=timezone,
        max_workers=max_workers,
        job_packages=packages,
        heartbeat_s=heartbeat,
        stale_after_s=stale_after,
        kill_grace_s=get_duration("kill_grace", 10.0),
        jitter_s=get_duration("jitter", 0.0),
        catchup_s=get_duration("catchup", DEFAULT_CATCHUP_S),
        shutdown_grace_s=get_duration("shutdown_grace", 30.0),
        lock_timeout_s=get_duration("lock_timeout", DEFAULT_LOCK_TIMEOUT_S),
        contain=_choice(values, "contain", CONTAIN_CHOICES, path),
        data_database=_absolute_sqlite_url(values["data_database"].strip(), base)
        if values.get("data_database", "").strip()
        else None,
        max_log_bytes=_default(_size(values, "max_log_bytes", path, "runner"), DEFAULT_MAX_LOG_BYTES),
    )


def _job_settings(
    name: str, section: str, values: Mapping[str, str], path: Path, runner: RunnerSettings
) -> JobSettings:
    def duration(key: str) -> float | None:
        return _duration(values, key, path, section)

    overlap = values.get("overlap")
    if overlap is not None:
        overlap = overlap.strip().lower()
        if overlap not in OVERLAP_POLICIES:
            raise ConfigError(
                f"unknown overlap policy; expected one of: {', '.join(OVERLAP_POLICIES)}",
                path=path,
                section=section,
                key="overlap",
                value=values["overlap"],
            )
    uses = values.get("uses")
    if uses is not None and not re.fullmatch(r"[\w.]+(:\w+)?", uses.strip()):
        raise ConfigError(
            "expected package.module:function", path=path, section=section, key="uses", value=uses
        )
    timeout = duration("timeout")
    if timeout == 0:
        timeout = None
    params = {k: v for k, v in values.items() if k not in JOB_KEYS}
    timezone = values.get("timezone", "").strip() or runner.timezone
    _check_timezone(timezone, path, section)
    schedules: tuple[Schedule, ...] = ()
    if values.get("schedule", "").strip():
        from runner.triggers import parse_schedule

        lines = [line.strip() for line in values["schedule"].splitlines() if line.strip()]
        parsed = []
        for line in lines:
            try:
                parsed.append(parse_schedule(line, timezone))
            except ValueError as exc:
                raise ConfigError(f"{exc}", path=path, section=section, key="schedule", value=line) from None
        schedules = tuple(parsed)
    jitter, catchup = duration("jitter"), duration("catchup")
    watch = _watch_settings(values, path, section, duration) if values.get("watch", "").strip() else None
    if watch is None:
        for key in (
            "patterns",
            "ignore",
            "recursive",
            "settle",
            "batch",
            "watch_mode",
            "rescan",
            "follow_symlinks",
        ):
            if key in values:
                raise ConfigError(
                    "only means something with `watch = FOLDER`", path=path, section=section, key=key
                )
    return JobSettings(
        watch=watch,
        schedules=schedules,
        timezone=timezone,
        jitter_s=runner.jitter_s if jitter is None else jitter,
        catchup_s=runner.catchup_s if catchup is None else catchup,
        name=name,
        uses=uses.strip() if uses else None,
        timeout_s=timeout,
        retries=_int(values, "retries", None, path, section, minimum=0, maximum=MAX_RETRIES),
        max_queue=_int(values, "max_queue", DEFAULT_MAX_QUEUE, path, section, minimum=1, maximum=MAX_QUEUE),
        retry_backoff_s=duration("retry_backoff"),
        overlap=overlap,
        description=values.get("description"),
        params=MappingProxyType(params),
        max_log_bytes=_default(_size(values, "max_log_bytes", path, section), runner.max_log_bytes),
    )


def _watch_settings(values: Mapping[str, str], path: Path, section: str, duration) -> WatchSettings:
    import shlex

    from runner.watch import DEFAULT_IGNORE, DEFAULT_PATTERNS, WatchSettings

    try:
        folders = tuple((path.parent / Path(p).expanduser()).resolve() for p in shlex.split(values["watch"]))
    except ValueError as exc:
        raise ConfigError(
            f"cannot read the folder list: {exc}",
            path=path,
            section=section,
            key="watch",
            value=values["watch"],
        ) from None
    mode = values.get("watch_mode", "events").strip().lower()
    if mode not in WATCH_MODES:
        raise ConfigError(
            f"expected one of: {', '.join(WATCH_MODES)}",
            path=path,
            section=section,
            key="watch_mode",
            value=values["watch_mode"],
        )

    def flag(key: str) -> bool:
        text = values.get(key, "false").strip().lower()
        if text not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            raise ConfigError(
                "expected true or false", path=path, section=section, key=key, value=values[key]
            )
        return text in ("true", "yes", "1", "on")

    settle = duration("settle")
    rescan = _at_least(duration("rescan"), MIN_RESCAN_S, values, "rescan", path, section)
    return WatchSettings(
        folders=folders,
        patterns=tuple(values["patterns"].split())
        if values.get("patterns", "").strip()
        else DEFAULT_PATTERNS,
        ignore=tuple(values["ignore"].split()) if "ignore" in values else DEFAULT_IGNORE,
        recursive=flag("recursive"),
        follow_symlinks=flag("follow_symlinks"),
        settle_s=2.0 if settle is None else settle,
        batch=_int(values, "batch", 100, path, section, minimum=1, maximum=MAX_BATCH),
        mode=mode,
        rescan_s=600.0 if rescan is None else rescan,
    )


def _duration(values: Mapping[str, str], key: str, path: Path, section: str) -> float | None:
    """The key's duration in seconds, None when absent; a one-line error when it is not one."""
    if key not in values:
        return None
    try:
        return parse_duration(values[key])
    except DurationTooLong as exc:
        raise ConfigError(str(exc), path=path, section=section, key=key, value=values[key]) from None
    except ValueError:
        raise ConfigError(
            "expected a duration like 90s, 15m, 2h", path=path, section=section, key=key, value=values[key]
        ) from None


def _at_least(seconds: float | None, minimum: float, values, key, path, section) -> float | None:
    if seconds is not None and seconds < minimum:
        raise ConfigError(
            f"must be at least {format_duration(minimum)}",
            path=path,
            section=section,
            key=key,
            value=values[key],
        )
    return seconds


def _size(values: Mapping[str, str], key: str, path: Path, section: str) -> int | None:
    """The key's size in bytes (0 = no cap), None when absent; a one-line error when it is not one."""
    if key not in values:
        return None
    try:
        size = parse_size(values[key])
    except ValueError:
        size = -1
    if size != 0 and size < MIN_MAX_LOG_BYTES:
        raise ConfigError(
            f"expected a size like 50MiB, 200KiB or 0 (no cap), at least {format_size(MIN_MAX_LOG_BYTES)}",
            path=path,
            section=section,
            key=key,
            value=values[key],
        )
    return size


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


def _int(values, key, default, path, section, *, minimum, maximum):
    if key not in values:
        return default
    text = values[key].strip()
    number = int(text) if re.fullmatch(r"[+-]?[0-9]{1,20}", text) else None
    if number is None or not minimum <= number <= maximum:
        raise ConfigError(
            f"expected a whole number from {minimum} to {maximum}",
            path=path,
            section=section,
            key=key,
            value=values[key],
        )
    return number


def _check_timezone(name: str, path: Path, section: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            "unknown timezone; expected an IANA name like Europe/Berlin or UTC",
            path=path,
            section=section,
            key="timezone",
            value=name,
        ) from None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    prefix, sep, rest = url.partition(":///")
    file_part = rest.partition("?")[0]
    if not sep or not prefix.startswith("sqlite") or file_part in ("", ":memory:"):
        return None
    return Path(file_part)


def _check_database_url(url: str, path: Path) -> None:
    """A URL we can hand to SQLAlchemy; the error never shows its password."""
    from urllib.parse import urlsplit

    def refuse(problem: str) -> ConfigError:
        # Not a URL we can parse, so we cannot tell where its password is: mask ':...@' whole.
        shown = re.sub(r":[^@]*@", f":{SECRET_MASK}@", url)
        return ConfigError(problem, path=path, section="runner", key="database", value=shown)

    if _CONTROL.search(url):
        raise refuse(_CONTROL_PROBLEM)
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise refuse("expected a SQLAlchemy URL like sqlite:///var/runner.db or postgresql://user@host/db")
    try:
        _ = urlsplit(url).port
    except ValueError:
        raise refuse("the port must be a number from 0 to 65535") from None


def _absolute_sqlite_url(url: str, base: Path) -> str:
    """Relative SQLite paths are relative to the config file, not to the current directory."""
    prefix, sep, rest = url.partition(":///")
    if not sep or not prefix.startswith("sqlite") or rest.startswith("/") or rest in ("", ":memory:"):
        return url
    file_part, q, query = rest.partition("?")
    return f"{prefix}:///{(base / file_part).resolve()}{q}{query}"


def _choice(values: Mapping[str, str], key: str, choices: tuple[str, ...], path: Path) -> str:
    """A [runner] key that takes one of a few words (the first is the default)."""
    value = values.get(key, "").strip().lower() or choices[0]
    if value not in choices:
        raise ConfigError(
            f"expected one of: {', '.join(choices)}",
            path=path,
            section="runner",
            key=key,
            value=values.get(key),
        )
    return value
