"""HTTP for `poll_api`: one polite `requests.Session` per run (urllib3 retries that honour and cap
Retry-After, exponential backoff with jitter, a request-rate cap) and URLs safe to print.

Imported inside the job function: `requests` costs a crontab fire tens of milliseconds."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429} | set(range(500, 600)))
BACKOFF_JITTER = 0.25  # each backoff wait gets up to this fraction on top, so clients spread out
SHOWN_URL_CHARS = 300
SECRET_QUERY = re.compile(r"(pass|secret|token|key|sig|auth|credential)", re.IGNORECASE)


@dataclass(slots=True)
class Traffic:
    """What the run's HTTP cost: shared by every copy urllib3 makes of the Retry."""

    requests: int = 0  # requests sent, retries included
    retries: int = 0
    waits: int = 0  # waits before a retry (Retry-After or backoff)
    waited_s: float = 0.0
    paced_s: float = 0.0  # waited to keep under rate_limit


class PoliteRetry(Retry):
    """urllib3's Retry, counting into `traffic`, with every wait capped by `max_wait_s`.

    urllib3 applies its own (6 h) cap to Retry-After only in recent versions and waits nothing
    before the first backoff retry; here a Retry-After (seconds or an HTTP date) is honoured up to
    `max_wait_s`, and backoff is `backoff_factor` x 2^(n-1) for the n-th retry plus up to 25 %
    jitter, also at most `max_wait_s`."""

    def __init__(self, *args: Any, traffic: Traffic | None = None, max_wait_s: float = 60.0, **kw: Any):
        super().__init__(*args, **kw)
        self.traffic = traffic if traffic is not None else Traffic()
        self.max_wait_s = max_wait_s

    def new(self, **kw: Any) -> PoliteRetry:
        kw.setdefault("traffic", self.traffic)
        kw.setdefault("max_wait_s", self.max_wait_s)
        return super().new(**kw)

    def increment(self, *args: Any, **kw: Any) -> PoliteRetry:
        new = super().increment(*args, **kw)  # raises MaxRetryError when none are left
        self.traffic.retries += 1
        self.traffic.requests += 1
        return new

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            seconds = super().parse_retry_after(retry_after)
        except Exception:  # a malformed header: fall back to our own backoff
            return 0.0
        return min(seconds, self.max_wait_s)

    def get_backoff_time(self) -> float:
        failures = 0
        for attempt in reversed(self.history):
            if attempt.redirect_location is not None:
                break
            failures += 1
        if failures == 0 or self.backoff_factor <= 0:
            return 0.0
        base = self.backoff_factor * 2 ** min(failures - 1, 30)
        return min(self.max_wait_s, base * (1 + random.random() * BACKOFF_JITTER))

    def sleep(self, response: Any = None) -> None:
        started = time.monotonic()
        super().sleep(response)
        waited = time.monotonic() - started
        if waited > 0.001:
            self.traffic.waits += 1
            self.traffic.waited_s += waited


class Pace:
    """At most `per_s` request starts a second (0 = no limit)."""

    def __init__(self, per_s: float, traffic: Traffic) -> None:
        self.interval_s = 1.0 / per_s if per_s > 0 else 0.0
        self.traffic = traffic
        self.next_at = 0.0

    def wait(self) -> None:
        now = time.monotonic()
        if now < self.next_at:
            time.sleep(self.next_at - now)
            self.traffic.paced_s += self.next_at - now
            now = self.next_at
        self.next_at = now + self.interval_s


def open_session(
    *,
    retries: int,
    backoff_s: float,
    max_wait_s: float,
    traffic: Traffic,
    headers: dict[str, str],
    secret_headers: tuple[str, ...],
    auth: Any,
    verify: str | bool,
) -> requests.Session:
    """A session that retries connection errors, read errors, 429 and 5xx `retries` times."""
    retry = PoliteRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        allowed_methods=None,  # a poll is a read, POST included: retrying it is safe
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_s,
        respect_retry_after_header=True,
        raise_on_status=False,  # the last 429/5xx comes back as a response, to be reported
        raise_on_redirect=False,
        traffic=traffic,
        max_wait_s=max_wait_s,
    )
    session = _Session()
    session.secret_headers = secret_headers
    adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=1)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update(headers)
    session.auth = auth
    session.verify = verify
    return session


class _Session(requests.Session):
    """requests drops Authorization on a redirect to another host; we drop auth_header too."""

    secret_headers: tuple[str, ...] = ()

    def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in self.secret_headers:
                prepared_request.headers.pop(name, None)
        super().rebuild_auth(prepared_request, response)


def shown_url(url: str) -> str:
    """`url` as it may be printed: no user or password, secret-looking query values masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        query = urlencode(
            [
                (key, "***" if SECRET_QUERY.search(key) else value)
                for key, value in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*,:/",
        )
        text = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        text = "(an unparsable URL)"
    return text if len(text) <= SHOWN_URL_CHARS else text[: SHOWN_URL_CHARS - 1] + "…"


def same_origin(first: str, other: str) -> bool:
    a, b = urlsplit(first), urlsplit(other)
    return (a.scheme.lower(), a.hostname, a.port) == (b.scheme.lower(), b.hostname, b.port)
