"""The INI file's text -> {section: {key: resolved string}}: comments, ${...} references, $ escapes.

What the strings mean is `config`'s business; this module only knows the file's syntax."""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

from runner.errors import ConfigError

JOB_PREFIX = "job:"
NOTIFY_PREFIX = "notify:"
INLINE_COMMENT_PREFIXES = (";", "#")

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
# After configparser took off every `;`/`#` comment that follows whitespace, a `;` or `#` glued to
# the value and followed by a space is almost surely a comment missing its space: refuse it.
# `$;` and `$#` are the documented literal forms.
_GLUED_COMMENT = re.compile(r"(?<![\s$])[;#]\s")
# Free text, where "a; b" is prose, not a comment.
_PROSE_KEYS = ("description",)
_MAX_INTERPOLATION_DEPTH = 10

Sections = dict[str, dict[str, str]]


class _EnvMissing(ConfigError):
    """An ${env:NAME} that is not set: it breaks the job that uses it, not every command."""


def read_sections(path: Path) -> tuple[Sections, dict[str, str]]:
    """Parse the file at `path` and resolve its references.

    Returns (sections, {job name: why it is unusable}): a job section whose environment variable is
    unset (a crontab line has a bare environment) leaves the other jobs working. A `[notify:NAME]`
    section in that case is left out of the sections and listed under its full section name."""
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
    raw = {s: {k: parser.get(s, k) for k in parser.options(s)} for s in parser.sections()}
    _refuse_glued_comments(raw, path)
    return _interpolate(raw, path)


def _refuse_glued_comments(raw: Sections, path: Path) -> None:
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


def _interpolate(raw: Sections, path: Path) -> tuple[Sections, dict[str, str]]:
    """Resolve ${env:NAME}, ${section:key} and ${key} (same section); $$, $; and $# are literal
    $, ; and # (a `;` or `#` after whitespace starts a comment)."""

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

    resolved: Sections = {}
    unusable: dict[str, str] = {}
    for section, keys in raw.items():
        try:
            resolved[section] = {k: resolve(section, k, 0) for k in keys}
        except _EnvMissing as exc:
            if section.startswith(NOTIFY_PREFIX):  # its deliveries fail; the jobs still run
                unusable[section] = str(exc)
                continue
            if not section.startswith(JOB_PREFIX):
                raise
            unusable[section[len(JOB_PREFIX) :].strip()] = str(exc)
    return resolved, unusable


def _unescape(text: str) -> str:
    return text.replace("$;", ";").replace("$#", "#")
