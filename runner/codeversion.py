"""Which job code a process runs: runner's version and a hash of the job modules' source files,
so `runner status` can show what each daemon loaded and `runner check` can tell it from the disk."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from runner.version import __version__

if TYPE_CHECKING:
    from runner.settings import Settings

HASH_CHARS = 12  # of the sha256 shown: plenty to tell two deploys apart


def code_version(settings: Settings) -> str:
    """'0.1.0+3fa9c2d1e4b0': runner's version, and a hash of every source file of the job packages
    (all of them, imported or not, broken or not) and of the modules named by `uses =` and the
    `runner.jobs` entry points. Reads files only: the same answer whether or not they import."""
    digest = hashlib.sha256()
    for name, path in sorted(set(_sources(settings))):
        digest.update(f"{name}\0".encode())
        try:
            digest.update(path.read_bytes() if path else b"\0missing")
        except OSError:
            digest.update(b"\0unreadable")
        digest.update(b"\0")
    return f"{__version__}+{digest.hexdigest()[:HASH_CHARS]}"


def refresh_bytecode(settings: Settings) -> None:
    """Rewrite the job modules' bytecode caches as checked against their source's hash. A cache
    made the default way is trusted while the source keeps its size and whole-second mtime: an
    edit (a deploy) within the second of the last import would be imported stale. Best effort: a
    folder we may not write to keeps its caches."""
    import py_compile

    for _, path in set(_sources(settings)):
        if path is not None and path.suffix == ".py":
            with contextlib.suppress(OSError):  # quiet=2: a syntax error is the import's to report
                py_compile.compile(
                    str(path), invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH, quiet=2
                )


def _sources(settings: Settings) -> Iterator[tuple[str, Path | None]]:
    """(module or file name, its file) for everything `code_version` covers."""
    from runner.discovery import ENTRY_POINT_GROUP

    for package in settings.runner.job_packages:
        folders = _package_folders(package)
        if not folders:
            yield package, _module_file(package)
        for folder in folders:
            for path in sorted(folder.rglob("*.py")):
                if "__pycache__" not in path.parts:
                    yield f"{package}/{path.relative_to(folder)}", path
    modules = {section.uses.partition(":")[0] for section in settings.jobs.values() if section.uses}
    from importlib.metadata import entry_points

    modules |= {entry.module for entry in entry_points(group=ENTRY_POINT_GROUP)}
    for module in modules:
        yield module, _module_file(module)


def _package_folders(package: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def _module_file(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package that does not import
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin != "built-in" else None
