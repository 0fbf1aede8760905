"""Prometheus metrics: the daemon's endpoint and the crontab-mode textfile, read from the run
history (so they carry totals across processes and hosts), parsed with prometheus_client's own
parser."""

from __future__ import annotations

import os
import socket
import stat
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Project, assert_one_line_error, stop, wait_until

from runner.models import RunStatus, run_totals_mark, runs, utcnow
from runner.store import RunEnd
from runner.store.totals import SETTLE_S

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of the text format: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain"), answer.headers
            return parse(answer.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def succeeded(samples: Samples | None, job: str) -> float:
    return (samples and value(samples, "runner_runs_total", job=job, status="succeeded")) or 0


def test_the_daemon_endpoint_shows_the_counters_moving(project: Project):
    out = project.root / "ticks.txt"
    port = free_port()
    project.configure(
        f"""
        [job:tick]
        uses = jobs_fixture.ticks:tick
        schedule = every 1s
        out = {out}

        [job:manual]
        uses = jobs_fixture.fail:fail
        """,
        timezone="UTC",
        metrics_listen=f"127.0.0.1:{port}",
    )
    daemon = project.start("daemon")
    first = wait_until(lambda: succeeded(scrape(port), "tick") >= 1 and scrape(port), "a first counted fire")
    assert value(first, "runner_daemon_up") == 1
    assert value(first, "runner_database_up") == 1
    counted = succeeded(first, "tick")
    later = wait_until(
        lambda: succeeded(s := scrape(port), "tick") >= counted + 2 and s, "the counter to move"
    )

    # the duration histogram: cumulative buckets ending in +Inf = count, a sum of real seconds
    bounds = ["1.0", "5.0", "15.0", "60.0", "300.0", "900.0", "1800.0", "3600.0", "7200.0", "21600.0", "+Inf"]
    buckets = [value(later, "runner_run_duration_seconds_bucket", job="tick", le=le) for le in bounds]
    count = value(later, "runner_run_duration_seconds_count", job="tick")
    assert count is not None and count >= counted + 2
    assert buckets == sorted(buckets) and buckets[-1] == count, buckets
    assert 0 < value(later, "runner_run_duration_seconds_sum", job="tick") < count * 60
    now = time.time()
    assert now - 60 < value(later, "runner_last_success_timestamp_seconds", job="tick") <= now + 1
    assert now - 1 < value(later, "runner_next_fire_timestamp_seconds", job="tick") <= now + 3
    assert value(later, "runner_next_fire_timestamp_seconds", job="manual") is None  # no schedule

    # A run that no daemon started is in the daemon's totals: they come from the database.
    done = project.runner("run", "manual")
    assert done.returncode == 1, done
    failed = wait_until(lambda: scrape(port), "a scrape")
    assert value(failed, "runner_runs_total", job="manual", status="failed") == 1
    assert value(failed, "runner_last_success_timestamp_seconds", job="manual") is None

    stop(project, daemon)
    assert scrape(port) is None  # the endpoint goes with the daemon


def test_textfile_of_crontab_mode_runs_accumulates_across_processes(sqlite_project: Project):
    project = sqlite_project
    textfile = project.root / "textfile" / "runner.prom"
    textfile.parent.mkdir()
    project.configure(
        """
        [job:echo]
        schedule = cron 0 7 * * *
        [job:fail]
        """,
        metrics_textfile=str(textfile),
    )
    for expected in (1, 2, 3):
        done = project.runner("run", "echo", "-p", "text=hi")
        assert done.returncode == 0, done
        samples = parse(textfile.read_text())
        assert value(samples, "runner_runs_total", job="echo", status="succeeded") == expected
        assert value(samples, "runner_run_duration_seconds_count", job="echo") == expected
    assert project.runner("run", "fail").returncode == 1
    samples = parse(textfile.read_text())
    assert value(samples, "runner_runs_total", job="fail", status="failed") == 1
    assert value(samples, "runner_runs_total", job="echo", status="succeeded") == 3
    assert value(samples, "runner_database_up") == 1
    assert value(samples, "runner_daemon_up") is None  # no daemon serves a textfile
    assert value(samples, "runner_next_fire_timestamp_seconds", job="echo") > time.time()
    # private like every file runner writes, and no temporary file left beside it
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o600
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["runner.prom"]


def test_textfile_keeps_the_mode_its_owner_gave_it(sqlite_project: Project):
    """node_exporter often runs as its own user: a `chmod 0644` of the file lasts across rewrites."""
    project = sqlite_project
    textfile = project.root / "runner.prom"
    project.configure("[job:echo]", metrics_textfile=str(textfile))
    assert project.runner("run", "echo").returncode == 0
    os.chmod(textfile, 0o644)
    assert project.runner("run", "echo").returncode == 0
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    assert value(parse(textfile.read_text()), "runner_runs_total", job="echo", status="succeeded") == 2


def test_an_unwritable_textfile_warns_but_the_run_counts(sqlite_project: Project):
    project = sqlite_project
    textfile = project.root / "missing-folder" / "runner.prom"
    project.configure("[job:echo]", metrics_textfile=str(textfile))
    done = project.runner("run", "echo")
    assert done.returncode == 0, done
    assert done.stderr_lines == [
        f"runner: warning: cannot write [runner] metrics_textfile {textfile}: No such file or directory"
    ], done
    assert project.only_run("echo")["status"] == "succeeded"


def test_file_claims_are_gauges_by_state(sqlite_project: Project):
    project = sqlite_project
    inbox = project.root / "inbox"
    inbox.mkdir()
    for name in ("a.txt", "b.txt"):
        (inbox / name).write_text(name)
    textfile = project.root / "runner.prom"
    project.configure(
        f"""
        [job:files]
        uses = jobs_fixture.filerec:filerec
        watch = {inbox}
        out = {project.root / "seen.txt"}
        """,
        metrics_textfile=str(textfile),
    )
    done = project.runner("run", "files")
    assert done.returncode == 0, done
    assert value(parse(textfile.read_text()), "runner_file_claims", job="files", state="done") == 2


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("metrics_listen", "9464", "expected HOST:PORT like 127.0.0.1:9464"),
        ("metrics_listen", "127.0.0.1:70000", "port 1 to 65535"),
        ("metrics_textfile", "var/runner.txt", "expected a file name ending in .prom"),
    ],
)
def test_bad_metrics_settings_are_one_line(sqlite_project: Project, key: str, text: str, expected: str):
    sqlite_project.configure("[job:echo]", **{key: text})
    assert_one_line_error(sqlite_project.runner("check"), f"[runner] {key} = '{text}'", expected)


def test_a_taken_port_stops_the_daemon_with_one_line(sqlite_project: Project):
    project = sqlite_project
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        project.configure("[job:echo]", metrics_listen=f"127.0.0.1:{port}")
        done = project.finish(project.start("daemon"))
    assert done.returncode == 2, done
    assert f"runner: cannot serve metrics on 127.0.0.1:{port} ([runner] metrics_listen)" in done.stderr
    assert "Traceback" not in done.stderr


# --- the totals behind the metrics -----------------------------------------------------------------


def _ended_run(store: Any, key: str, status: RunStatus, seconds: float, *, queued_ago_s: float) -> int:
    run_id, _ = store.claim(job="j", fire_key=key, trigger="manual")
    started = utcnow() - timedelta(seconds=queued_ago_s)
    store.finish(run_id, RunEnd(status=status, ended_at=started + timedelta(seconds=seconds)))
    with store.begin() as conn:  # as if it had been queued and started that long ago
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(queued_at=started, started_at=started))
    return run_id


def _through(store: Any) -> int | None:
    with store.read() as conn:
        return conn.execute(sa.select(run_totals_mark.c.through_id)).scalar()


def test_totals_fold_settled_runs_once_and_outlive_the_rows(store: Any):
    """Runs that can no longer change are folded below a watermark, so a scrape reads only the
    newest runs; the totals stay when old rows are deleted, and a running run holds the mark."""
    bounds = (1.0, 60.0)
    old = [
        _ended_run(store, "a", RunStatus.SUCCEEDED, 0.5, queued_ago_s=SETTLE_S + 100),
        _ended_run(store, "b", RunStatus.FAILED, 30, queued_ago_s=SETTLE_S + 90),
    ]
    running, _ = store.claim(job="j", fire_key="c", trigger="manual")
    newer = _ended_run(store, "d", RunStatus.SUCCEEDED, 120, queued_ago_s=SETTLE_S + 80)
    _ended_run(store, "e", RunStatus.SUCCEEDED, 2, queued_ago_s=1)  # too recent to fold

    first = store.totals.tallies(bounds)
    assert first[("j", "succeeded")].runs == 3 and first[("j", "failed")].runs == 1
    assert ("j", "running") not in first  # counted when it ends
    assert first[("j", "succeeded")].buckets == (1, 2) and first[("j", "succeeded")].timed == 3
    assert first[("j", "succeeded")].seconds == pytest.approx(122.5, abs=0.01)
    assert _through(store) == max(old)  # the running run holds the watermark below itself

    store.finish(running, RunEnd(status=RunStatus.KILLED, ended_at=utcnow()))
    with store.begin() as conn:
        conn.execute(
            sa.update(runs).where(runs.c.id == running).values(queued_at=utcnow() - timedelta(hours=1))
        )
    second = store.totals.tallies(bounds)
    assert second[("j", "killed")].runs == 1
    assert _through(store) == newer  # the run queued a second ago is not folded yet

    with store.begin() as conn:  # deleting old history (retention) takes nothing off the counters
        conn.execute(sa.delete(runs).where(runs.c.id <= newer))
    assert store.totals.tallies(bounds) == second
    assert store.totals.tallies((1.0, 5.0))[("j", "succeeded")].buckets == (0, 1)  # new bounds: recounted


def test_a_retry_that_may_still_be_resumed_is_not_folded(store: Any):
    """A retry a stop cut short is taken up again in its own row by the next daemon (within the
    job's catchup): its real ending must still be counted then, so it holds the watermark."""
    from runner.enums import SkipReason

    first = _ended_run(store, "a", RunStatus.SUCCEEDED, 1, queued_ago_s=SETTLE_S + 200)
    stopped = _ended_run(store, "b", RunStatus.KILLED, 0, queued_ago_s=SETTLE_S + 100)
    with store.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.id == stopped).values(reason=SkipReason.RETRY_STOPPED))
    _ended_run(store, "c", RunStatus.SUCCEEDED, 1, queued_ago_s=SETTLE_S + 50)

    store.totals.tallies((1.0,), resumable_s=3600)
    assert _through(store) == first  # the stopped retry may still be resumed within the hour
    store.totals.tallies((1.0,), resumable_s=60)
    assert _through(store) == stopped + 1  # beyond every job's catchup: it stays killed


def test_a_scrape_while_the_database_is_away_still_answers(tmp_path):
    """Prometheus gets an answer saying the history is unreadable, not a failed scrape."""
    from prometheus_client import generate_latest

    from runner.config import load_settings
    from runner.metrics import HistoryCollector, registry_for
    from runner.store import Store

    config = tmp_path / "runner.ini"
    config.write_text(
        "[runner]\ndatabase = postgresql://nobody@127.0.0.1:1/runner\n\n[job:tick]\nschedule = every 1m\n"
    )
    settings = load_settings(config)
    store = Store(settings.runner.database)
    text = generate_latest(registry_for(HistoryCollector(lambda: settings, store, lambda: True))).decode()
    samples = parse(text)
    assert value(samples, "runner_database_up") == 0
    assert value(samples, "runner_daemon_up") == 1
    assert value(samples, "runner_next_fire_timestamp_seconds", job="tick") > time.time()
    assert not any(name.startswith("runner_runs") for name, _labels in samples)
