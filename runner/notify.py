"""Failure, recovery and missed-fire notifications to a job's `[notify:NAME]` channels.

Sent after the run is recorded, so nothing here can change a run's outcome or exit code. Per job
and channel: at most one failure notification within `notify_every` (ten failures in an hour send
one), and a recovery (the first success after failures) to each channel whose last notification
of the job was a failure. The `notices` table holds what was delivered, so the limits hold across
processes (a crontab line is a new process every fire); a delivery that failed is logged with the
run id and shown by `runner status`, and the next failure tries that channel again."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.channels import Channel, DeliveryError, Notice
from runner.enums import NoticeEvent, RunStatus
from runner.models import utcnow
from runner.runlog import tail

if TYPE_CHECKING:
    from pathlib import Path

    from runner.channels import Alerts
    from runner.runplan import Outcome, RunPlan
    from runner.store import Store
    from runner.store.records import RunRecord

log = logging.getLogger("runner.notify")

NOTIFY_TAIL_LINES = 20
NOTIFY_TAIL_BYTES = 4000
FAILURES = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.KILLED, RunStatus.LOST)
_OUTCOME_EVENTS = (NoticeEvent.FAILURE, NoticeEvent.RECOVERY)
_SAID = {
    RunStatus.FAILED: "failed",
    RunStatus.TIMED_OUT: "timed out",
    RunStatus.KILLED: "was killed",
    RunStatus.LOST: "was lost",
}


def after_run(plan: RunPlan, outcome: Outcome) -> None:
    """The result ping, then the notifications a recorded run calls for; never raises."""
    from runner.pings import ping_result

    alerts = plan.spec.alerts
    if alerts is None:
        return
    try:
        if alerts.ping_url:
            ping_result(plan, outcome)
        if alerts.channels:
            _notify_outcome(plan, outcome, alerts)
    except Exception:  # a bug here must not turn a recorded run into a crash
        log.exception("run %s: job %s: notifying failed", outcome.run_id, plan.spec.name)


def notify_missed(store: Store, job: str, alerts: Alerts | None, what: str) -> None:
    """Fires of `job` nobody ran while no scheduler was up (`what`: the catch-up's line)."""
    if alerts is None or not alerts.channels:
        return
    last = _last_delivered(store, job, alerts.channels, (NoticeEvent.MISSED,))
    due = [c for c in alerts.channels if _due(NoticeEvent.MISSED, last, c.name, alerts.every_s)]
    if due:
        from runner.store import HOSTNAME

        notice = Notice(
            job,
            NoticeEvent.MISSED,
            f"[runner] {job} missed scheduled fires",
            f"Job {job} on {HOSTNAME}: {what}.\n",
            {"host": HOSTNAME, "error": what},
        )
        deliver(store, notice, due, alerts.timeout_s, None)


def notify_lost(store: Store, record: RunRecord, alerts: Alerts | None, retries: int) -> None:
    """A run marked lost (its supervisor or its host died) that no retry follows: a failure
    notification, rate limited as a failed run's is; never raises. A run a retry follows is
    told by the retry's own outcome."""
    if alerts is None or not alerts.channels:
        return
    try:
        last = _last_delivered(store, record.job, alerts.channels, _OUTCOME_EVENTS)
        due = [c for c in alerts.channels if _due(NoticeEvent.FAILURE, last, c.name, alerts.every_s)]
        if due:
            deliver(store, _lost_notice(record, retries, alerts), due, alerts.timeout_s, record.id)
    except Exception:  # a bug here must not stop the daemon's heartbeat
        log.exception("run %s: job %s: notifying the lost run failed", record.id, record.job)


def _lost_notice(record: RunRecord, retries: int, alerts: Alerts) -> Notice:
    from runner.store import HOSTNAME

    ran_s = (
        (record.ended_at - record.started_at).total_seconds()
        if record.started_at and record.ended_at
        else 0.0
    )
    fields: dict[str, Any] = {
        "run_id": record.id,
        "first_run_id": record.first_run_id,
        "status": str(RunStatus.LOST),
        "error": record.error,
        "attempts": record.attempt,
        "host": record.host,
        "trigger": record.trigger,
        "fire_key": record.fire_key,
        "duration_s": round(ran_s, 3),
        "log_path": record.log_path,
        "noticed_by": HOSTNAME,
    }
    lines = [
        f"Job {record.job} was lost on {record.host}: run {record.id}, attempt {record.attempt} of "
        f"{retries + 1}; no retry follows.",
        f"Error: {record.error or '-'}",
        f"Trigger: {record.trigger}, fire {record.fire_key}; it ran {ran_s:.2f}s before it was lost.",
        f"Marked lost by runner on {HOSTNAME}. Whole log: runner logs {record.id} (on {record.host})",
    ]
    if alerts.every_s:
        lines.append(f"Further failures within notify_every = {_every(alerts.every_s)} are not notified.")
    subject = f"[runner] {record.job} was lost (run {record.id})"
    return Notice(record.job, NoticeEvent.FAILURE, subject, "\n".join(lines) + "\n", fields)


def deliver(
    store: Store,
    notice: Notice,
    channels: Sequence[Channel],
    timeout_s: float,
    run_id: int | None,
    log_path: Path | None = None,
) -> list[str]:
    """Send `notice` to each channel, one after the other; record each delivery. Returns the
    delivery errors (also logged with the run id, and appended to the run's log)."""
    errors = []
    for channel in channels:
        error = None
        try:
            channel.deliver(notice, timeout_s)
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:  # its text might show a secret: the type is enough to go on
            error = f"{type(exc).__name__} while delivering"
        if error is not None:
            error = f"{notice.event} notification to {channel.name}: {error}"
            errors.append(error)
            log.warning("run %s: job %s: %s", run_id if run_id is not None else "-", notice.job, error)
            if log_path is not None:
                _append(log_path, f"runner: {error}")
        try:
            store.notices.record(notice.job, run_id, notice.event, channel.name, error)
        except Exception as exc:
            log.warning("job %s: could not record the %s notification: %s", notice.job, notice.event, exc)
    return errors


def _notify_outcome(plan: RunPlan, outcome: Outcome, alerts: Alerts) -> None:
    if outcome.status is RunStatus.SUCCEEDED:
        event = NoticeEvent.RECOVERY
    elif outcome.status in FAILURES:
        event = NoticeEvent.FAILURE
    else:
        return
    job = plan.spec.name
    last = _last_delivered(plan.store, job, alerts.channels, _OUTCOME_EVENTS)
    due = [c for c in alerts.channels if _due(event, last, c.name, alerts.every_s)]
    if due:
        notice = _outcome_notice(plan, outcome, event, last)
        deliver(plan.store, notice, due, alerts.timeout_s, outcome.run_id, outcome.log_path)


def _last_delivered(
    store: Store, job: str, channels: Sequence[Channel], events: tuple[NoticeEvent, ...]
) -> dict[str, tuple[NoticeEvent, datetime]] | None:
    """None when the database cannot say (a failure is then sent, a recovery not)."""
    try:
        return store.notices.last_delivered(job, [c.name for c in channels], events)
    except Exception as exc:
        log.warning("job %s: cannot read earlier notifications (%s); not rate limiting this one", job, exc)
        return None


def _due(
    event: NoticeEvent, last: dict[str, tuple[NoticeEvent, datetime]] | None, channel: str, every_s: float
) -> bool:
    before = (last or {}).get(channel)
    if event is NoticeEvent.RECOVERY:
        return before is not None and before[0] is NoticeEvent.FAILURE
    recent = before is not None and (utcnow() - before[1]).total_seconds() < every_s
    return not (recent and before is not None and before[0] is event)


def _outcome_notice(
    plan: RunPlan,
    outcome: Outcome,
    event: NoticeEvent,
    last: dict[str, tuple[NoticeEvent, datetime]] | None,
) -> Notice:
    from runner.store import HOSTNAME

    job, fire = plan.spec.name, plan.fire
    tries = f"attempt {outcome.attempts} of {plan.spec.retries + 1}"
    fields: dict[str, Any] = {
        "run_id": outcome.run_id,
        "first_run_id": outcome.first_run_id,
        "status": str(outcome.status),
        "error": outcome.error,
        "attempts": outcome.attempts,
        "host": HOSTNAME,
        "trigger": str(fire.kind),
        "fire_key": fire.key,
        "duration_s": round(outcome.duration_s, 3),
        "log_path": str(outcome.log_path) if outcome.log_path else None,
    }
    if event is NoticeEvent.RECOVERY:
        since = min((at for ev, at in (last or {}).values() if ev is NoticeEvent.FAILURE), default=None)
        told = f" (the failure was notified at {since.astimezone():%Y-%m-%d %H:%M:%S %Z})" if since else ""
        subject = f"[runner] {job} recovered (run {outcome.run_id})"
        text = f"Job {job} succeeded again on {HOSTNAME}: run {outcome.run_id}, {tries}{told}.\n"
        return Notice(job, event, subject, text, fields)
    said = _SAID.get(outcome.status, str(outcome.status))
    last_lines = tail(outcome.log_path, NOTIFY_TAIL_LINES, NOTIFY_TAIL_BYTES)
    fields["log_tail"] = last_lines
    lines = [
        f"Job {job} {said} on {HOSTNAME}: run {outcome.run_id}, {tries}.",
        f"Error: {outcome.error or '-'}",
        f"Trigger: {fire.kind}, fire {fire.key}; it took {outcome.duration_s:.2f}s.",
        f"Whole log: runner logs {outcome.run_id}" + (f" ({outcome.log_path})" if outcome.log_path else ""),
    ]
    if plan.spec.alerts is not None and plan.spec.alerts.every_s:
        lines.append(
            f"Further failures within notify_every = {_every(plan.spec.alerts.every_s)} are not notified."
        )
    if last_lines:
        lines += ["", "Last lines of its log:", last_lines.rstrip("\n")]
    subject = f"[runner] {job} {said} (run {outcome.run_id})"
    return Notice(job, event, subject, "\n".join(lines) + "\n", fields)


def _every(seconds: float) -> str:
    from runner.durations import format_duration

    return format_duration(seconds)


def _append(path: Path, line: str) -> None:
    import os
    import time

    from runner.private import open_private

    with contextlib.suppress(OSError), os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
