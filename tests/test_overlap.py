"""Overlap policies (skip, queue, allow) and many `runner run` processes on one database at once."""

from __future__ import annotations

import signal

import pytest
from conftest import Gate, Project, wait_until


@pytest.mark.parametrize("overlap", ["skip", None], ids=["explicit", "default"])
def test_skip_exits_3_naming_the_holder_and_records_skipped(project: Project, overlap: str | None) -> None:
    gate = Gate(project, overlap)
    first = project.start("run", "gate")
    gate.wait_started(1)
    holder = wait_until(lambda: [r for r in project.history() if r["status"] == "running"], "a running row")

    second = project.runner("run", "gate")
    gate.open()
    first_done = project.finish(first)

    assert second.returncode == 3, second
    assert len(second.stderr_lines) == 1, second
    assert f"run {holder[0]['id']}" in second.stderr
    assert "overlap = skip" in second.stderr
    assert first_done.returncode == 0, first_done
    statuses = sorted(row["status"] for row in project.history())
    assert statuses == ["skipped", "succeeded"]
    skipped = next(row for row in project.history() if row["status"] == "skipped")
    assert f"run {holder[0]['id']}" in skipped["error"]
    assert gate.bodies_started() == 1


def test_queue_waits_for_the_running_run_then_succeeds(project: Project) -> None:
    gate = Gate(project, "queue")
    first = project.start("run", "gate")
    gate.wait_started(1)
    second = project.start("run", "gate")
    wait_until(lambda: [r for r in project.history() if r["status"] == "queued"], "the second run to queue")

    assert gate.bodies_started() == 1, "the queued run must not start while the first still runs"
    gate.open()
    first_done, second_done = project.finish(first), project.finish(second)

    assert first_done.returncode == 0, first_done
    assert second_done.returncode == 0, second_done
    rows = project.history()
    assert [row["status"] for row in rows] == ["succeeded", "succeeded"]
    assert rows[1]["started_at"] >= rows[0]["ended_at"]
    assert gate.bodies_started() == 2


def test_allow_runs_both_at_once(project: Project) -> None:
    gate = Gate(project, "allow")
    first = project.start("run", "gate")
    second = project.start("run", "gate")

    gate.wait_started(2)  # both bodies run before either is released
    gate.open()

    assert project.finish(first).returncode == 0
    assert project.finish(second).returncode == 0
    assert [row["status"] for row in project.history()] == ["succeeded", "succeeded"]


def test_eight_concurrent_runs_on_a_fresh_database(project: Project) -> None:
    project.configure("[job:echo]\noverlap = allow")

    processes = [project.start("run", "echo", "-p", f"text={number}") for number in range(8)]
    results = [project.finish(process) for process in processes]

    for done in results:
        assert done.returncode == 0, done
        assert "database is locked" not in done.stderr, done
    rows = project.history()
    assert len(rows) == 8
    assert {row["status"] for row in rows} == {"succeeded"}
    assert sorted(row["result"]["text"] for row in rows) == [str(n) for n in range(8)]


def test_eight_racing_runs_with_skip_start_exactly_one(project: Project) -> None:
    gate = Gate(project, "skip")

    processes = [project.start("run", "gate") for _ in range(8)]
    gate.wait_started(1)
    wait_until(lambda: sum(p.poll() is not None for p in processes) == 7, "seven runs to give up")
    gate.open()
    results = [project.finish(process) for process in processes]

    assert sorted(done.returncode for done in results) == [0] + [3] * 7, results
    assert sorted(row["status"] for row in project.history()) == ["skipped"] * 7 + ["succeeded"]
    assert gate.bodies_started() == 1


def test_sigterm_while_queued_is_killed_and_exits_143(project: Project) -> None:
    gate = Gate(project, "queue")
    first = project.start("run", "gate")
    gate.wait_started(1)
    second = project.start("run", "gate")
    wait_until(lambda: [r for r in project.history() if r["status"] == "queued"], "the second run to queue")

    second.send_signal(signal.SIGTERM)
    second_done = project.finish(second)
    gate.open()
    first_done = project.finish(first)

    assert first_done.returncode == 0, first_done
    assert [row["status"] for row in project.history()] == ["succeeded", "killed"]
    assert "while queued" in project.history()[1]["error"]
    assert gate.bodies_started() == 1
    assert second_done.returncode == 128 + signal.SIGTERM, second_done
