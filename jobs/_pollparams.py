"""The typed settings of `poll_api`: each type checks its text when the INI or `-p` is read, so a
bad value is one line and exit 2 from `runner check` and `runner run`, before anything starts."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", re.IGNORECASE)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_SECONDS = 86400.0  # a day: longer waits or timeouts in a poller are typos


def parse_seconds(text: str) -> float:
    """'90s', '500ms', '2m', '1m30s' or a bare number of seconds -> seconds."""
    text, pos, total = text.strip(), 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if text[pos : match.start()].strip() or not match.group():
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2) and match.group(2).lower()]
        pos = match.end()
    if not text or pos == 0 or text[pos:].strip():
        raise ValueError("a duration like 500ms, 30s or 2m")
    if total > MAX_SECONDS:
        raise ValueError(f"at most {MAX_SECONDS:g}s")
    return total


class Seconds(float):
    """A duration ('30s', '500ms', '2m', or seconds as a number)."""

    def __new__(cls, text: str | float) -> Seconds:
        return super().__new__(cls, text if isinstance(text, int | float) else parse_seconds(str(text)))

    def __str__(self) -> str:
        return f"{float(self):g}s"


class Timeouts(str):
    """`request_timeout`: one duration for connecting and for each read, or 'CONNECT, READ'."""

    __slots__ = ()

    def __new__(cls, text: str) -> Timeouts:
        parts = [part for part in str(text).split(",") if part.strip()]
        if not 1 <= len(parts) <= 2:
            raise ValueError("one duration (connect and read), or two: 'CONNECT, READ' like '5s, 30s'")
        if any(parse_seconds(part) <= 0 for part in parts):
            raise ValueError("a timeout longer than 0s")
        return super().__new__(cls, str(text).strip())

    @property
    def pair(self) -> tuple[float, float]:
        parts = [parse_seconds(part) for part in self.split(",") if part.strip()]
        return (parts[0], parts[-1])


class HttpUrl(str):
    """An http:// or https:// URL with a host."""

    __slots__ = ()

    def __new__(cls, text: str) -> HttpUrl:
        text = str(text).strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            raise ValueError("an http:// or https:// URL (this one does not parse)") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        if any(ord(char) < 33 or ord(char) == 127 for char in text):
            raise ValueError("a URL without spaces or control characters")
        return super().__new__(cls, text)


class _Choice(str):
    __slots__ = ()
    CHOICES: tuple[str, ...] = ()

    def __new__(cls, text: str) -> _Choice:
        value = str(text).strip().lower()
        if value not in cls.CHOICES:
            raise ValueError(f"one of {', '.join(cls.CHOICES)}")
        return super().__new__(cls, value)


class Method(str):
    """GET or POST."""

    __slots__ = ()

    def __new__(cls, text: str) -> Method:
        value = str(text).strip().upper()
        if value not in ("GET", "POST"):
            raise ValueError("GET or POST")
        return super().__new__(cls, value)


class Auth(_Choice):
    """none | bearer | basic | header."""

    __slots__ = ()
    CHOICES = ("none", "bearer", "basic", "header")


class Pagination(_Choice):
    """none | link | next_url | cursor | page | offset."""

    __slots__ = ()
    CHOICES = ("none", "link", "next_url", "cursor", "page", "offset")


class Query(str):
    """Query parameters as a query string: 'status=open&sort=updated_at' (values %-encoded)."""

    __slots__ = ()

    def __new__(cls, text: str) -> Query:
        text = str(text).strip()
        if any(part and "=" not in part for part in text.split("&")):
            raise ValueError("a query string like status=open&sort=updated_at")
        return super().__new__(cls, text)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        from urllib.parse import parse_qsl

        return parse_qsl(self, keep_blank_values=True)


class Headers(str):
    """Extra request headers, 'Name: value', one a line (in the INI: indented continuation lines)."""

    __slots__ = ()

    def __new__(cls, text: str) -> Headers:
        for line in str(text).splitlines():
            name, sep, _ = line.partition(":")
            if line.strip() and (not sep or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip())):
                raise ValueError("'Name: value' lines, like 'Accept: application/json'")
        return super().__new__(cls, str(text).strip())

    @property
    def mapping(self) -> dict[str, str]:
        found = {}
        for line in self.splitlines():
            name, _, value = line.partition(":")
            if name.strip():
                found[name.strip()] = value.strip()
        return found


class JsonObject(str):
    """A JSON object, as text: the body of a POST ('{"status": "open"}')."""

    __slots__ = ()

    def __new__(cls, text: str) -> JsonObject:
        import json

        text = str(text).strip()
        try:
            value = json.loads(text) if text else {}
        except ValueError as exc:
            raise ValueError(f"a JSON object ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError('a JSON object, like {"status": "open"}')
        return super().__new__(cls, text)

    @property
    def value(self) -> dict:
        import json

        return json.loads(self) if self else {}


def check_settings(given: dict[str, Any]) -> dict[str, Any]:
    """What the parameter types cannot check alone (combinations, ranges), as one-line errors."""
    s = dict(given)
    s.pop("ctx")
    for name in ("page_size", "http_retries", "first_page"):
        if s[name] < 0:
            raise ValueError(f"{name} = {s[name]}: expected 0 or more")
    if s["max_pages"] < 1:
        raise ValueError(f"max_pages = {s['max_pages']}: expected 1 or more")
    if s["rate_limit"] < 0:
        raise ValueError(f"rate_limit = {s['rate_limit']}: expected requests per second, 0 or more")
    if s["body"] and Method(s["method"]) != "POST":
        raise ValueError("body is set but method = GET; set method = POST or put the values in params")
    if s["since_param"] and not s["updated_field"]:
        raise ValueError("since_param needs updated_field: the watermark is the largest updated_field seen")
    auth, secret = Auth(s["auth"]), s["auth_secret"]
    if auth != "none" and not secret:
        raise ValueError(f"auth = {auth} needs auth_secret (in the INI: auth_secret = ${{env:NAME}})")
    if auth == "none" and secret:
        raise ValueError("auth_secret is set but auth = none; set auth = bearer, basic or header")
    if auth == "basic" and not s["auth_user"]:
        raise ValueError("auth = basic needs auth_user")
    s["auth_headers"] = {}
    s["secret_headers"] = ()
    s["basic"] = (s["auth_user"], secret) if auth == "basic" else None
    if auth == "bearer":
        s["auth_headers"] = {"Authorization": f"Bearer {secret}"}
    elif auth == "header":
        s["auth_headers"] = {s["auth_header"]: secret}
        s["secret_headers"] = (s["auth_header"],)
    s["method"] = Method(s["method"])
    s["pagination"] = Pagination(s["pagination"])
    s["query"] = Query(s["params"]).pairs
    s["json_body"] = JsonObject(s["body"]).value if s["method"] == "POST" else None
    s["timeouts"] = Timeouts(s["request_timeout"]).pair
    for name in ("since_overlap", "backoff", "max_retry_after"):
        s[name] = float(Seconds(s[name]))
    return s
