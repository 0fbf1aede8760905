"""Find the jobs: the modules of `job_packages`, the `runner.jobs` entry points, and `uses =`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from runner.config import job_name_problem
from runner.errors import BrokenJob, ConfigError, ParamError, UnknownJob
from runner.ini import JOB_PREFIX
from runner.jobapi import JobDefaults, JobSpec, job_defaults
from runner.params import bind

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from runner.settings import JobSettings, Settings

ENTRY_POINT_GROUP = "runner.jobs"


@dataclass(slots=True)
class Catalog:
    """Every job we could find, and every module or section that is broken."""

    jobs: dict[str, JobSpec] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # job or module name -> one-line reason
    errors: list[str] = field(default_factory=list)  # config problems, one line each


def _import_error(module: str, exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"module {module} failed to import: {type(exc).__name__}: {exc}{where}"


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise BrokenJob(f"module {module} not found") from None
        raise BrokenJob(_import_error(module, exc)) from None
    except Exception as exc:
        raise BrokenJob(_import_error(module, exc)) from None


def _jobs_in(module: ModuleType) -> Iterator[tuple[str, Callable[..., Any]]]:
    for attr, obj in vars(module).items():
        defaults = job_defaults(obj)
        if defaults is not None and getattr(obj, "__module__", None) == module.__name__:
            yield defaults.name or attr, obj


def _package_modules(package: str) -> Iterator[str]:
    root = _import(package)
    yield package
    for info in pkgutil.iter_modules(getattr(root, "__path__", []), prefix=package + "."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            yield info.name


def resolve_target(target: str) -> Callable[..., Any]:
    """'package.module:function' (or a module holding exactly one job) -> the function."""
    module_name, _, attr = target.partition(":")
    module = _import(module_name)
    if attr:
        func = getattr(module, attr, None)
        if not callable(func):
            raise BrokenJob(f"{module_name} has no function {attr}")
        return func
    found = list(_jobs_in(module))
    if len(found) != 1:
        raise BrokenJob(f"{module_name} defines {len(found)} jobs; name one as {module_name}:function")
    return found[0][1]


def _section_error(settings: Settings, name: str, key: str, value: str | None, exc: Exception) -> ConfigError:
    return ConfigError(str(exc), path=settings.path, section=JOB_PREFIX + name, key=key, value=value)


def build_spec(settings: Settings, name: str, func: Callable[..., Any]) -> JobSpec:
    """A JobSpec for `func` under `name`, with its INI section checked against the signature."""
    if problem := job_name_problem(name):
        raise ConfigError(
            f"@job name {name[:40]!r}{'…' if len(name) > 40 else ''}: {problem}", path=spec_where(func)
        )
    section = settings.job(name)
    try:
        defaults = settings.runner.alerts
        spec = JobSpec.build(
            name,
            func,
            section,
            base_dir=settings.path.parent,
            timezone=settings.runner.timezone,
            alerts=defaults if defaults is not None and defaults.active else None,
        )
    except ValueError as exc:  # a bad duration in the decorator
        raise ConfigError(f"@job default is not a duration: {exc}", path=spec_where(func)) from None
    if section:
        try:
            bind(
                name,
                spec.params,
                [(config_origin(settings, name), section.params)],
                require_all=False,
            )
        except ParamError as exc:
            raise ConfigError(str(exc)) from None
        if section.watch is not None:
            spec = _with_watched_folder(settings, spec, section)
    return spec


def _with_watched_folder(settings: Settings, spec: JobSpec, section: JobSettings) -> JobSpec:
    """A job that reads one folder (`@job(watch_param=...)`) takes it from `watch =`: the files a
    watch fire hands it are in that folder, and a different folder would skip every one of them."""
    import dataclasses
    from pathlib import Path
    from types import MappingProxyType

    param = (job_defaults(spec.func) or JobDefaults()).watch_param
    if param is None:
        return spec
    where = {"path": settings.path, "section": JOB_PREFIX + spec.name}
    watch = section.watch
    assert watch is not None  # build_spec calls this only for watch jobs
    folders = watch.folders
    if len(folders) != 1 or watch.recursive:
        raise ConfigError(
            f"{spec.target} reads one folder (its {param!r} parameter): watch exactly one, not recursively",
            key="watch",
            value=" ".join(str(f) for f in folders),
            **where,
        )
    configured = section.params.get(param)
    if (
        configured is not None
        and (settings.path.parent / Path(configured).expanduser()).resolve() != folders[0]
    ):
        raise ConfigError(
            f"{spec.name} reads the watched folder {folders[0]}; leave {param} out (it is taken from watch =)",
            key=param,
            value=configured,
            **where,
        )
    params = MappingProxyType({**spec.config_params, param: str(folders[0])})
    return dataclasses.replace(spec, config_params=params)


def config_origin(settings: Settings, name: str) -> str:
    """How errors name a job's INI section: 'config/runner.ini: [job:NAME]'."""
    return f"{settings.path}: [{JOB_PREFIX}{name}]"


def spec_where(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def find_job(settings: Settings, name: str) -> JobSpec:
    """Import only what this one job needs (a crontab line pays for every import)."""
    if name in settings.unusable:
        raise ConfigError(settings.unusable[name])
    section = settings.job(name)
    if section and section.uses:
        try:
            func = resolve_target(section.uses)
        except BrokenJob as exc:
            raise _section_error(settings, name, "uses", section.uses, exc) from None
        return build_spec(settings, name, func)
    for package in settings.runner.job_packages:
        candidate = f"{package}.{name}"
        try:
            module = importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if exc.name and candidate.startswith(exc.name):
                continue
            raise BrokenJob(_import_error(candidate, exc)) from None
        except Exception as exc:
            raise BrokenJob(_import_error(candidate, exc)) from None
        for job_name, func in _jobs_in(module):
            if job_name == name:
                return build_spec(settings, name, func)
    catalog = discover(settings)
    if name in catalog.jobs:
        return catalog.jobs[name]
    if name in catalog.broken:
        raise BrokenJob(f"job {name}: {catalog.broken[name]}")
    raise unknown_job(name, catalog.jobs)


def unknown_job(name: str, known: Iterable[str]) -> UnknownJob:
    """'unknown job 'helo'; did you mean hello? (known jobs: ...)' -- exit 2."""
    import difflib

    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    listed = ", ".join(known) or "none"
    return UnknownJob(f"unknown job {name!r}; {hint}known jobs: {listed} (see `runner list`)")


def require_known_job(settings: Settings, name: str) -> None:
    """Raise UnknownJob unless `name` is configured or discovered (imports every job module)."""
    if name in settings.jobs or name in settings.unusable:
        return
    catalog = discover(settings)
    if name not in catalog.jobs and name not in catalog.broken:
        raise unknown_job(name, [*catalog.jobs, *settings.jobs])


def discover(settings: Settings) -> Catalog:
    """Import every job module; one broken module never hides the others."""
    catalog = Catalog()
    functions: dict[str, Callable[..., Any]] = {}
    homes: dict[str, list[str]] = {}  # job name -> each module:function that claims it
    for package in settings.runner.job_packages:
        try:
            modules = list(_package_modules(package))
        except BrokenJob as exc:
            catalog.broken[package] = str(exc)
            continue
        for module_name in modules:
            try:
                module = _import(module_name)
            except BrokenJob as exc:
                catalog.broken[module_name] = str(exc)
                continue
            for job_name, func in _jobs_in(module):
                functions.setdefault(job_name, func)
                homes.setdefault(job_name, []).append(f"{module_name}:{func.__name__}")
    for entry in _entry_points():
        try:
            loaded = entry.load()
        except Exception as exc:
            catalog.broken[entry.value] = _import_error(entry.value, exc)
            continue
        if isinstance(loaded, ModuleType):
            for job_name, func in _jobs_in(loaded):
                functions.setdefault(job_name, func)
        elif callable(loaded):
            functions.setdefault(entry.name, loaded)
    for name, section in settings.jobs.items():
        try:
            if section.uses:
                try:
                    func = resolve_target(section.uses)
                except BrokenJob as exc:
                    raise _section_error(settings, name, "uses", section.uses, exc) from None
            elif len(homes.get(name, ())) > 1:
                raise ConfigError(
                    f"more than one job function has this name ({', '.join(homes[name])}); "
                    "add `uses = package.module:function` to say which",
                    path=settings.path,
                    section=JOB_PREFIX + name,
                )
            elif name in functions:
                func = functions[name]
            elif module_error := _broken_module_of(settings, name, catalog.broken):
                raise ConfigError(module_error, path=settings.path, section=JOB_PREFIX + name)
            else:
                raise ConfigError(
                    "no job function of this name; add `uses = package.module:function`",
                    path=settings.path,
                    section=JOB_PREFIX + name,
                )
            catalog.jobs[name] = build_spec(settings, name, func)
        except ConfigError as exc:
            catalog.errors.append(str(exc))
            catalog.broken[name] = str(exc)
    for name, reason in settings.unusable.items():
        catalog.errors.append(reason)
        catalog.broken[name] = reason
    for name, func in functions.items():
        if name not in catalog.jobs and name not in catalog.broken and len(homes.get(name, ())) > 1:
            catalog.broken[name] = (
                f"more than one job function is named {name} ({', '.join(homes[name])}); rename one, "
                f"or add a [job:{name}] section with `uses = package.module:function` to say which"
            )
            continue
        if name not in catalog.jobs and name not in catalog.broken:
            try:
                catalog.jobs[name] = build_spec(settings, name, func)
            except ConfigError as exc:
                catalog.broken[name] = str(exc)
    return catalog


def _broken_module_of(settings: Settings, name: str, broken: dict[str, str]) -> str | None:
    """Why the module named like job `name` in a job package did not import, if it did not."""
    return next((broken[m] for p in settings.runner.job_packages if (m := f"{p}.{name}") in broken), None)


def _entry_points() -> list[EntryPoint]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def main_module_job(module_name: str) -> str:
    """The job name defined by module `module_name` (for `python -m jobs.hello`)."""
    module = sys.modules.get(module_name) or _import(module_name)
    found = [name for name, _ in _jobs_in(module)]
    short = module_name.rsplit(".", 1)[-1]
    if short in found:
        return short
    if len(found) == 1:
        return found[0]
    raise UnknownJob(f"module {module_name} defines {len(found)} jobs; use `runner run JOB`")
