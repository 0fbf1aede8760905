"""Prometheus metrics: one collector that reads the run history when it is scraped, served over
HTTP by `runner daemon` (`metrics_listen`) or written as a node_exporter textfile after each
`runner run` (`metrics_textfile`).

The figures come from the database, not from a process's memory: daemons on several hosts
sharing one database report the same totals, and a textfile rewritten by one short-lived
`runner run` after another carries the totals of all of them. prometheus_client is imported
only here, and only when metrics are configured."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.enums import RunStatus
from runner.errors import RunnerError
from runner.models import utcnow
from runner.private import FILE_MODE

if TYPE_CHECKING:
    from runner.settings import Settings
    from runner.store import Store
    from runner.store.totals import Tally

log = logging.getLogger("runner.metrics")

# Upper bounds of the run-duration histogram: scheduled scripts take seconds to hours.
DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0)


class HistoryCollector:
    """A prometheus_client collector: every scrape reads the totals from the run history.

    `settings` is called on each scrape (a reloaded daemon's schedules give the next fires);
    `daemon_up`, when given, says whether the serving daemon is scheduling."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        store: Store,
        daemon_up: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.daemon_up = daemon_up

    def describe(self) -> list[Any]:
        """Nothing to describe up front: registering must not read the database."""
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self.daemon_up is not None:
            yield GaugeMetricFamily(
                "runner_daemon_up", "1 while this runner daemon is scheduling", value=int(self.daemon_up())
            )
        yield from self._next_fires()
        try:
            families = self._from_history()
        except RunnerError as exc:  # the scrape still answers: the database is down, and says so
            log.warning("metrics: cannot read the run history: %s", exc)
            families = []
        yield GaugeMetricFamily(
            "runner_database_up",
            "1 if the run history could be read for this scrape",
            value=1 if families else 0,
        )
        yield from families

    def _next_fires(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from runner.catchup import next_fire

        family = GaugeMetricFamily(
            "runner_next_fire_timestamp_seconds",
            "When the job's schedule fires next (Unix time)",
            labels=["job"],
        )
        now = utcnow()
        for name, job in sorted(self.settings().jobs.items()):
            if job.scheduled and (at := next_fire(job.schedules, now)) is not None:
                family.add_metric([name], at.timestamp())
        yield family

    def _from_history(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        jobs = self.settings().jobs.values()
        resumable_s = max((job.catchup_s for job in jobs), default=0.0)
        tallies = self.store.totals.tallies(DURATION_BUCKETS_S, resumable_s=resumable_s)
        runs = CounterMetricFamily(
            "runner_runs",
            "Runs that ended, by job and status (skipped: fires recorded without running)",
            labels=["job", "status"],
        )
        per_job: dict[str, Tally] = {}
        success = GaugeMetricFamily(
            "runner_last_success_timestamp_seconds",
            "When the job's newest successful run ended (Unix time)",
            labels=["job"],
        )
        for (job, status), tally in sorted(tallies.items()):
            runs.add_metric([job, status], tally.runs)
            per_job[job] = per_job[job].plus(tally) if job in per_job else tally
            if status == RunStatus.SUCCEEDED and tally.last_ended_at is not None:
                success.add_metric([job], tally.last_ended_at.timestamp())
        durations = HistogramMetricFamily(
            "runner_run_duration_seconds", "How long runs took, start to end", labels=["job"]
        )
        for job, tally in sorted(per_job.items()):
            if tally.timed:
                buckets = [(_bound(b), n) for b, n in zip(DURATION_BUCKETS_S, tally.buckets, strict=True)]
                durations.add_metric([job], [*buckets, ("+Inf", tally.timed)], tally.seconds)
        claims = GaugeMetricFamily(
            "runner_file_claims",
            "Watched file versions by state (claimed, done, pending, failed, vanished)",
            labels=["job", "state"],
        )
        for (job, state), count in sorted(self.store.totals.file_claims().items()):
            claims.add_metric([job, state], count)
        return [runs, durations, success, claims]


def _bound(seconds: float) -> str:
    """An `le` label as prometheus_client's own histograms write it (1.0, 300.0, +Inf)."""
    from prometheus_client.utils import floatToGoString

    return floatToGoString(seconds)


def registry_for(collector: HistoryCollector) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def serve(listen: tuple[str, int], collector: HistoryCollector) -> Any:
    """Serve the text format on http://HOST:PORT/ (any path) in a thread; returns the server,
    whose shutdown() stops it. A port that cannot be bound is a RunnerError."""
    from prometheus_client import start_http_server

    host, port = listen
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry_for(collector))
    except OSError as exc:
        raise RunnerError(
            f"cannot serve metrics on {host}:{port} ([runner] metrics_listen): {exc.strerror or exc}; "
            "pick a free port, or stop what uses it"
        ) from None
    return server


def write_textfile(settings: Settings, store: Store) -> Path:
    """Rewrite the metrics_textfile whole: written beside it under a dot name (which node_exporter
    skips), synced, then renamed over it, so a scrape never reads half a file. A new file is
    private (0600, like every file runner writes); an existing one keeps its mode, so a
    `chmod 0644` that lets node_exporter's user read it lasts. Raises OSError."""
    from prometheus_client import generate_latest

    path = settings.runner.metrics_textfile
    assert path is not None
    text = generate_latest(registry_for(HistoryCollector(lambda: settings, store)))
    mode = FILE_MODE
    with contextlib.suppress(FileNotFoundError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
            if mode != FILE_MODE:
                os.fchmod(handle.fileno(), mode)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def textfile_after_run(settings: Settings, store: Store) -> str | None:
    """After `runner run`: rewrite the textfile if one is configured. Returns a warning to print
    (the run itself is recorded either way), or None."""
    if settings.runner.metrics_textfile is None:
        return None
    try:
        write_textfile(settings, store)
    except OSError as exc:
        return f"cannot write [runner] metrics_textfile {settings.runner.metrics_textfile}: {exc.strerror or exc}"
    except RunnerError as exc:
        return f"cannot write [runner] metrics_textfile: {exc}"
    return None
