"""Dead-man pings in the healthchecks.io convention: `URL/start` when a run starts, the bare URL
when it succeeded, `URL/fail` when it did not, each a POST whose body is the run's last log lines.

One start and one result per run (a fire), whatever its retries: a monitor times the whole run. A
monitor that is down costs the run at most `ping_timeout` per ping and never changes its outcome;
a ping that did not arrive is logged with the run id and kept for `runner status`."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from runner.channels import DeliveryError, post
from runner.enums import NoticeEvent, RunStatus
from runner.runlog import tail

if TYPE_CHECKING:
    from runner.runplan import Outcome, RunPlan

log = logging.getLogger("runner.pings")

PING_CHANNEL = "ping"  # notices.channel of a ping that failed
PING_TAIL_LINES = 100
PING_TAIL_BYTES = 10_000  # healthchecks.io keeps the first 100 kB of a body: this is plenty


def ping_start(plan: RunPlan, run_id: int) -> None:
    spec = plan.spec
    line = f"run {run_id} of job {spec.name} started (trigger {plan.fire.kind}, fire {plan.fire.key})\n"
    _ping(plan, run_id, "start", line.encode())


def ping_result(plan: RunPlan, outcome: Outcome) -> None:
    kind = "success" if outcome.status is RunStatus.SUCCEEDED else "fail"
    last_lines = tail(outcome.log_path, PING_TAIL_LINES, PING_TAIL_BYTES)
    if not last_lines:  # no log (stopped before a retry started): say why
        last_lines = f"run {outcome.run_id} {outcome.status}: {outcome.error or ''}\n"
    _ping(plan, outcome.run_id, kind, last_lines.encode())


def ping_url(url: str, kind: str) -> str:
    """`https://hc-ping.com/UUID` + start -> `https://hc-ping.com/UUID/start` (a query stays last)."""
    from urllib.parse import urlsplit, urlunsplit

    if kind == "success":
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{kind}"))


def _ping(plan: RunPlan, run_id: int, kind: str, body: bytes) -> None:
    alerts = plan.spec.alerts
    if alerts is None or not alerts.ping_url:
        return
    job = plan.spec.name
    try:
        post(ping_url(alerts.ping_url, kind), body, "text/plain; charset=utf-8", alerts.ping_timeout_s)
        return
    except DeliveryError as exc:
        error = f"{kind} ping: {exc}"
    except Exception as exc:  # whatever went wrong, the run goes on (its text might show the URL)
        error = f"{kind} ping: {type(exc).__name__}"
    log.warning("run %s: job %s: %s", run_id, job, error)
    with contextlib.suppress(Exception):
        plan.store.notices.record(job, run_id, NoticeEvent.PING, PING_CHANNEL, error)
