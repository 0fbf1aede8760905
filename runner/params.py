"""Job parameters: read from a function's signature, converted from text by their declared types."""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from runner.errors import ParamError

CONTEXT_PARAM = "ctx"
REQUIRED = inspect.Parameter.empty
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    annotation: Any
    default: Any
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        return type_name(self.annotation)


def type_name(annotation: Any) -> str:
    if annotation is REQUIRED or annotation is Any:
        return "str"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "").replace("datetime.", "")


def read_params(func: Callable[..., Any]) -> tuple[tuple[ParamSpec, ...], bool]:
    """The function's parameters (without ctx) and whether it takes ctx."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that does not evaluate: fall back to text
        hints = {}
    helps = docstring_params(func.__doc__ or "")
    specs, takes_ctx = [], False
    for param in inspect.signature(func).parameters.values():
        if param.name == CONTEXT_PARAM:
            takes_ctx = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, REQUIRED)
        if annotation is REQUIRED and param.default not in (REQUIRED, None):
            annotation = type(param.default)
        specs.append(ParamSpec(param.name, annotation, param.default, helps.get(param.name, "")))
    return tuple(specs), takes_ctx


def docstring_params(doc: str) -> dict[str, str]:
    """Descriptions from Google style (`Args:` / `name: text`) or Sphinx (`:param name: text`)."""
    found: dict[str, str] = {}
    for match in re.finditer(r":param\s+(?:\w+\s+)?(\w+):\s*(.+)", doc):
        found[match.group(1)] = match.group(2).strip()
    section = re.search(
        r"^\s*(?:Args|Arguments|Parameters|Params):\s*$(.*?)(?:^\s*\w[\w ]*:\s*$|\Z)",
        doc,
        re.M | re.S,
    )
    if section:
        current = None
        for line in section.group(1).splitlines():
            item = re.match(r"\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", line)
            if item:
                current = item.group(1)
                found[current] = item.group(2).strip()
            elif current and line.strip():
                found[current] = f"{found[current]} {line.strip()}".strip()
    return found


def strip_param_docs(doc: str) -> str:
    """The docstring without its parameter section (shown per option instead)."""
    import inspect as _inspect

    text = _inspect.cleandoc(doc)
    text = re.sub(r"^(?:Args|Arguments|Parameters|Params):\s*\n(?:[ \t]+.*\n?|\s*\n)*", "", text, flags=re.M)
    text = re.sub(r"^:param .*$\n?", "", text, flags=re.M)
    return text.strip()


def summary_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def convert(value: str, annotation: Any) -> Any:
    """Text -> the declared type; raises ValueError with what was expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value.strip().lower() in ("", "none", "null") and len(inner) < len(args):
            return None
        return convert(value, inner[0]) if len(inner) == 1 else value
    if origin in (list, tuple, set, frozenset):
        item_type = args[0] if args else str
        items = [v.strip() for v in re.split(r"[,\n]", value) if v.strip()]
        return origin(convert(item, item_type) for item in items)
    if annotation in (REQUIRED, str, Any):
        return value
    if annotation is bool:
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("expected true or false")
    if annotation is int:
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
    if annotation is float:
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number (not nan or inf)")
        return number
    if annotation is datetime:
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("expected a date and time like 2026-12-01T09:00") from None
    if annotation is date:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("expected a date like 2026-12-01") from None
    if annotation is Path or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return Path(value.strip()).expanduser()
    if isinstance(annotation, type):
        try:
            return annotation(value)
        except Exception as exc:
            raise ValueError(f"expected {annotation.__name__}: {exc}") from None
    return value


def bind(
    job: str,
    specs: tuple[ParamSpec, ...],
    layers: list[tuple[str, Mapping[str, str]]],
    *,
    base_dir: Path | None = None,
    require_all: bool = True,
) -> dict[str, Any]:
    """Merge text parameters (later layers win), convert each, check nothing required is missing.

    `layers` is a list of (where the values came from, {name: text}), e.g. the INI section, then
    `-p`, then options; the first layer's relative paths resolve against `base_dir` (the INI's folder).
    """
    by_name = {spec.name: spec for spec in specs}
    merged: dict[str, tuple[int, str, str]] = {}
    for index, (origin, values) in enumerate(layers):
        for key, text in values.items():
            name = key.replace("-", "_")
            if name not in by_name:
                known = ", ".join(by_name) or "none"
                raise ParamError(f"{origin} {key}: job {job} has no such parameter (it takes: {known})")
            merged[name] = (index, origin, text)
    result: dict[str, Any] = {}
    for name, (index, origin, text) in merged.items():
        spec = by_name[name]
        try:
            value = convert(text, spec.annotation)
        except ValueError as exc:
            from runner.settings import mask_value

            text = mask_value(name, text)
            shown = f"{origin} {text!r}" if origin.startswith("--") else f"{origin} {name} = {text!r}"
            raise ParamError(f"{shown}: {exc}") from None
        if isinstance(value, Path) and index == 0 and base_dir is not None and not value.is_absolute():
            value = (base_dir / value).resolve()
        result[name] = value
    missing = [spec.name for spec in specs if spec.required and spec.name not in result]
    if missing and require_all:
        flags = " ".join(f"-p {m}=VALUE" for m in missing)
        raise ParamError(f"job {job} needs a value for {', '.join(missing)}: pass {flags}")
    return result


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`-p key=value` pairs; `key=@FILE` reads the value from FILE (one trailing newline dropped),
    so a secret never shows in `ps`; `key=@@text` is the literal `@text`."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParamError(f"-p {key.strip() or pair!r}: expected key=value")
        if value.startswith("@@"):
            value = value[1:]
        elif value.startswith("@"):
            value = _read_value_file(key.strip(), value[1:])
        values[key.strip()] = value
    return values


def _read_value_file(key: str, name: str) -> str:
    try:
        text = Path(name).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError(
            f"-p {key}=@{name}: cannot read the file: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return text[:-1] if text.endswith("\n") else text
