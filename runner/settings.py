"""The frozen settings values `config` builds from the INI file, and how they are shown safely.

Values only: reading and checking the INI is `config`'s job; using the values is everyone else's."""

from __future__ import annotations

import enum
import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.channels import Alerts, Channel
    from runner.triggers import Schedule

DEFAULT_LOCK_TIMEOUT_S = 60.0  # how long a write waits for another writer of the database
DEFAULT_MAX_LOG_BYTES = 50 * 1024 * 1024  # a run's log keeps its head and tail beyond this
DEFAULT_CATCHUP_S = 3600.0
DEFAULT_MAX_QUEUE = 3  # a queue of fires longer than this only ever grows: record them skipped
DEFAULT_PRUNE_EVERY_S = 6 * 3600.0  # how often the daemon applies keep_runs and keep_logs
DEFAULT_PATTERNS = ("*",)
DEFAULT_IGNORE = ("*.part", "*.tmp", "*.crdownload", "*.swp", "*~", ".*")
CONTAIN_CHOICES = ("subreaper", "cgroup")
WATCH_MODES = ("events", "polling")
SECRET_PATTERNS = ("*password*", "*passwd*", "*token*", "*secret*", "*_key", "key")
SECRET_MASK = "***"
# URLs whose path is the secret (a webhook's token, a dead-man check's id): shown as scheme://host/***.
SECRET_URL_KEYS = ("ping_url", "notify:*.url")

_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)\S*@(?=[^@/\s]*(?:[/?#\s]|$))")


class Overlap(enum.StrEnum):
    """What a fire does while the previous run of its job still runs."""

    SKIP = "skip"
    QUEUE = "queue"
    ALLOW = "allow"


OVERLAP_POLICIES = tuple(policy.value for policy in Overlap)


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a job's history (keep_runs) or of its run logs (keep_logs) is kept: what is at
    most `max_age_s` old and among the newest `max_count` of the job; None: no such limit."""

    max_age_s: float | None = None
    max_count: int | None = None

    @property
    def forever(self) -> bool:
        return self.max_age_s is None and self.max_count is None

    def __str__(self) -> str:
        from runner.durations import format_duration

        parts = []
        if self.max_age_s is not None:
            parts.append(format_duration(self.max_age_s))
        if self.max_count is not None:
            parts.append(str(self.max_count))
        return ", ".join(parts) or "forever"


# Bounded for a busy installation: a job every 5 minutes keeps 90 days of runs and 30 of logs; a
# job every second keeps its newest 50,000 runs (14 h) and 10,000 logs (3 h).
DEFAULT_KEEP_RUNS = Retention(90 * 86400.0, 50_000)
DEFAULT_KEEP_LOGS = Retention(30 * 86400.0, 10_000)


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
    alerts: Alerts | None = None  # [runner] notify defaults (runner.channels); None: nothing set
    metrics_listen: tuple[str, int] | None = None  # (host, port) the daemon serves /metrics on
    metrics_textfile: Path | None = None  # a node_exporter textfile `runner run` rewrites after each run
    keep_runs: Retention = DEFAULT_KEEP_RUNS
    keep_logs: Retention = DEFAULT_KEEP_LOGS
    prune_every_s: float = DEFAULT_PRUNE_EVERY_S  # 0: the daemon never prunes (`runner prune` does)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    folders: tuple[Path, ...]
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    recursive: bool = False
    settle_s: float = 2.0
    batch: int = 100
    mode: str = "events"  # events | polling
    rescan_s: float = 600.0
    follow_symlinks: bool = False  # hand out links whose target is a regular file inside a watched folder

    def wants(self, path: str) -> bool:
        name = os.path.basename(path)
        if any(fnmatch.fnmatch(name, pattern) for pattern in self.ignore):
            return False
        lowered = name.lower()
        return any(fnmatch.fnmatch(lowered, pattern.lower()) for pattern in self.patterns)


@dataclass(frozen=True, slots=True)
class JobSettings:
    """One `[job:NAME]` section; None means 'use the @job decorator's default'."""

    name: str
    uses: str | None = None
    timeout_s: float | None = None
    retries: int | None = None
    retry_backoff_s: float | None = None
    overlap: Overlap | None = None
    description: str | None = None
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    schedules: tuple[Schedule, ...] = ()
    timezone: str = "UTC"
    jitter_s: float = 0.0
    catchup_s: float = DEFAULT_CATCHUP_S
    watch: WatchSettings | None = None
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES  # 0: no cap
    max_queue: int = DEFAULT_MAX_QUEUE
    alerts: Alerts | None = None  # notify targets and ping_url; None: neither
    keep_runs: Retention = DEFAULT_KEEP_RUNS
    keep_logs: Retention = DEFAULT_KEEP_LOGS

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
    channels: Mapping[str, Channel] = field(default_factory=lambda: MappingProxyType({}))  # [notify:NAME]

    def job(self, name: str) -> JobSettings | None:
        return self.jobs.get(name)

    def printable(self) -> dict[str, dict[str, str]]:
        """Every resolved section with secrets replaced by ***."""
        return {
            section: {key: _printable(section, key, value) for key, value in values.items()}
            for section, values in self.sections.items()
        }


def _printable(section: str, key: str, value: str) -> str:
    if is_secret(key):
        return SECRET_MASK
    if is_secret_url(section, key):
        return mask_url_path(value)
    return mask_url_password(value)


def is_secret(key: str) -> bool:
    key = key.lower()
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in SECRET_PATTERNS)


def is_secret_url(section: str, key: str) -> bool:
    """A key whose URL carries its secret in the path (a webhook token, a dead-man check's id)."""
    return any(fnmatch.fnmatchcase(f"{section}.{key}", p) or p == key for p in SECRET_URL_KEYS)


def mask_url_path(url: str) -> str:
    """`https://hooks.example.com/services/T0/B0/XYZ?x=1` -> `https://hooks.example.com/***`: where
    it goes stays visible, the token in its path or query does not (nor a password before the host)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return SECRET_MASK
    if not parts.scheme or not parts.netloc:
        return SECRET_MASK
    host = parts.netloc.rpartition("@")[2]
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{parts.scheme}://{host}/{SECRET_MASK if hidden else ''}"


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
