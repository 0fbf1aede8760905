"""Poll an HTTP JSON API incrementally: page through what changed since the last run, upsert every
item into `poll_items` (new / changed / unchanged by a content hash) and move the watermark in the
same transaction as the page it covers.

Watermark protocol. The watermark is the largest `updated_field` value stored so far for the
source. A run asks for items updated at or after it, minus `since_overlap` (an API that filters with
"greater than" would otherwise lose items stamped with the watermark's own second that were written
after the page was read); the overlap costs nothing, because an item whose content hash is already
stored is counted unchanged and not written again. Each page's items and the watermark are written
in one transaction, so a run that dies resumes after the last stored page. This is exact while the
API returns items oldest first; once a run sees an item older than one before it, its watermark
waits until the run has read every page (a run cut short leaves it where it was).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobs._pollbody import canonical_for, dig, earlier, field_getter, loads, order_key, snippet
from jobs._pollparams import (
    Auth,
    Headers,
    HttpUrl,
    JsonObject,
    Method,
    Pagination,
    Query,
    Seconds,
    Timeouts,
    check_settings,
)
from runner import JobContext, JobTables, job, main

STORE_BATCH_ITEMS = 5000  # pages are written together up to this many items,
STORE_BATCH_PAGES = 50  # ... this many pages,
STORE_BATCH_S = 2.0  # ... or this long after the first of them was read
READ_AHEAD_PAGES = 8  # pages read and checked before the consumer stored the ones before them
SQL_IDS_PER_STATEMENT = 5000  # ids in one IN (...): SQLite allows 32766 parameters
STATE_PREFIX = "poll:"  # ctx.state key of a source: watermark and the first page's validators


class Json(sa.types.TypeDecorator):
    """JSON text on SQLite, JSONB on PostgreSQL; the PostgreSQL dialect is imported only there (it
    would cost every `runner run` of this job, on SQLite too, a fifth of SQLAlchemy's import)."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(sa.JSON())


metadata = sa.MetaData()

poll_items = sa.Table(
    "poll_items",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(200), nullable=False),  # the job's name unless `source` is set
    sa.Column("item_id", sa.Text, nullable=False),  # id_field's value, as text
    sa.Column("payload", Json(), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),  # SHA-256 of the canonical JSON
    sa.Column("updated", sa.Text, nullable=True),  # updated_field's value as the API sent it
    sa.Column("first_seen", sa.DateTime, nullable=False),  # UTC: stored new
    sa.Column("last_seen", sa.DateTime, nullable=False),  # UTC: last returned by the API
    sa.Column("changed_at", sa.DateTime, nullable=False),  # UTC: content last changed (= first_seen)
    sa.Column("changes", sa.Integer, nullable=False),  # times its content changed after first_seen
    sa.Column("run_id", sa.Integer, nullable=False),  # the run that stored its current content
    sa.UniqueConstraint("source", "item_id", name="uq_poll_items_source_item"),
    sa.Index("ix_poll_items_source_changed", "source", "changed_at"),
)
TABLES = JobTables("poll_api", metadata, version=1)


class PollError(Exception):
    """The API answered something the settings do not describe: one line, naming the URL."""


@job(timeout="30m")
def poll_api(
    ctx: JobContext,
    url: HttpUrl,
    method: Method = "GET",
    params: Query = "",
    body: JsonObject = "",
    headers: Headers = "",
    auth: Auth = "none",
    auth_user: str = "",
    auth_secret: str = "",
    auth_header: str = "X-API-Key",
    items: str = "",
    id_field: str = "id",
    updated_field: str = "",
    since_param: str = "",
    since_overlap: Seconds = "1s",
    pagination: Pagination = "none",
    page_param: str = "page",
    first_page: int = 1,
    offset_param: str = "offset",
    cursor_param: str = "cursor",
    cursor_field: str = "next_cursor",
    next_field: str = "next",
    page_size: int = 0,
    page_size_param: str = "limit",
    max_pages: int = 1000,
    request_timeout: Timeouts = "10s, 30s",
    http_retries: int = 3,
    backoff: Seconds = "1s",
    max_retry_after: Seconds = "60s",
    rate_limit: float = 0.0,
    ca_bundle: Path | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Poll an HTTP JSON API and upsert its items into the poll_items table.

    Args:
        url: the first page, http:// or https://.
        method: GET, or POST (the body, since and paging values go in a JSON body).
        params: query parameters sent with every request, like status=open&sort=updated_at.
        body: with POST: the JSON object sent (since and paging values are added to it).
        headers: extra request headers, 'Name: value' one a line.
        auth: none, bearer (Authorization: Bearer SECRET), basic (auth_user and SECRET) or header
            (auth_header: SECRET).
        auth_user: the user name for basic auth.
        auth_secret: the token or password; put ${env:NAME} in the INI (masked everywhere).
        auth_header: the header that carries auth_secret with auth = header.
        items: dotted path to the list of items in the body; empty: the body is the list.
        id_field: dotted path to each item's unique id.
        updated_field: dotted path to each item's last-change time (ISO 8601 or a number); empty: no watermark.
        since_param: the parameter that sends the watermark; empty: every run reads everything.
        since_overlap: the watermark is sent this much earlier (items stamped in its second are not lost).
        pagination: none, link (Link: rel=next header), next_url (a URL in the body), cursor, page or offset.
        page_param: pagination = page: the page-number parameter.
        first_page: pagination = page: the first page's number.
        offset_param: pagination = offset: the offset parameter.
        cursor_param: pagination = cursor: the parameter that sends the cursor.
        cursor_field: pagination = cursor: dotted path to the next cursor in the body (empty or null: last page).
        next_field: pagination = next_url: dotted path to the next page's URL in the body.
        page_size: items per page to ask for (0: the API's default); a shorter page is the last.
        page_size_param: the parameter that sends page_size.
        max_pages: most pages one run reads; the next run goes on from the watermark.
        request_timeout: connect and read timeout: one duration, or 'CONNECT, READ'.
        http_retries: retries of a request after a connection error, a timeout, 429 or 5xx.
        backoff: wait before the first retry when the server gives no Retry-After; doubles each retry.
        max_retry_after: the longest wait before a retry, whatever Retry-After asks.
        rate_limit: most requests per second (0: no limit).
        ca_bundle: a CA bundle file to verify the server with (TLS verification is always on).
        source: the name items and the watermark are kept under (default: the job's name).
    """
    from jobs import _http

    started = time.monotonic()
    settings = check_settings(locals())
    TABLES.ensure(ctx)
    source = source or ctx.job
    traffic = _http.Traffic()
    session = _http.open_session(
        retries=http_retries,
        backoff_s=settings["backoff"],
        max_wait_s=settings["max_retry_after"],
        traffic=traffic,
        headers={**Headers(headers).mapping, **settings["auth_headers"]},
        secret_headers=settings["secret_headers"],
        auth=settings["basic"],
        verify=str(ca_bundle) if ca_bundle else True,
    )
    poll = Poll(ctx, session, traffic, settings, source)
    try:
        with session:
            for page in ctx.progress(poll.pages(), label=f"{ctx.job} pages"):
                poll.store(page)
            poll.flush()
            poll.finish()
    except Exception:
        poll.flush()  # the pages read and checked before the failure are kept, with their watermark
        poll.log_partial()
        raise
    return poll.summary(time.monotonic() - started)


# --- one run --------------------------------------------------------------------------------------


class Page:
    """One page as fetched: its items, ids, hashes and updated values, checked."""

    __slots__ = ("number", "rows", "top", "url")

    def __init__(self, number: int, url: str, rows: dict[str, tuple], top: Any) -> None:
        self.number, self.url, self.rows, self.top = number, url, rows, top


class Poll:
    """Fetching pages, storing them with the watermark, counting."""

    def __init__(self, ctx: JobContext, session: Any, traffic: Any, s: dict[str, Any], source: str) -> None:
        from jobs import _http

        self.ctx, self.session, self.traffic, self.s, self.source = ctx, session, traffic, s, source
        self.http = _http
        self.pace = _http.Pace(s["rate_limit"], traffic)
        self.key = STATE_PREFIX + source
        self.state = ctx.state.get(self.key) or {}
        self.watermark = self.state.get("watermark")
        self.start_watermark = self.watermark  # what this run asks from, on every page
        self.counts = dict.fromkeys(("pages", "items", "new", "changed", "unchanged"), 0)
        self.not_modified = False
        self.complete = False
        self.ordered = True
        self.last_key: tuple | None = None  # order_key of the previous item of this run
        self.pending: Any = None  # the watermark a run with out-of-order items moves at its end
        self.validators: dict[str, str] = {}
        self.buffer: list[Page] = []  # checked pages not written yet
        self.buffered_items = 0
        self.buffered_at = 0.0
        self.first_request = ""

    # -- fetching
    def pages(self) -> Iterator[Page]:
        """Each page, checked, in order. A reader thread fetches, parses and checks the pages (one
        request in flight at a time, up to READ_AHEAD_PAGES ahead) while the consumer stores the
        ones before: the database's work, which releases the GIL, overlaps the reading. An error
        of the reader is raised here, after the pages it read before it."""
        import queue
        import threading

        ready: queue.Queue = queue.Queue(maxsize=READ_AHEAD_PAGES)
        stop = threading.Event()

        def hand_over(kind: str, value: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put((kind, value), timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for page in self._read_pages(stop):
                    if not hand_over("page", page):
                        return
                hand_over("end", None)
            except BaseException as exc:  # raised again in the consumer, after the pages before it
                hand_over("error", exc)

        reader = threading.Thread(target=read, name="poll-read", daemon=True)
        reader.start()
        try:
            while True:
                kind, value = ready.get()
                if kind == "page":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            stop.set()

    def _read_pages(self, stop: Any) -> Iterator[Page]:
        """Fetch and check page after page until the last one, `max_pages` or `stop`."""
        s = self.s
        style, url = s["pagination"], s["url"]
        position = s["first_page"] if style == "page" else 0
        seen: set[str] = set()
        request = self._request(1, url, position)
        for number in range(1, s["max_pages"] + 1):
            if stop.is_set():
                return
            response, data = self._get(*request)
            if response is None:
                self.not_modified = self.complete = True
                return
            page = self._page(number, response.url, data, canonical_for(response.content))
            url, position = self._next(style, url, response, data, position, len(page.rows))
            if not page.rows or url is None:
                yield page
                break
            signature = f"{url} {position}"
            if signature in seen:
                raise PollError(
                    f"{self._where(url)}: the API sent the same next page twice (a pagination loop); "
                    "expected a new page"
                )
            seen.add(signature)
            request = self._request(number + 1, url, position)
            yield page
        else:
            self.ctx.log.info("stopped after max_pages = %d; the next run goes on", s["max_pages"])
            return
        self.complete = True

    def _request(self, number: int, url: str, position: Any) -> tuple[str, list, dict, dict]:
        """The arguments of `_get` for page `number`."""
        s = self.s
        style, body = s["pagination"], dict(s["json_body"] or {})
        if number > 1 and style in ("link", "next_url"):
            return url, [], {}, body  # the next page's URL carries its own parameters
        paging: dict[str, Any] = {}
        if s["since_param"] and self.start_watermark is not None:
            paging[s["since_param"]] = earlier(self.start_watermark, s["since_overlap"])
        if s["page_size"]:
            paging[s["page_size_param"]] = s["page_size"]
        if style in ("page", "offset"):
            paging[s["page_param"] if style == "page" else s["offset_param"]] = position
        elif style == "cursor" and number > 1:
            paging[s["cursor_param"]] = position
        return url, list(s["query"]), paging, body

    def _next(self, style: str, url: str, response: Any, data: Any, position: Any, count: int) -> tuple:
        s = self.s
        if style == "none":
            return None, position
        if style in ("page", "offset"):
            if s["page_size"] and count < s["page_size"]:
                return None, position
            return url, position + (1 if style == "page" else count)
        if style == "cursor":
            cursor = self._field(data, s["cursor_field"], response, optional=True)
            return (url, cursor) if cursor not in (None, "", False) else (None, position)
        if style == "link":
            target = response.links.get("next", {}).get("url")
        else:
            target = self._field(data, s["next_field"], response, optional=True)
        if not target:
            return None, position
        if not isinstance(target, str):
            raise PollError(
                f"{self._where(response.url)}: {s['next_field']} is not a URL; expected a URL or null"
            )
        from urllib.parse import urljoin

        target = urljoin(response.url, target)
        if not self.http.same_origin(s["url"], target):
            raise PollError(
                f"{self._where(response.url)}: the next page is on another server "
                f"({self.http.shown_url(target)}); expected the same scheme, host and port as url"
            )
        return target, position

    def _get(self, url: str, query: list, paging: dict, body: dict) -> tuple[Any, Any]:
        import requests

        s = self.s
        conditional = {}
        first = self.first_request == ""
        if first:
            # Kept in ctx.state as a hash: the URL and parameters may hold credentials.
            signature = f"{s['method']} {url} {sorted(query)} {sorted(paging.items())} {sorted(body.items())}"
            self.first_request = hashlib.sha256(signature.encode()).hexdigest()
            if self.state.get("validated") == self.first_request:
                if self.state.get("etag"):
                    conditional["If-None-Match"] = self.state["etag"]
                if self.state.get("last_modified"):
                    conditional["If-Modified-Since"] = self.state["last_modified"]
        self.pace.wait()
        self.traffic.requests += 1
        kwargs: dict[str, Any] = {"timeout": s["timeouts"], "headers": conditional}
        if s["method"] == "POST":
            kwargs["json"] = {**body, **paging}
            kwargs["params"] = query if url == s["url"] else None
        else:
            kwargs["params"] = [*query, *paging.items()] if (query or paging) else None
        try:
            response = self.session.request(s["method"], url, **kwargs)
            content = response.content
        except requests.RequestException as exc:
            raise PollError(f"{self._where(url, kwargs)}: {self._describe(exc)}") from None
        where = self._where(response.url)
        if response.status_code == 304 and conditional:
            self.ctx.log.info("%s: 304 not modified", where)
            return None, None
        if not 200 <= response.status_code < 300:
            raise PollError(f"{where}: {self._status(response)}")
        if first:
            for header, key in (("ETag", "etag"), ("Last-Modified", "last_modified")):
                if response.headers.get(header):
                    self.validators[key] = response.headers[header]
        try:
            data = loads(content)
        except ValueError as exc:
            kind = response.headers.get("Content-Type", "no Content-Type")
            raise PollError(
                f"{where}: status {response.status_code}, {kind}, but the body is not JSON ({exc}): "
                f"{snippet(content)}; expected a JSON document"
            ) from None
        return response, data

    def _describe(self, exc: Exception) -> str:
        import requests

        attempts = f"after {self.s['http_retries'] + 1} attempts" if self.s["http_retries"] else "no retries"
        connect, read = self.s["timeouts"]
        reason = exc.args[0] if exc.args else exc
        reason = getattr(reason, "reason", reason)
        if isinstance(exc, requests.ConnectTimeout):
            what = f"could not connect within {connect:g}s"
        elif isinstance(exc, requests.ReadTimeout) or "ReadTimeout" in type(reason).__name__:
            what = f"no answer within {read:g}s"
        elif isinstance(exc, requests.exceptions.SSLError):
            what = "TLS verification failed (set ca_bundle for a private CA)"
        elif "NewConnectionError" in type(reason).__name__:
            what = "could not connect (refused or unreachable)"
        elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
            what = "the connection broke while the body was read"
        elif isinstance(exc, requests.ConnectionError):
            what = "the connection was closed or reset"
        else:
            what = type(exc).__name__
        return f"{what} ({attempts}); expected an HTTP response"

    def _status(self, response: Any) -> str:
        code = response.status_code
        text = f"status {code} {response.reason or ''}".rstrip()
        if code == 429 or code >= 500:
            return f"{text} after {self.s['http_retries']} retries: {snippet(response.content)}; expected 2xx"
        hint = " (check auth and auth_secret)" if code in (401, 403) else ""
        return f"{text}{hint}: {snippet(response.content)}; expected 2xx"

    def _where(self, url: str, kwargs: dict | None = None) -> str:
        if kwargs and kwargs.get("params"):
            import requests

            url = requests.Request("GET", url, params=kwargs["params"]).prepare().url or url
        return f"{self.s['method']} {self.http.shown_url(url)}"

    def _field(self, data: Any, path: str, response: Any, optional: bool = False) -> Any:
        try:
            return dig(data, path)
        except KeyError as exc:
            if optional:
                return None
            raise PollError(f"{self._where(response.url)}: no {exc} in {path!r}") from None

    def _page(self, number: int, url: str, data: Any, canonical: Callable[[Any], str]) -> Page:
        """Check a page's items; any problem fails the run before anything of the page is stored."""
        s = self.s
        where = self._where(url)
        try:
            found = dig(data, s["items"])
        except KeyError as missing:
            keys = ", ".join(list(data)[:10]) if isinstance(data, dict) else type(data).__name__
            raise PollError(
                f"{where}: the body has no {s['items']!r} (no {missing} where it has: {keys}); "
                "expected the list of items there (setting items)"
            ) from None
        if not isinstance(found, list):
            raise PollError(
                f"{where}: {s['items'] or 'the body'!r} is a JSON {type(found).__name__}; "
                "expected a list of items (setting items)"
            )
        rows: dict[str, tuple] = {}
        top, top_key, last_key = None, None, self.last_key
        id_of, updated_of = field_getter(s["id_field"]), field_getter(s["updated_field"])
        sha256 = hashlib.sha256
        known_keys: dict[str, tuple] = {}
        for index, item in enumerate(found):
            try:
                item_id = id_of(item)
            except LookupError:
                raise PollError(
                    f"{where}: item {index} has no {s['id_field']!r}; expected every item to have its id there "
                    "(setting id_field)"
                ) from None
            if type(item_id) not in (str, int) or item_id == "":
                raise PollError(
                    f"{where}: item {index} has {s['id_field']} = {json.dumps(item_id)[:40]}; "
                    "expected a string or a whole number"
                )
            updated = None
            if updated_of is not None:
                try:
                    updated = updated_of(item)
                    key = known_keys.get(updated) if type(updated) is str else None
                    if key is None:  # items stamped to the second share their times: parse each once
                        key = order_key(updated)
                        if type(updated) is str:
                            known_keys[updated] = key
                except (LookupError, TypeError):
                    raise PollError(
                        f"{where}: item {index} has no usable {s['updated_field']!r}; expected an ISO 8601 "
                        "time or a number (setting updated_field)"
                    ) from None
                if last_key is not None and key < last_key and self.ordered:
                    self.ordered = False
                    self.ctx.log.warning(
                        "%s: items are not oldest first (item %d is older than the one before it); the "
                        "watermark moves only once this run has read every page",
                        where,
                        index,
                    )
                last_key = key
                if top_key is None or key > top_key:
                    top, top_key = updated, key
            content = canonical(item)
            rows[str(item_id)] = (content, sha256(content.encode()).hexdigest(), updated)
        self.last_key = last_key
        return Page(number, url, rows, top)

    # -- storing
    def store(self, page: Page) -> None:
        """Buffer a checked page; write the buffer when it is big or old enough (one transaction
        per page cost more than the pages' own rows)."""
        if not self.buffer:
            self.buffered_at = time.monotonic()
        self.buffer.append(page)
        self.buffered_items += len(page.rows)
        if (
            self.buffered_items >= STORE_BATCH_ITEMS
            or len(self.buffer) >= STORE_BATCH_PAGES
            or time.monotonic() - self.buffered_at >= STORE_BATCH_S
        ):
            self.flush()

    def flush(self) -> None:
        """Write the buffered pages and move the watermark over them, in one transaction."""
        if not self.buffer:
            return
        pages, self.buffer, self.buffered_items = self.buffer, [], 0
        now = datetime.now(UTC).replace(tzinfo=None)
        with self.ctx.transaction() as conn:
            top = None
            for page in pages:
                if page.rows:
                    self._upsert(conn, page, now)
                if page.top is not None:
                    top = self._move_watermark(page, top)
            if top is not None:
                self._set_watermark(top)
        for page in pages:
            self.counts["pages"] += 1
            self.counts["items"] += len(page.rows)

    def _upsert(self, conn: sa.Connection, page: Page, now: datetime) -> None:
        dialect = conn.dialect.name
        known: dict[str, str] = {}
        ids = list(page.rows)
        for chunk in range(0, len(ids), SQL_IDS_PER_STATEMENT):
            sql, params = _in_ids(
                dialect, SELECT_KNOWN_SQL, self.source, ids[chunk : chunk + SQL_IDS_PER_STATEMENT]
            )
            known.update(conn.exec_driver_sql(sql, params).all())
        fresh, same = [], []
        stamp = _db_time(dialect, now)
        counts = self.counts
        for item_id, (content, digest, updated) in page.rows.items():
            before = known.get(item_id)
            if before == digest:
                same.append(item_id)
                continue
            counts["changed" if before is not None else "new"] += 1
            shown = None if updated is None else str(updated)
            fresh.append((self.source, item_id, content, digest, shown, stamp, stamp, stamp, self.ctx.run_id))
        counts["unchanged"] += len(same)
        if fresh:
            conn.exec_driver_sql(_upsert_sql(dialect), fresh)
        for chunk in range(0, len(same), SQL_IDS_PER_STATEMENT):
            sql, params = _in_ids(
                dialect, TOUCH_SQL, self.source, same[chunk : chunk + SQL_IDS_PER_STATEMENT]
            )
            conn.exec_driver_sql(sql, (stamp, *params))

    def _move_watermark(self, page: Page, top: Any) -> Any:
        """The watermark to set after `page` (None: not yet); out of order, it waits for the end."""
        if self.ordered:
            return page.top if top is None or order_key(page.top) > order_key(top) else top
        if self.pending is None or order_key(page.top) > order_key(self.pending):
            self.pending = page.top
        return top

    def _set_watermark(self, value: Any) -> None:
        """Inside the pages' transaction: the key is locked by `get` until it commits."""
        state = self.ctx.state.get(self.key) or {}
        current = state.get("watermark")
        if current is None or order_key(value) > order_key(current):
            state["watermark"] = value
            self.ctx.state.set(self.key, state)
            self.watermark = value

    def finish(self) -> None:
        """After the last page is written: the deferred watermark, the first page's validators."""
        if not self.complete:
            if self.start_watermark is not None and self.watermark == self.start_watermark:
                self.ctx.log.warning(
                    "the watermark did not move: max_pages x page_size items share its overlap "
                    "(since_overlap); raise max_pages or page_size, or every run reads the same pages"
                )
            return
        if self.not_modified:
            return
        with self.ctx.transaction():
            if self.pending is not None:
                self._set_watermark(self.pending)
            state = self.ctx.state.get(self.key) or {}
            for key in ("etag", "last_modified", "validated"):
                state.pop(key, None)
            if self.validators:
                state.update(self.validators, validated=self.first_request)
            self.ctx.state.set(self.key, state)

    def log_partial(self) -> None:
        if self.counts["pages"]:
            self.ctx.log.info(
                "before the failure: %(pages)d pages stored (%(new)d new, %(changed)d changed, "
                "%(unchanged)d unchanged)",
                self.counts,
            )
        self.ctx.log.info("watermark of %s: %s", self.source, self.watermark)

    def summary(self, seconds: float) -> dict[str, Any]:
        t = self.traffic
        result = {
            "source": self.source,
            **self.counts,
            "requests": t.requests,
            "retries": t.retries,
            "waits": t.waits,
            "waited_s": round(t.waited_s, 3),
            "paced_s": round(t.paced_s, 3),
            "not_modified": self.not_modified,
            "complete": self.complete,
            "watermark": self.watermark,
            "seconds": round(seconds, 3),
        }
        self.ctx.log.info(
            "%(source)s: %(pages)d pages, %(items)d items (%(new)d new, %(changed)d changed, "
            "%(unchanged)d unchanged), %(requests)d requests, %(retries)d retries in %(seconds).1fs",
            result,
        )
        return result


# One executemany per page, below SQLAlchemy's per-row parameter processing (which cost more than
# the HTTP, the parsing and the hashing together); the same SQL on SQLite and PostgreSQL.
UPSERT_SQL = (
    "INSERT INTO poll_items (source, item_id, payload, content_hash, updated, first_seen, last_seen, "
    "changed_at, changes, run_id) VALUES ({p}, {p}, {payload}, {p}, {p}, {p}, {p}, {p}, 0, {p}) "
    "ON CONFLICT (source, item_id) DO UPDATE SET payload = excluded.payload, "
    "content_hash = excluded.content_hash, updated = excluded.updated, last_seen = excluded.last_seen, "
    "changed_at = excluded.changed_at, changes = poll_items.changes + 1, run_id = excluded.run_id"
)


SELECT_KNOWN_SQL = "SELECT item_id, content_hash FROM poll_items WHERE source = {p} AND item_id {ids}"
TOUCH_SQL = "UPDATE poll_items SET last_seen = {p} WHERE source = {p} AND item_id {ids}"


def _upsert_sql(dialect: str) -> str:
    if dialect == "postgresql":
        return UPSERT_SQL.format(p="%s", payload="%s::jsonb")
    return UPSERT_SQL.format(p="?", payload="?")


def _in_ids(dialect: str, template: str, source: str, ids: list[str]) -> tuple[str, tuple]:
    """`template`'s `item_id {ids}` as this driver takes a list: `= ANY(%s)` on PostgreSQL."""
    if dialect == "postgresql":
        return template.format(p="%s", ids="= ANY(%s)"), (source, ids)
    return template.format(p="?", ids=f"IN ({','.join('?' * len(ids))})"), (source, *ids)


def _db_time(dialect: str, moment: datetime) -> Any:
    """`moment` as the driver takes it: SQLite stores SQLAlchemy's DateTime text."""
    return moment if dialect == "postgresql" else moment.strftime("%Y-%m-%d %H:%M:%S.%f")


if __name__ == "__main__":
    main()
