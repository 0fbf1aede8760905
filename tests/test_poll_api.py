"""The shipped poll_api job against real HTTP servers on 127.0.0.1: every pagination style, the
inclusive watermark boundary, retries and Retry-After, a connection reset mid-run, and the clear
failures that store nothing."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Project, assert_one_line_error
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

PAGE_SIZE = 4
PAGES = 25
T0 = datetime(2026, 11, 1, 10, 0, 0, tzinfo=UTC)
SECRET = "s3cr3t-token-value"
STYLES = ("link", "next_url", "cursor", "page", "offset")


def stamp(second: int) -> str:
    """A second-resolution updated_at, as many APIs write it."""
    return (T0 + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeApi:
    """A paged JSON API of orders, sorted oldest first by (updated_at, id), filtered by `since`
    (at or after it, or strictly after it with `strict`), with an ETag on every page."""

    server: HTTPServer
    style: str = "cursor"
    page_size: int = PAGE_SIZE
    strict: bool = False
    newest_first: bool = False
    auth: dict[str, str] = field(default_factory=dict)  # header -> value every request must carry
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    hook: Callable[[Request, int], Response | None] | None = None  # (request, served so far) -> reply
    after: Callable[[int], None] | None = None  # (served so far), once the answer is made
    served: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server.expect_request("/orders").respond_with_handler(self.handle)

    @property
    def url(self) -> str:
        return self.server.url_for("/orders")

    def add(self, count: int, second: int, **extra: Any) -> list[int]:
        first = max(self.orders, default=0) + 1
        for order_id in range(first, first + count):
            self.orders[order_id] = {"id": order_id, "updated_at": stamp(second), "total": order_id, **extra}
        return list(range(first, first + count))

    def values(self, request: Request) -> dict[str, Any]:
        if request.method == "POST":
            return {k: v for k, v in (request.get_json() or {}).items()}
        return dict(request.args.items())

    def handle(self, request: Request) -> Response:
        values = self.values(request)
        self.served.append(values)
        if self.hook is not None:
            reply = self.hook(request, len(self.served))
            if reply is not None:
                return reply
        for header, expected in self.auth.items():
            if request.headers.get(header) != expected:
                return Response('{"error": "unauthorized"}', 401, content_type="application/json")
        listing = sorted(
            self.orders.values(), key=lambda o: (o["updated_at"], o["id"]), reverse=self.newest_first
        )
        if "since" in values:
            since = datetime.fromisoformat(values["since"])
            listing = [
                o
                for o in listing
                if (datetime.fromisoformat(o["updated_at"]) > since)
                or (not self.strict and datetime.fromisoformat(o["updated_at"]) == since)
            ]
        size = int(values.get("limit", self.page_size))
        start = {
            "page": lambda: (int(values.get("page", 1)) - 1) * size,
            "offset": lambda: int(values.get("offset", 0)),
            "cursor": lambda: int(values.get("cursor", 0)),
            "link": lambda: int(values.get("start", 0)),
            "next_url": lambda: int(values.get("start", 0)),
            "none": lambda: 0,
        }[self.style]()
        chunk = listing[start:] if self.style == "none" else listing[start : start + size]
        body: dict[str, Any] = {"data": {"orders": chunk}}
        headers = {}
        more = self.style != "none" and start + size < len(listing)
        if more and self.style in ("link", "next_url"):
            query = "&".join(f"{k}={v}" for k, v in values.items() if k != "start")
            target = f"/orders?{query}&start={start + size}"
            if self.style == "link":
                headers["Link"] = f'<{target}>; rel="next"'
            else:
                body["links"] = {"next": target}
        if self.style == "cursor":
            body["next_cursor"] = str(start + size) if more else None
        text = json.dumps(body)
        if self.after is not None:
            self.after(len(self.served))
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return Response(status=304, headers={"ETag": etag})
        return Response(text, 200, content_type="application/json", headers={**headers, "ETag": etag})


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield FakeApi(server)
    finally:
        server.clear()
        server.stop()


AUTH_BY_STYLE = {  # each style also proves one way of authenticating
    "link": ("auth = bearer", {"Authorization": f"Bearer {SECRET}"}),
    "next_url": ("auth = header\nauth_header = X-Api-Key", {"X-Api-Key": SECRET}),
    "cursor": (
        "auth = basic\nauth_user = poller",
        {"Authorization": "Basic cG9sbGVyOnMzY3IzdC10b2tlbi12YWx1ZQ=="},
    ),
    "page": ("auth = bearer", {"Authorization": f"Bearer {SECRET}"}),
    "offset": ("auth = none", {}),
}


def configure(
    project: Project, api: FakeApi, *, name: str = "orders", extra: str = "", **params: object
) -> None:
    settings = {
        "url": api.url,
        "items": "data.orders",
        "updated_field": "updated_at",
        "since_param": "since",
        "pagination": api.style,
        "page_size": api.page_size,
        "next_field": "links.next",
        "backoff": "50ms",
        "timeout": "90s",
        **params,
    }
    lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
    project.configure(f"[job:{name}]\nuses = jobs.poll_api:poll_api\n{lines}\n{extra}")


def run(project: Project, job: str = "orders", *args: str, expect: int = 0) -> dict[str, Any]:
    done = project.runner("run", job, *args, "--json")
    assert done.returncode == expect, done
    return done.json()["result"] if expect == 0 else {}


def stored(project: Project, source: str = "orders") -> dict[str, dict[str, Any]]:
    from jobs.poll_api import poll_items

    engine = sa.create_engine(project.data_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(poll_items).where(poll_items.c.source == source)).mappings().all()
    finally:
        engine.dispose()
    found = {row["item_id"]: dict(row) for row in rows}
    assert len(found) == len(rows)
    return found


def job_state(project: Project, job: str = "orders") -> dict[str, Any]:
    engine = sa.create_engine(project.data_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT key, value FROM job_state WHERE job = :job"), {"job": job}
            ).all()
    finally:
        engine.dispose()
    return {key: json.loads(value) if isinstance(value, str) else value for key, value in rows}


def watermark(project: Project, job: str = "orders") -> Any:
    engine = sa.create_engine(project.data_url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT value FROM job_state WHERE job = :job AND key = :key"),
                {"job": job, "key": f"poll:{job}"},
            ).scalar()
    finally:
        engine.dispose()
    if isinstance(value, str):
        value = json.loads(value)
    return (value or {}).get("watermark")


# --- 1. every pagination style, incremental, conditional ------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_each_pagination_style_reads_every_item_once_then_only_newer(
    project: Project, api: FakeApi, style: str
) -> None:
    api.style = style
    auth, api.auth = AUTH_BY_STYLE[style]
    method = 'method = POST\nbody = {"status": "any"}' if style == "cursor" else ""
    project.environ["ORDERS_TOKEN"] = SECRET
    extra = f"{auth}\n{method}\n" + ("auth_secret = ${env:ORDERS_TOKEN}" if api.auth else "")
    configure(project, api, extra=extra)
    ids = [order_id for second in range(PAGES) for order_id in api.add(PAGE_SIZE, second)]

    first = run(project)
    fresh = api.add(3, PAGES + 5)
    second = run(project)
    third = run(project)
    served_before_fourth = len(api.served)
    fourth = run(project)

    assert (first["new"], first["changed"], first["unchanged"]) == (len(ids), 0, 0), first
    assert first["pages"] >= PAGES and first["complete"], first
    rows = stored(project)
    assert sorted(map(int, rows)) == ids + fresh
    assert all(row["payload"] == api.orders[int(key)] for key, row in rows.items())
    # The second run asked from the watermark (minus the overlap): the last second's items and the new ones.
    assert (second["new"], second["changed"]) == (3, 0), second
    assert second["items"] == 3 + 2 * PAGE_SIZE and second["unchanged"] == 2 * PAGE_SIZE, second
    assert watermark(project) == stamp(PAGES + 5)
    assert (third["items"], third["unchanged"], third["not_modified"]) == (3, 3, False), third
    # Nothing changed since: the first page's ETag comes back as 304, nothing is stored.
    assert fourth["not_modified"] and fourth["pages"] == 0 and fourth["new"] == 0, fourth
    assert len(api.served) == served_before_fourth + 1
    assert stored(project) == rows
    if project.database_url.startswith("postgresql"):
        assert payload_type(project) == "jsonb"


def payload_type(project: Project) -> str:
    """The SQL type PostgreSQL gave poll_items.payload."""
    engine = sa.create_engine(project.data_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = 'poll_items' AND column_name = 'payload'"
                )
            ).scalar_one()
    finally:
        engine.dispose()


def test_no_pagination_and_an_item_list_as_the_whole_body(sqlite_project: Project, api: FakeApi) -> None:
    api.style = "none"
    api.add(7, 1)
    original = api.handle

    def bare_list(request: Request) -> Response:
        reply = original(request)
        if reply.status_code == 200:
            reply.set_data(json.dumps(json.loads(reply.get_data())["data"]["orders"]))
        return reply

    api.server.clear()
    api.server.expect_request("/orders").respond_with_handler(bare_list)
    configure(sqlite_project, api, items="", since_param="", page_size=0)

    result = run(sqlite_project)

    assert (result["pages"], result["new"], result["requests"]) == (1, 7, 1), result
    assert len(stored(sqlite_project)) == 7


# --- 2. the boundary: items stamped with the watermark's own second -------------------------------


def test_items_sharing_the_watermark_second_written_during_a_run_are_fetched_next_time(
    project: Project, api: FakeApi
) -> None:
    """The API filters with "greater than" and stamps to the second. While the first run reads its
    last page, three orders arrive stamped with that page's second (the watermark it will store),
    and one order already read changes within that same second."""
    api.strict = True
    api.add(PAGE_SIZE * 5, 1)
    last = api.add(2, 9)
    late: list[int] = []

    def write_once_the_last_page_is_read(served: int) -> None:
        if served == 6 and not late:
            late.extend(api.add(3, 9))
            api.orders[last[0]] = {**api.orders[last[0]], "total": -1}  # changed, same second

    api.after = write_once_the_last_page_is_read
    configure(project, api)

    first = run(project)
    second = run(project)
    third = run(project)

    assert first["new"] == PAGE_SIZE * 5 + 2, first
    assert watermark(project) == stamp(9)
    assert (second["new"], second["changed"], second["unchanged"]) == (3, 1, 1), second  # overlap: free
    assert stored(project)[str(last[0])]["payload"]["total"] == -1
    assert sorted(map(int, stored(project))) == sorted(api.orders)
    assert third["not_modified"] and third["new"] == third["changed"] == 0, third
    row = stored(project)[str(last[0])]
    assert row["changes"] == 1 and row["changed_at"] > row["first_seen"]


def test_a_naive_greater_than_watermark_loses_those_items(sqlite_project: Project, api: FakeApi) -> None:
    """The same race with since_overlap = 0 against a "greater than" API: the test above has teeth."""
    api.strict = True
    api.add(2, 9)
    configure(sqlite_project, api, since_overlap="0s")
    run(sqlite_project)
    api.add(3, 9)

    second = run(sqlite_project)

    assert second["new"] == 0 and len(stored(sqlite_project)) == 2, second


# --- 3. retries, Retry-After, backoff, a server that never answers --------------------------------


def status_then_ok(codes: list[tuple[int, dict[str, str]]]) -> Callable[[Request, int], Response | None]:
    """A hook answering the first requests with the given statuses (and headers), then normally."""

    def hook(request: Request, served: int) -> Response | None:
        if served <= len(codes):
            status, headers = codes[served - 1]
            return Response("<html>busy</html>", status, headers=headers, content_type="text/html")
        return None

    return hook


def test_503_with_retry_after_seconds_waits_then_succeeds(sqlite_project: Project, api: FakeApi) -> None:
    api.add(3, 1)
    api.hook = status_then_ok([(503, {"Retry-After": "2"})])
    configure(sqlite_project, api)

    result = run(sqlite_project)

    assert (result["new"], result["retries"], result["waits"], result["requests"]) == (3, 1, 1, 2), result
    assert result["waited_s"] >= 2.0, result


def test_retry_after_as_an_http_date_is_honoured(sqlite_project: Project, api: FakeApi) -> None:
    api.add(3, 1)

    def hook(request: Request, served: int) -> Response | None:
        if served == 1:
            when = email.utils.formatdate(time.time() + 4, usegmt=True)  # 3 to 4 s ahead (whole seconds)
            return Response("slow down", 429, headers={"Retry-After": when})
        return None

    api.hook = hook
    configure(sqlite_project, api, backoff="10ms")

    result = run(sqlite_project)

    assert (result["new"], result["retries"], result["waits"]) == (3, 1, 1), result
    assert result["waited_s"] >= 1.5, result  # the date, not the 10 ms backoff


def test_a_429_storm_backs_off_exponentially(sqlite_project: Project, api: FakeApi) -> None:
    api.add(3, 1)
    api.hook = status_then_ok([(429, {})] * 4)
    configure(sqlite_project, api, backoff="100ms", http_retries=5)

    result = run(sqlite_project)

    assert (result["new"], result["retries"], result["waits"]) == (3, 4, 4), result
    assert result["waited_s"] >= 0.1 + 0.2 + 0.4 + 0.8, result


def test_retry_after_beyond_max_retry_after_is_capped(sqlite_project: Project, api: FakeApi) -> None:
    api.add(1, 1)
    api.hook = status_then_ok([(503, {"Retry-After": "3600"})])
    configure(sqlite_project, api, max_retry_after="1s")

    result = run(sqlite_project)  # the section's timeout (90s) would stop an hour's wait

    assert (result["new"], result["waits"]) == (1, 1) and result["waited_s"] >= 1.0, result


def test_429_storm_that_never_ends_fails_naming_the_status(sqlite_project: Project, api: FakeApi) -> None:
    api.add(1, 1)
    api.hook = status_then_ok([(429, {})] * 100)
    configure(sqlite_project, api, http_retries=2)

    done = sqlite_project.runner("run", "orders")

    assert_one_line_error(done, "status 429", "after 2 retries", "expected 2xx", exit_code=1)
    assert len(api.served) == 3
    assert stored(sqlite_project) == {}


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections, reads nothing, answers nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/orders", accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_server_that_never_answers_fails_within_its_retries(sqlite_project: Project) -> None:
    with silent_server() as (url, accepted):
        sqlite_project.configure(
            "[job:orders]\nuses = jobs.poll_api:poll_api\n"
            f"url = {url}\nrequest_timeout = 1s, 500ms\nhttp_retries = 2\nbackoff = 50ms\ntimeout = 90s\n"
        )
        done = sqlite_project.runner("run", "orders")

    assert_one_line_error(done, "no answer within 0.5s (after 3 attempts)", exit_code=1)
    row = sqlite_project.only_run()
    assert row["status"] == "failed", row  # the job gave up by itself, well before the section's timeout
    assert len(accepted) == 3


# --- 4. a connection reset after page 3 -----------------------------------------------------------


def reset_connection(request: Request) -> Response:
    """Drop the client's connection instead of answering (werkzeug's own close is then a TCP reset)."""
    sock = request.environ["werkzeug.socket"]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.shutdown(socket.SHUT_RDWR)
    return Response("", 500)


def test_a_reset_after_page_3_keeps_pages_1_to_3_and_the_next_run_goes_on(
    project: Project, api: FakeApi
) -> None:
    api.style = "link"
    ids = [order_id for second in range(10) for order_id in api.add(PAGE_SIZE, second)]
    broken = {"on": True}
    api.hook = lambda request, served: reset_connection(request) if broken["on"] and served > 3 else None
    configure(project, api, http_retries=1)

    done = project.runner("run", "orders")

    assert_one_line_error(done, "GET http://127.0.0.1:", "the connection was closed or reset", exit_code=1)
    assert sorted(map(int, stored(project))) == ids[: 3 * PAGE_SIZE]
    assert watermark(project) == stamp(2)  # page 3's last item, exactly
    assert len(api.served) == 5  # pages 1-3, then page 4 and its one retry

    broken["on"] = False
    result = run(project)

    assert (result["new"], result["changed"], result["unchanged"]) == (
        len(ids) - 3 * PAGE_SIZE,
        0,
        2 * PAGE_SIZE,
    )
    rows = stored(project)
    assert sorted(map(int, rows)) == ids
    assert {row["changes"] for row in rows.values()} == {0}
    assert watermark(project) == stamp(9)


# --- 5. answers the settings do not describe: one line, nothing stored, watermark kept -------------


BAD_ANSWERS = {
    "html": (Response("<html><body>Bad gateway</body></html>", 200, content_type="text/html"), "is not JSON"),
    "truncated": (
        Response('{"data": {"orders": [{"id": 1, "upd', 200, content_type="application/json"),
        "is not JSON",
    ),
    "wrong shape": (
        Response('{"results": []}', 200, content_type="application/json"),
        "has no 'data.orders'",
    ),
    "not a list": (
        Response('{"data": {"orders": {"id": 1}}}', 200, content_type="application/json"),
        "expected a list",
    ),
    "no id": (
        Response('{"data": {"orders": [{"name": "x"}]}}', 200, content_type="application/json"),
        "has no 'id'",
    ),
    "401": (
        Response('{"error": "bad token"}', 401, content_type="application/json"),
        "status 401 UNAUTHORIZED",
    ),
}


@pytest.mark.parametrize("answer", BAD_ANSWERS, ids=str)
def test_a_bad_answer_fails_in_one_line_and_stores_nothing(
    project: Project, api: FakeApi, answer: str
) -> None:
    api.add(3, 1)
    configure(project, api, params=f"api_key={SECRET}&status=open")
    run(project)
    before, mark = stored(project), watermark(project)
    api.add(2, 5)
    reply, expected = BAD_ANSWERS[answer]
    api.hook = lambda request, served: reply

    done = project.runner("run", "orders")

    assert_one_line_error(done, f"GET {api.url}?", expected, "expected", exit_code=1)
    assert "api_key=***" in done.stderr and SECRET not in done.stderr, done
    assert stored(project) == before and watermark(project) == mark
    assert SECRET not in json.dumps(job_state(project)), "a credential in the URL reached ctx.state"


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "url",
            "ftp://example.com/orders",
            "[job:orders] url = 'ftp://example.com/orders': expected HttpUrl",
        ),
        ("auth", "magic", "[job:orders] auth = 'magic': expected Auth: one of none, bearer, basic, header"),
        ("pagination", "pages", "expected Pagination: one of none, link, next_url, cursor, page, offset"),
        ("request_timeout", "soon", "expected Timeouts"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    sqlite_project: Project, key: str, value: str, expected: str
) -> None:
    settings = {"url": "http://127.0.0.1:9/orders", key: value}
    lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
    sqlite_project.configure(f"[job:orders]\nuses = jobs.poll_api:poll_api\n{lines}\n")

    assert_one_line_error(sqlite_project.runner("check"), expected)
    assert_one_line_error(sqlite_project.runner("run", "orders"), expected)
    assert sqlite_project.history() == []


def test_the_secret_is_masked_in_show_help_and_history(sqlite_project: Project, api: FakeApi) -> None:
    api.add(1, 1)
    api.auth = {"Authorization": f"Bearer {SECRET}"}
    sqlite_project.environ["ORDERS_TOKEN"] = SECRET
    configure(sqlite_project, api, extra="auth = bearer\nauth_secret = ${env:ORDERS_TOKEN}")

    shown = sqlite_project.runner("show", "orders", "--json")
    helped = sqlite_project.runner("run", "orders", "--help")
    result = run(sqlite_project)
    history = sqlite_project.runner("history", "--json")
    log = sqlite_project.runner("logs", str(sqlite_project.only_run()["id"]))

    assert result["new"] == 1
    for done in (shown, helped, history, log):
        assert done.returncode == 0, done
        assert SECRET not in done.stdout + done.stderr, done
    assert "--auth-secret" in helped.stdout and "--request-timeout" in helped.stdout


def test_importing_the_job_module_skips_requests_and_the_postgresql_dialect() -> None:
    probe = (
        "import sys, jobs.poll_api; "
        "print(sorted({'requests', 'urllib3', 'sqlalchemy.dialects.postgresql'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_watermark_is_sent_earlier_in_the_apis_own_format() -> None:
    from jobs._pollbody import earlier, order_key

    assert earlier("2026-11-01T10:00:00Z", 1.0) == "2026-11-01T09:59:59Z"
    assert earlier("2026-11-01 10:00:00.250+02:00", 0.5) == "2026-11-01 09:59:59.750+02:00"
    assert earlier("2026-11-01T10:00:00", 60) == "2026-11-01T09:59:00"
    assert earlier(1_700_000_000, 1.0) == 1_699_999_999
    assert earlier("v42", 1.0) == "v42"
    assert order_key("2026-11-01T10:00:00Z") == order_key("2026-11-01T12:00:00+02:00")
    assert order_key("2026-11-01T10:00:01Z") > order_key("2026-11-01T10:00:00.999Z")


# --- paging limits and hostile paging -------------------------------------------------------------


def test_max_pages_stops_a_run_and_the_next_goes_on_from_the_watermark(
    sqlite_project: Project, api: FakeApi
) -> None:
    ids = [order_id for second in range(6) for order_id in api.add(PAGE_SIZE, second)]
    configure(sqlite_project, api, max_pages=4)

    first = run(sqlite_project)
    mark = watermark(sqlite_project)
    second = run(sqlite_project)

    assert (first["pages"], first["new"], first["complete"]) == (4, 4 * PAGE_SIZE, False), first
    assert mark == stamp(3)
    assert (second["new"], second["unchanged"], second["complete"]) == (2 * PAGE_SIZE, 2 * PAGE_SIZE, True)
    assert sorted(map(int, stored(sqlite_project))) == ids
    assert watermark(sqlite_project) == stamp(5)


def test_items_out_of_order_hold_the_watermark_until_every_page_is_read(
    sqlite_project: Project, api: FakeApi
) -> None:
    """Newest first: after a page the items still to come are older, so a run cut short (here by
    max_pages) must not move the watermark past them."""
    for second in range(12):
        api.add(2, second)
    api.newest_first = True
    configure(sqlite_project, api, since_param="", max_pages=2)

    cut_short = run(sqlite_project)
    mark_after_cut = watermark(sqlite_project)
    whole = run(sqlite_project, "orders", "-p", "max_pages=100")

    assert not cut_short["complete"] and mark_after_cut is None, cut_short
    assert whole["complete"] and watermark(sqlite_project) == stamp(11), whole
    log = sqlite_project.runner("logs", str(sqlite_project.history()[0]["id"])).stdout
    assert "items are not oldest first" in log, log


def test_a_next_page_on_another_server_is_refused(sqlite_project: Project, api: FakeApi) -> None:
    api.add(PAGE_SIZE, 1)

    def elsewhere(request: Request, served: int) -> Response:
        body = {"data": {"orders": list(api.orders.values())}, "links": {"next": "http://169.254.0.1/steal"}}
        return Response(json.dumps(body), 200, content_type="application/json")

    api.hook = elsewhere
    configure(sqlite_project, api, pagination="next_url", auth="bearer", auth_secret="x")

    done = sqlite_project.runner("run", "orders")

    assert_one_line_error(done, "the next page is on another server", "expected the same", exit_code=1)
    assert len(api.served) == 1


def test_a_cursor_that_repeats_is_a_pagination_loop(sqlite_project: Project, api: FakeApi) -> None:
    api.add(PAGE_SIZE, 1)

    def same_cursor(request: Request, served: int) -> Response:
        body = {"data": {"orders": list(api.orders.values())}, "next_cursor": "again"}
        return Response(json.dumps(body), 200, content_type="application/json")

    api.hook = same_cursor
    configure(sqlite_project, api, pagination="cursor")

    done = sqlite_project.runner("run", "orders")

    assert_one_line_error(done, "the same next page twice", exit_code=1)
    assert len(api.served) == 2
