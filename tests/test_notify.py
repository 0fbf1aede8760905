"""Notifications: `[notify:NAME]` channels (a real SMTP server and a real HTTP server on
127.0.0.1) told of failures, recoveries and missed fires, rate limited per job and channel, never
changing a run's outcome; their secrets masked; bad sections refused in one line."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import DEADLINE_S, Project, assert_one_line_error, stop, wait_until
from mailserver import MailServer
from webhook import Closed, Recorder, Silent

HOOK_TOKEN = "T0KEN-abc123-s3cret"


@pytest.fixture
def hooks() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def mail() -> Iterator[MailServer]:
    server = MailServer("none")
    yield server
    server.close()


def channels(mail_port: int, hook_url: str, *, fmt: str = "slack") -> str:
    return f"""
        [notify:ops]
        type = email
        smtp_host = 127.0.0.1
        smtp_port = {mail_port}
        smtp_security = none
        sender = runner@example.com
        to = ops@example.com, lead@example.com

        [notify:chat]
        type = webhook
        url = {hook_url}/hooks/${{env:HOOK_TOKEN}}
        format = {fmt}
    """


def configure(project: Project, mail_port: int, hook_url: str, job: str = "", **runner: str) -> None:
    project.environ["HOOK_TOKEN"] = HOOK_TOKEN
    project.configure(
        channels(mail_port, hook_url)
        + f"""
        [job:flaky]
        uses = jobs_fixture.wobbly:wobbly
        notify = ops, chat
        {job}
        """,
        **runner,
    )


def subjects(mail: MailServer) -> list[str]:
    return [
        email.message_from_bytes(m.original_content, policy=email.policy.default)["Subject"]
        for m in mail.messages
    ]


def test_ten_failures_send_one_notification_then_a_success_sends_a_recovery(
    project: Project, mail: MailServer, hooks: Recorder
) -> None:
    configure(project, mail.port, hooks.url, "notify_every = 1h")
    for _ in range(10):
        done = project.runner("run", "flaky", "-p", "fail=true")
        assert done.returncode == 1, done
    assert len(mail.messages) == 1 and len(hooks.requests) == 1
    first_run = project.history("flaky")[0]["id"]

    message = email.message_from_bytes(mail.messages[0].original_content, policy=email.policy.default)
    assert message["Subject"] == f"[runner] flaky failed (run {first_run})"
    assert sorted(mail.messages[0].rcpt_tos) == ["lead@example.com", "ops@example.com"]
    body = message.get_content()
    assert "flaky was told to fail" in body and "flaky line 3" in body  # the error and the log tail
    hook = hooks.requests[0]
    assert hook.path == f"/hooks/{HOOK_TOKEN}" and hook.content_type == "application/json"
    assert list(hook.json()) == ["text"]  # format = slack: the payload chat webhooks take
    assert "flaky failed" in hook.json()["text"]

    done = project.runner("run", "flaky")
    assert done.returncode == 0, done
    assert subjects(mail)[1].startswith("[runner] flaky recovered (run ")
    assert len(hooks.requests) == 2 and "flaky recovered" in hooks.requests[1].json()["text"]

    again = project.runner("run", "flaky")  # a success after a success says nothing
    assert again.returncode == 0, again
    assert len(mail.messages) == 2 and len(hooks.requests) == 2

    # A new failure after the recovery is a new incident: it is told at once.
    assert project.runner("run", "flaky", "-p", "fail=true").returncode == 1
    assert len(mail.messages) == 3 and "failed" in subjects(mail)[2]


def test_notify_every_zero_tells_every_failure_and_json_format_has_every_field(
    project: Project, hooks: Recorder
) -> None:
    project.environ["HOOK_TOKEN"] = HOOK_TOKEN
    project.configure(
        f"""
        [notify:chat]
        type = webhook
        url = {hooks.url}/hooks/${{env:HOOK_TOKEN}}

        [job:flaky]
        uses = jobs_fixture.wobbly:wobbly
        retries = 1
        retry_backoff = 0s
        """,
        notify="chat",  # the [runner] default reaches every job
        notify_every="0",
    )
    for _ in range(2):
        assert project.runner("run", "flaky", "-p", "fail=true").returncode == 1
    assert len(hooks.requests) == 2  # one per run, after its last attempt: not one per attempt
    runs = project.history("flaky")
    payload = hooks.requests[0].json()
    assert payload["event"] == "failure" and payload["job"] == "flaky" and payload["status"] == "failed"
    assert payload["run_id"] == runs[1]["id"] and payload["attempts"] == 2
    assert payload["first_run_id"] == runs[0]["id"]
    assert "flaky was told to fail" in payload["error"] and "flaky line 3" in payload["log_tail"]


@pytest.mark.parametrize("down", [Closed, Silent], ids=["refused", "never-answers"])
def test_a_down_webhook_changes_nothing_about_the_run_and_status_shows_it(
    sqlite_project: Project, mail: MailServer, hooks: Recorder, down: type[Closed] | type[Silent]
) -> None:
    project = sqlite_project
    endpoint = down()
    try:
        configure(project, mail.port, endpoint.url, "notify_timeout = 2s")
        started = time.monotonic()
        done = project.runner("run", "flaky", "-p", "fail=true")
        took_s = time.monotonic() - started
    finally:
        endpoint.close()
    assert done.returncode == 1, done  # the job's own failure, nothing else
    assert took_s < DEADLINE_S, took_s  # without a timeout a silent server would hold it for ever
    run = project.only_run("flaky")
    assert run["status"] == "failed" and "flaky was told to fail" in run["error"]
    assert len(mail.messages) == 1  # the other channel still got it
    assert f"run {run['id']}: job flaky: failure notification to chat" in done.stderr
    assert HOOK_TOKEN not in done.stderr

    status = project.runner("status", "--json")
    undelivered = status.json()["undelivered"]
    assert [(n["run_id"], n["job"], n["event"], n["channel"]) for n in undelivered] == [
        (run["id"], "flaky", "failure", "chat")
    ]
    assert "/***" in undelivered[0]["error"] and HOOK_TOKEN not in status.stdout
    table = project.runner("status")
    assert "NOT DELIVERED" in table.stdout and "notification to chat" in table.stdout, table
    log = project.runner("logs", str(run["id"]))
    assert "failure notification to chat" in log.stdout

    # The next failure tries the channel that did not get the last one again.
    configure(project, mail.port, hooks.url, "notify_timeout = 2s")
    assert project.runner("run", "flaky", "-p", "fail=true").returncode == 1
    assert len(hooks.requests) == 1
    assert len(mail.messages) == 1  # ops got the last one within notify_every


def test_an_unset_smtp_password_fails_the_delivery_not_the_job(
    sqlite_project: Project, hooks: Recorder
) -> None:
    project = sqlite_project
    project.configure(
        f"""
        [notify:ops]
        type = email
        smtp_host = 127.0.0.1
        smtp_user = runner
        smtp_password = ${{env:NOT_SET_ANYWHERE}}
        to = ops@example.com

        [notify:chat]
        type = webhook
        url = {hooks.url}/hook

        [job:flaky]
        uses = jobs_fixture.wobbly:wobbly
        notify = ops, chat
        """
    )
    done = project.runner("run", "flaky", "-p", "fail=true")
    assert done.returncode == 1, done
    assert "NOT_SET_ANYWHERE is not set" in done.stderr
    assert len(hooks.requests) == 1
    check = project.runner("check")
    assert check.returncode == 2 and "NOT_SET_ANYWHERE" in check.stderr, check


def test_show_lists_the_targets_with_their_secrets_masked(project: Project, hooks: Recorder) -> None:
    configure(project, 2525, hooks.url, f"ping_url = {hooks.url}/ping/0f4c-uuid-secret")
    shown = project.runner("show", "flaky")
    assert shown.returncode == 0, shown
    assert "ops: email to ops@example.com, lead@example.com via 127.0.0.1:2525" in shown.stdout
    assert f"chat: webhook {hooks.url}/*** (slack)" in shown.stdout
    assert f"{hooks.url}/***" in shown.stdout and "0f4c-uuid-secret" not in shown.stdout
    as_json = project.runner("show", "flaky", "--json")
    assert as_json.json()["settings"]["ping_url"] == f"{hooks.url}/***"
    assert as_json.json()["section"]["ping_url"] == f"{hooks.url}/***"
    assert "0f4c-uuid-secret" not in as_json.stdout and HOOK_TOKEN not in as_json.stdout


@pytest.mark.parametrize(
    ("ini", "fragments"),
    [
        (
            "[job:flaky]\nuses = jobs_fixture.wobbly:wobbly\nnotify = opz\n",
            ["[job:flaky] notify = 'opz'", "no [notify:opz] section; expected one of: chat"],
        ),
        (
            "[notify:chat]\ntype = webhook\nurl = ftp://hooks.example.com/T0/secret-path\n",
            ["[notify:chat] url = 'ftp://hooks.example.com/***'", "expected an http:// or https:// URL"],
        ),
        (
            "[job:flaky]\nuses = jobs_fixture.wobbly:wobbly\nping_url = hc-ping.com/uuid-secret\n",
            ["[job:flaky] ping_url", "expected an http:// or https:// URL"],
        ),
        (
            "[notify:mail]\ntype = email\nto = ops@example.com\n",
            ["[notify:mail] smtp_host", "an email channel needs its mail server"],
        ),
        ("[notify:chat2]\nurl = https://x.example.com/h\n", ["[notify:chat2] type", "expected type = email"]),
        (
            "[notify:mail]\ntype = email\nsmtp_host = h\nto = a@b\nformat = slack\n",
            ["[notify:mail] format", "only means something in a webhook section"],
        ),
    ],
    ids=["unknown-name", "bad-scheme", "ping-no-scheme", "no-smtp-host", "no-type", "wrong-key"],
)
def test_bad_notify_settings_are_one_line_and_exit_2(
    sqlite_project: Project, ini: str, fragments: list[str]
) -> None:
    project = sqlite_project
    project.configure(
        "[notify:chat]\ntype = webhook\nurl = https://hooks.example.com/h\n\n" * ("chat]" not in ini) + ini
    )
    done = project.runner("check")
    assert_one_line_error(done, *fragments)
    assert "secret" not in done.stderr


def test_a_missed_fire_notifies_once_when_the_daemon_comes_back(
    sqlite_project: Project, hooks: Recorder
) -> None:
    """The catch-up scenario of tests/test_daemon.py: two fires pass while no daemon runs."""
    project = sqlite_project
    out = project.root / "ticks.txt"
    project.configure(
        f"""
        [notify:chat]
        type = webhook
        url = {hooks.url}/hook

        [job:tick]
        uses = jobs_fixture.ticks:tick
        schedule = every 2s
        out = {out}
        catchup = 0
        notify = chat
        """,
        timezone="UTC",
    )
    daemon = project.start("daemon")
    wait_until(out.exists, "the first fire")
    stop(project, daemon)
    assert hooks.requests == []
    time.sleep(4.5)
    daemon = project.start("daemon")
    wait_until(lambda: hooks.requests, "the missed-fire notification")
    stop(project, daemon)
    missed = [r.json() for r in hooks.requests if r.json()["event"] == "missed"]
    assert len(missed) == 1, [r.json() for r in hooks.requests]
    assert missed[0]["job"] == "tick" and "while no scheduler ran" in missed[0]["error"]
    assert "outside catchup = 0 (never)" in missed[0]["text"]


def test_runner_catchup_notifies_the_cron_fires_missed_while_the_machine_was_down(
    sqlite_project: Project, hooks: Recorder
) -> None:
    project = sqlite_project
    project.configure(
        f"""
        [notify:chat]
        type = webhook
        url = {hooks.url}/hook

        [job:flaky]
        uses = jobs_fixture.wobbly:wobbly
        schedule = cron * * * * *
        catchup = 1h
        notify = chat
        """,
    )
    first = project.runner("run", "flaky", "--from-cron", "--fire-at", "2020-01-01T00:00:00Z")
    assert first.returncode == 0, first
    assert hooks.requests == []
    done = project.runner("catchup", "--json")  # the crontab's @reboot line
    assert done.returncode == 0, done
    assert [r.json()["event"] for r in hooks.requests] == ["missed"]
    assert "earlier while no scheduler ran; running it late" in hooks.requests[0].json()["error"]

    assert project.runner("catchup", "--json").json() == []  # nothing missed since: nothing told
    assert len(hooks.requests) == 1


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("retries", [0, 1])
def test_a_run_lost_with_its_supervisor_is_told_unless_a_retry_follows(
    sqlite_project: Project, hooks: Recorder, retries: int
) -> None:
    """The daemon's supervisor worker killed mid-run (the OOM killer, a crash): the daemon marks
    the run lost, and with no retry left tells the job's channels once (a failure, status lost,
    the host it ran on); with a retry left, the retry runs and its own outcome is what is told
    (a success after no failure: nothing)."""
    project = sqlite_project
    started, release = project.root / "started.txt", project.root / "release"
    when = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    project.configure(
        f"""
        [notify:chat]
        type = webhook
        url = {hooks.url}/hook
        format = json

        [job:held]
        uses = jobs_fixture.gate:gate
        schedule = at {when:%Y-%m-%d %H:%M:%S}
        retries = {retries}
        catchup = 10m
        started = {started}
        release = {release}
        notify = chat
        """,
        timezone="UTC",
        heartbeat="0.2s",
        stale_after="1s",
    )
    daemon = project.start("daemon")
    job_pid = int(wait_until(lambda: started.exists() and started.read_text().split(), "the run")[0])
    chain = [job_pid]  # the job, up to the daemon: ..., supervisor worker, fork server, daemon
    while chain[-1] != daemon.pid:
        chain.append(_parent(chain[-1]))
    os.kill(chain[-3], signal.SIGKILL)
    if retries:
        wait_until(lambda: len(started.read_text().split()) == 2, "the retry of the lost run")
        release.touch()
        wait_until(
            lambda: [r["status"] for r in project.history("held")] == ["lost", "succeeded"], "the retry"
        )
    else:
        wait_until(lambda: hooks.requests, "the lost run's notification")
        release.touch()
    time.sleep(1.0)  # a second notification would come now
    stop(project, daemon)

    lost = project.history("held")[0]
    assert lost["status"] == "lost" and f"pid {chain[-3]}" in lost["error"], lost
    if retries:
        assert hooks.requests == []
        return
    assert len(hooks.requests) == 1, [r.json() for r in hooks.requests]
    told = hooks.requests[0].json()
    assert told["event"] == "failure" and told["status"] == "lost", told
    assert told["run_id"] == lost["id"] and told["first_run_id"] == lost["id"] and told["attempts"] == 1
    assert told["host"] == lost["host"] and told["error"] == lost["error"], told
    assert f"was lost on {lost['host']}" in told["text"] and "no retry follows" in told["text"], told
