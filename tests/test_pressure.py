"""`runner daemon` under pressure: more due fires than workers, queues, jitter, stops and restarts,
reloads and retries. Every due fire leaves a row: it ran, or it was skipped with its reason."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import Project, stop, wait_until


def tick_section(
    name: str, out: Path, schedule: str = "every 1s", seconds: float = 0.0, extra: str = ""
) -> str:
    lines = [f"[job:{name}]", "uses = jobs_fixture.ticks:tick", f"schedule = {schedule}", f"out = {out}"]
    return "\n".join([*lines, f"seconds = {seconds}", *extra.splitlines(), "", ""])


def at(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def key_time(key: str) -> datetime:
    return at(key)


def rows_of(project: Project, job: str | None, **match: Any) -> list[dict[str, Any]]:
    return [r for r in project.history(job) if all(r[k] == v for k, v in match.items())]


def status_job(project: Project, job: str) -> dict[str, Any]:
    done = project.runner("status", "--json")
    assert done.returncode == 0, done
    return next((j for j in done.json()["jobs"] if j["job"] == job), {})


def whole_seconds(first: datetime, last: datetime) -> set[str]:
    keys, moment = set(), first
    while moment <= last:
        keys.add(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
        moment += timedelta(seconds=1)
    return keys


# --- 1: overlap = queue -----------------------------------------------------------------------------


def test_queue_runs_in_fire_order_without_holding_workers_and_is_bounded(project: Project):
    slow_out, other_out = project.root / "slow.txt", project.root / "other.txt"
    project.configure(
        tick_section("slow", slow_out, seconds=3, extra="overlap = queue\nmax_queue = 2")
        + tick_section("other", other_out, schedule="every 2s"),
        timezone="UTC",
        max_workers="2",
    )
    daemon = project.start("daemon")
    wait_until(lambda: status_job(project, "slow").get("queued", 0) >= 2, "two fires of slow queued")
    queued = status_job(project, "slow")
    assert queued["oldest_queued_age_s"] is not None
    wait_until(lambda: len(rows_of(project, "slow", status="succeeded")) >= 3, "three runs of slow")
    wait_until(
        lambda: status_job(project, "slow")["skipped_last_hour"].get("queue full"), "a queue-full skip"
    )
    stop(project, daemon)

    slow = rows_of(project, "slow")
    ran = sorted((r for r in slow if r["started_at"]), key=lambda r: r["started_at"])
    assert [r["fire_key"] for r in ran] == sorted(r["fire_key"] for r in ran), "queued fires ran out of order"
    full = [r for r in slow if r["reason"] == "queue full"]
    assert full and all(r["status"] == "skipped" and "max_queue = 2" in r["error"] for r in full)
    # Queued fires of slow never held the second worker: the other job ran each of its fires.
    other = rows_of(project, "other")
    # (An overlap skip can happen on a loaded machine: a run of other that took over 2 s.)
    waited = [r for r in other if r["status"] != "succeeded" and r["reason"] not in ("overlap", "shutdown")]
    assert not waited, [(r["fire_key"], r["status"], r["reason"], r["error"]) for r in other]
    first, last = at(other[0]["scheduled_at"]), at(other[-1]["scheduled_at"])
    assert len(other) == (last - first).total_seconds() / 2 + 1, [r["fire_key"] for r in other]


# --- 2: bounded, coalesced backlog; lateness; reload drops stale fires ------------------------------


def test_backlog_coalesces_records_lateness_and_reload_drops_stale_fires(sqlite_project: Project):
    project = sqlite_project
    a_out, b_out = project.root / "a.txt", project.root / "b.txt"
    sections = tick_section("a", a_out, seconds=3) + tick_section("b", b_out, schedule="every 3s", seconds=2)
    project.configure(sections, timezone="UTC", max_workers="1")
    daemon = project.start("daemon")
    wait_until(lambda: [r for r in project.history() if r["reason"] == "coalesced"], "a coalesced fire")
    wait_until(lambda: [r for r in project.history() if r["late"] and r["late_s"] > 1], "a late run")
    for job in ("a", "b"):
        assert status_job(project, job).get("queued", 0) <= 1  # a job's backlog is its newest fire
    stop(project, daemon)

    rows = project.history()
    ran = [r for r in rows if r["started_at"]]
    assert all(r["late_s"] is not None for r in ran)
    assert all(r["late_s"] > 1 for r in ran if r["late"]), [
        (r["fire_key"], r["late_s"], r["started_at"]) for r in ran if r["late"]
    ]
    coalesced = [r for r in rows if r["reason"] == "coalesced"]
    assert all(r["status"] == "skipped" and "newer fire" in r["error"] for r in coalesced)


def test_reload_drops_waiting_fires_of_a_changed_schedule(sqlite_project: Project):
    project = sqlite_project
    out = project.root / "q.txt"
    project.configure(tick_section("q", out, seconds=4, extra="overlap = queue"), timezone="UTC")
    daemon = project.start("daemon")
    wait_until(lambda: status_job(project, "q").get("queued", 0) >= 2, "fires of q queued")
    project.configure(
        tick_section(
            "q", out, schedule="every 1h start 2020-01-01 00:00", seconds=4, extra="overlap = queue"
        ),
        timezone="UTC",
    )
    daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: rows_of(project, "q", reason="reload"), "the dropped stale fires")
    wait_until(lambda: not rows_of(project, "q", status="running"), "the last run to end")
    stop(project, daemon)

    rows = project.history("q")
    dropped = [r for r in rows if r["reason"] == "reload"]
    assert all(r["status"] == "skipped" for r in dropped)
    reloaded = min(at(r["queued_at"]) for r in dropped)
    stale = [r for r in rows if r["started_at"] and at(r["started_at"]) > reloaded]
    assert not stale, f"fires of the old schedule still started after the reload: {stale}"


# --- 3: jitter is scheduling, not work --------------------------------------------------------------


def test_jitter_delay_holds_no_worker(sqlite_project: Project):
    project = sqlite_project
    project.configure(
        tick_section("jittery", project.root / "j.txt", schedule="every 3s", extra="jitter = 2s")
        + tick_section("steady", project.root / "s.txt"),
        timezone="UTC",
        max_workers="1",
    )
    daemon = project.start("daemon")

    def overtaken() -> bool:
        rows = [r for r in project.history() if r["started_at"]]
        steady = [at(r["started_at"]) for r in rows if r["job"] == "steady"]
        for r in rows:
            if r["job"] == "jittery":
                due, started = at(r["scheduled_at"]), at(r["started_at"])
                if any(due < s < started for s in steady):
                    return True
        return False

    # With one worker, a run of another job can start while a fire waits out its jitter only if
    # the waiting fire holds no worker.
    wait_until(overtaken, "a steady run to start during a jitter delay")
    stop(project, daemon)


# --- 4: every due fire leaves a row; a restart counts only downtime ----------------------------------


def test_every_due_fire_leaves_a_row_across_stop_and_restart(project: Project):
    out = project.root / "ticks.txt"
    project.configure(
        tick_section("tick", out, seconds=3, extra="catchup = 1h"), timezone="UTC", max_workers="1"
    )
    daemon = project.start("daemon")
    wait_until(lambda: len(rows_of(project, "tick", status="succeeded")) >= 2, "two runs")
    wait_until(lambda: rows_of(project, "tick", status="running"), "a third run")
    stop(project, daemon)
    before = project.history("tick")
    keys = [r["fire_key"] for r in before]
    assert len(keys) == len(set(keys))
    assert set(keys) == whole_seconds(key_time(min(keys)), key_time(max(keys))), "a due fire has no row"
    reasons = {r["reason"] for r in before if r["status"] == "skipped"}
    assert "overlap" in reasons, before
    assert reasons <= {"overlap", "coalesced", "shutdown"}, reasons

    wait_until(lambda: datetime.now(UTC) > key_time(max(keys)) + timedelta(seconds=3), "an outage")
    daemon = project.start("daemon")
    wait_until(
        lambda: rows_of(project, "tick", status="succeeded")[-1]["fire_key"] > max(keys), "a run after it"
    )
    stderr = stop(project, daemon)
    after = project.history("tick")
    line = next(line for line in stderr.splitlines() if "while no scheduler ran" in line)
    match = re.search(r"missed the fire of (\S+ \S+)(?: and (\d+) earlier)?", line)
    assert match, line
    newest_missed = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").astimezone(UTC)
    downtime = whole_seconds(key_time(max(keys)) + timedelta(seconds=1), newest_missed)
    assert int(match[2] or 0) == len(downtime) - 1, (line, sorted(downtime))
    new_keys = [r["fire_key"] for r in after]
    assert len(new_keys) == len(set(new_keys))
    assert set(new_keys) == whole_seconds(key_time(min(new_keys)), key_time(max(new_keys)))


# --- 5: catch-up of new jobs, `at` fires and long outages ----------------------------------------


def test_an_at_fire_that_passed_before_the_first_start_runs_late(project: Project):
    out = project.root / "ticks.txt"
    when = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    project.configure(
        tick_section("once", out, schedule=f"at {when:%Y-%m-%d %H:%M:%S}", extra="catchup = 1h"),
        timezone="UTC",
    )
    wait_until(lambda: datetime.now(UTC) > when + timedelta(seconds=1), "the at time to pass")
    daemon = project.start("daemon")
    wait_until(lambda: rows_of(project, "once", status="succeeded"), "the late run")
    stderr = stop(project, daemon)
    row = project.only_run("once")
    assert row["late"] and row["fire_key"] == f"{when:%Y-%m-%dT%H:%M:%SZ}"
    assert "missed the fire" in stderr


def test_older_misses_of_an_outage_get_rows_and_status_lines(sqlite_project: Project):
    project = sqlite_project
    out = project.root / "ticks.txt"
    project.configure(tick_section("tick", out, extra="catchup = 1h"), timezone="UTC")
    daemon = project.start("daemon")
    wait_until(lambda: rows_of(project, "tick", status="succeeded"), "a run")
    stop(project, daemon)
    last_before = max(r["fire_key"] for r in project.history("tick"))
    wait_until(lambda: datetime.now(UTC) > key_time(last_before) + timedelta(seconds=4), "an outage")
    daemon = project.start("daemon")
    wait_until(lambda: rows_of(project, "tick", status="succeeded")[-1]["fire_key"] > last_before, "catch-up")
    stop(project, daemon)
    rows = project.history("tick")
    caught = next(r for r in rows if r["status"] == "succeeded" and r["fire_key"] > last_before)
    older = [r for r in rows if last_before < r["fire_key"] < caught["fire_key"]]
    assert len(older) >= 3, rows
    assert all(r["status"] == "skipped" and r["reason"] == "coalesced" for r in older), older
    assert status_job(project, "tick")["skipped_last_hour"]["coalesced"] >= 3
    table = project.runner("status")
    assert "coalesced" in table.stdout, table


# --- 7: SIGHUP applies max_workers ---------------------------------------------------------------


def test_sighup_applies_a_new_max_workers(sqlite_project: Project):
    project = sqlite_project
    jobs = tick_section("a", project.root / "a.txt", seconds=2) + tick_section(
        "b", project.root / "b.txt", seconds=2
    )
    project.configure(jobs, timezone="UTC", max_workers="1")
    daemon = project.start("daemon")
    wait_until(lambda: len(rows_of(project, None, status="succeeded")) >= 1, "a first run")
    reloaded_at = datetime.now(UTC)
    project.configure(jobs, timezone="UTC", max_workers="2")
    daemon.send_signal(signal.SIGHUP)

    def overlapping() -> bool:
        ran = [r for r in project.history() if r["started_at"] and at(r["started_at"]) > reloaded_at]
        for x in ran:
            for y in ran:
                if x["job"] != y["job"] and at(x["started_at"]) < at(y["started_at"]) < at(
                    x["ended_at"] or "9999-01-01T00:00:00Z"
                ):
                    return True
        return False

    wait_until(overlapping, "two runs at once after max_workers = 2")
    stop(project, daemon)


# --- 8: retries -----------------------------------------------------------------------------------


def test_retry_waits_at_least_the_backoff_and_groups_attempts(project: Project):
    project.configure("[job:fail]\nretries = 2\nretry_backoff = 1s")
    done = project.runner("run", "fail")
    assert done.returncode == 1, done
    rows = project.history("fail")
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert {r["first_run_id"] for r in rows} == {rows[0]["id"]}, "one query groups a fire's attempts"
    for retry, (previous, wanted_s) in zip(rows[1:], [(rows[0], 1.0), (rows[1], 2.0)], strict=True):
        waited = (at(retry["started_at"]) - at(previous["ended_at"])).total_seconds()
        assert waited >= wanted_s, (
            f"retry {retry['attempt']} waited {waited:.2f}s < retry_backoff {wanted_s}s"
        )


def test_a_retry_cut_short_by_a_stop_resumes_on_the_next_start(project: Project):
    when = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    project.configure(
        f"""
        [job:fail]
        schedule = at {when:%Y-%m-%d %H:%M:%S}
        retries = 1
        retry_backoff = 10m
        """,
        timezone="UTC",
    )
    daemon = project.start("daemon")
    wait_until(lambda: any(r["attempt"] == 2 for r in project.history("fail")), "the retry to be queued")
    stop(project, daemon)
    stopped = next(r for r in project.history("fail") if r["attempt"] == 2)
    assert stopped["status"] == "killed" and stopped["reason"] == "retry stopped", stopped
    logs = project.runner("logs", str(stopped["id"]))
    assert logs.returncode == 0, logs
    assert "never started" in logs.stdout

    daemon = project.start("daemon")
    wait_until(lambda: project.run_row(stopped["id"])["status"] == "failed", "the resumed retry to run")
    stop(project, daemon)
    resumed = project.run_row(stopped["id"])
    assert resumed["reason"] == "retry resumed" and resumed["attempt"] == 2
    assert resumed["first_run_id"] == project.history("fail")[0]["id"]
    assert len(project.history("fail")) == 2


# --- 9: watch: files deleted after their claim --------------------------------------------------------


def test_a_claimed_file_deleted_before_it_is_handed_out_is_recorded_vanished(sqlite_project: Project):
    project = sqlite_project
    inbox = project.root / "inbox"
    inbox.mkdir()
    seen = project.root / "seen.txt"
    project.configure(
        f"""
        [job:files]
        uses = jobs_fixture.filerec:filerec
        watch = {inbox}
        out = {seen}
        per_file_s = 2
        """
    )
    for name in ("a.txt", "b.txt", "c.txt"):
        (inbox / name).write_text(name)
    run = project.start("run", "files")
    wait_until(lambda: rows_of(project, "files", status="running"), "the run to start")
    (inbox / "c.txt").unlink()
    done = project.finish(run)

    assert done.returncode == 0, done
    assert sorted(line.split()[0] for line in seen.read_text().splitlines()) == ["a.txt", "b.txt"]
    watching = project.runner("status", "--json").json()["watching"]
    assert watching[0]["files"] == {"done": 2, "vanished": 1}, watching


def test_a_retry_stopped_before_it_started_is_not_offered_as_a_log(project: Project):
    project.configure("[job:fail]\nretries = 1\nretry_backoff = 10m")
    run = project.start("run", "fail")
    wait_until(lambda: any(r["attempt"] == 2 for r in project.history("fail")), "the retry to be queued")
    run.send_signal(signal.SIGTERM)
    done = project.finish(run)

    assert done.returncode == 128 + signal.SIGTERM, done
    retry = next(r for r in project.history("fail") if r["attempt"] == 2)
    assert f"runner logs {retry['id']}" not in done.stderr, done
    assert retry["reason"] is None, "a manual run's retry is not resumed by a daemon"
    logs = project.runner("logs", str(retry["id"]))
    assert logs.returncode == 0 and "never started" in logs.stdout, logs
