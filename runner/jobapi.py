"""The `@job` decorator and the resolved description of one configured job (`JobSpec`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from runner.params import ParamSpec, read_params, summary_line

if TYPE_CHECKING:
    from runner.channels import Alerts
    from runner.settings import JobSettings

JOB_ATTR = "__runner_job__"
DEFAULT_RETRY_BACKOFF_S = 30.0
DEFAULT_OVERLAP = "skip"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """What `@job(...)` said; the INI section overrides each of these."""

    name: str | None = None
    timeout: str | float | None = None
    retries: int = 0
    retry_backoff: str | float | None = None
    overlap: str | None = None
    watch_param: str | None = None


@overload
def job(func: F) -> F: ...
@overload
def job(
    *,
    name: str | None = None,
    timeout: str | float | None = None,
    retries: int = 0,
    retry_backoff: str | float | None = None,
    overlap: str | None = None,
    watch_param: str | None = None,
) -> Callable[[F], F]: ...


def job(func=None, *, name=None, timeout=None, retries=0, retry_backoff=None, overlap=None, watch_param=None):
    """Mark a function as a job. Its typed parameters become the job's parameters.

        @job
        def hello(name: str = "world", count: int = 1) -> str: ...

        @job(name="nightly", timeout="15m", retries=2)
        def cleanup(ctx: JobContext, older_than_days: int = 30) -> dict: ...

    The `[job:NAME]` section of the INI file overrides every default given here.

    `watch_param` names the parameter that holds the folder the job reads (e.g. "inbox"): in a
    section with `watch = FOLDER` it is set to that folder, and a different value is refused.
    """
    defaults = JobDefaults(name, timeout, retries, retry_backoff, overlap, watch_param)

    def mark(target: F) -> F:
        setattr(target, JOB_ATTR, defaults)
        return target

    return mark(func) if func is not None else mark


def job_defaults(obj: object) -> JobDefaults | None:
    return getattr(obj, JOB_ATTR, None) if callable(obj) else None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A configured job: its function, its parameters and its effective settings."""

    name: str
    func: Callable[..., Any]
    target: str  # "package.module:function"
    params: tuple[ParamSpec, ...]
    takes_ctx: bool
    timeout_s: float | None
    retries: int
    retry_backoff_s: float
    overlap: str
    description: str
    config_params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    base_dir: Path | None = None
    max_log_bytes: int | None = None  # None: [runner] max_log_bytes
    timezone: str = "UTC"  # the section's timezone ([runner] timezone when it sets none)
    alerts: Alerts | None = None  # notify targets and ping_url (runner.channels); None: neither

    @classmethod
    def build(
        cls,
        name: str,
        func: Callable[..., Any],
        settings: JobSettings | None = None,
        base_dir: Path | None = None,
        timezone: str = "UTC",
        alerts: Alerts | None = None,
    ) -> JobSpec:
        """Combine the decorator's defaults with the job's INI section (`JobSettings` or None);
        `alerts`: the [runner] notify defaults, for a job without a section."""
        from runner.durations import parse_duration

        defaults = job_defaults(func) or JobDefaults()
        params, takes_ctx = read_params(func)

        def seconds(value: str | float | None) -> float | None:
            if value is None or isinstance(value, int | float):
                return value
            return parse_duration(value)

        timeout = (
            settings.timeout_s if settings and settings.timeout_s is not None else seconds(defaults.timeout)
        )
        retries = settings.retries if settings and settings.retries is not None else defaults.retries
        backoff = (
            settings.retry_backoff_s
            if settings and settings.retry_backoff_s is not None
            else seconds(defaults.retry_backoff)
        )
        # A watch job's file claims already keep two runs off the same file: its runs may overlap.
        watching = settings is not None and getattr(settings, "watch", None) is not None
        default_overlap = "allow" if watching else DEFAULT_OVERLAP
        overlap = (settings.overlap if settings else None) or defaults.overlap or default_overlap
        description = (settings.description if settings else None) or summary_line(func.__doc__)
        return cls(
            name=name,
            func=func,
            target=f"{func.__module__}:{func.__qualname__}",
            params=params,
            takes_ctx=takes_ctx,
            timeout_s=timeout or None,
            retries=retries,
            retry_backoff_s=DEFAULT_RETRY_BACKOFF_S if backoff is None else backoff,
            overlap=overlap,
            description=description,
            config_params=settings.params if settings else MappingProxyType({}),
            base_dir=base_dir,
            max_log_bytes=getattr(settings, "max_log_bytes", None),
            timezone=settings.timezone if settings else timezone,
            alerts=getattr(settings, "alerts", None) if settings else alerts,
        )
