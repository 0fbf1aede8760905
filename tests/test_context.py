"""What a job sees through ctx: its attempt number across retries, its persistent state, and one
transaction for its own rows and its cursor."""

from __future__ import annotations

import signal

from conftest import Project, wait_until


def test_retries_until_success_share_the_fire(project: Project) -> None:
    project.configure("[job:flaky]\nfailures = 2\nretries = 2\nretry_backoff = 0.1s")

    done = project.runner("run", "flaky")

    assert done.returncode == 0, done
    rows = project.history()
    assert [row["attempt"] for row in rows] == [1, 2, 3]
    assert [row["status"] for row in rows] == ["failed", "failed", "succeeded"]
    first = rows[0]
    assert [row["first_run_id"] for row in rows[1:]] == [first["id"], first["id"]]
    assert {row["fire_key"] for row in rows} == {first["fire_key"]}
    assert rows[0]["error"] == "RuntimeError: attempt 1 fails on purpose"
    assert rows[2]["exit_code"] == 0
    assert rows[2]["result"] == 3


def test_retries_exhausted_exit_1(project: Project) -> None:
    project.configure("[job:flaky]\nfailures = 5\nretries = 1\nretry_backoff = 0.1s")

    done = project.runner("run", "flaky")

    assert done.returncode == 1, done
    rows = project.history()
    assert [(row["attempt"], row["status"]) for row in rows] == [(1, "failed"), (2, "failed")]
    assert "attempt 2 fails on purpose" in done.stderr


def test_state_persists_between_runs(project: Project) -> None:
    first = project.runner("run", "counter", "--json")
    second = project.runner("run", "counter", "--json")

    assert first.returncode == 0, first
    assert second.returncode == 0, second
    assert [first.json()["result"], second.json()["result"]] == [1, 2]


def test_state_is_per_job_name(project: Project) -> None:
    project.configure("[job:counter_b]\nuses = jobs_fixture.stateful:counter")

    assert project.runner("run", "counter").returncode == 0
    assert project.runner("run", "counter").returncode == 0
    other = project.runner("run", "counter_b", "--json")

    assert other.returncode == 0, other
    assert other.json()["result"] == 1


def test_transaction_keeps_rows_and_cursor_together(project: Project) -> None:
    committed = project.runner("run", "ledger", "--json")
    rolled_back = project.runner("run", "ledger", "--fail-after-write")
    after = project.runner("run", "ledger", "--json")

    assert committed.returncode == 0, committed
    assert committed.json()["result"] == {"cursor": 1, "rows": 1}
    assert rolled_back.returncode == 1, rolled_back
    assert after.returncode == 0, after
    assert after.json()["result"] == {"cursor": 2, "rows": 2}, (
        "the failed run must leave neither row nor cursor"
    )


def test_sigterm_during_the_retry_backoff_stops_the_fire(project: Project) -> None:
    project.configure("[job:flaky]\nfailures = 5\nretries = 3\nretry_backoff = 1h")
    supervisor = project.start("run", "flaky")
    wait_until(lambda: len(project.history()) == 2, "the retry to be scheduled")

    supervisor.send_signal(signal.SIGTERM)
    done = project.finish(supervisor)

    assert done.returncode == 128 + signal.SIGTERM, done
    rows = project.history()
    assert [(row["attempt"], row["status"]) for row in rows] == [(1, "failed"), (2, "killed")]
    assert "before the retry started" in rows[1]["error"]
