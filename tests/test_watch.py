"""File events: each complete file version reaches a run exactly once (inotify and polling)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, process_gone, stop, wait_until

BURST = 10_000
MODES = ("events", "polling")


def configure(
    project: Project,
    mode: str,
    *,
    settle: str = "1s",
    extra: str = "",
    uses: str = "jobs_fixture.filerec:filerec",
    **runner: str,
) -> Path:
    inbox = project.root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    project.configure(
        f"""
        [job:files]
        uses = {uses}
        watch = {inbox}
        patterns = *.jpg *.txt
        settle = {settle}
        watch_mode = {mode}
        rescan = 10m
        out = {project.root / "seen.txt"}
        {extra}
        """,
        **runner,
    )
    return inbox


def seen(project: Project) -> collections.Counter[str]:
    path = project.root / "seen.txt"
    if not path.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in path.read_text().splitlines() if line)


def seen_sizes(project: Project) -> dict[str, int]:
    path = project.root / "seen.txt"
    return {name: int(size) for name, size in (line.split() for line in path.read_text().splitlines())}


def claim_states(project: Project) -> dict[str, int]:
    from runner.store import Store

    store = Store(project.database_url)
    try:
        return store.files.counts("files")
    finally:
        store.engine.dispose()


def daemon_ready(project: Project) -> bool:
    return bool(project.runner("status", "--json").json()["daemons"])


def wait_drained(project: Project, daemon: subprocess.Popen[str], count: int, timeout_s: float) -> None:
    """Wait until `count` files were processed; on giving up, say what the daemon was doing."""
    try:
        wait_until(lambda: len(seen(project)) >= count, "the burst to drain", timeout_s=timeout_s)
    except pytest.fail.Exception:
        err = daemon.output[1]  # type: ignore[attr-defined]
        err.seek(0)
        log = [line for line in err.read().splitlines() if " INFO runner.daemon: run=" not in line]
        pytest.fail(
            f"gave up after {timeout_s:g}s waiting for the burst to drain: {len(seen(project))} of "
            f"{count} seen, claims {claim_states(project)}, {len(project.history('files'))} runs; "
            "the daemon's log without its run lines:\n" + "\n".join(log[-60:])
        )


def burst(inbox: Path, count: int, start: int = 0) -> set[str]:
    """Half written in place, half written under a .part name and renamed; plus ignored names."""
    names = set()
    for i in range(start, start + count):
        name = f"f{i:05d}.jpg"
        if i % 2:
            (inbox / f"{name}.part").write_bytes(b"x" * (i % 97 + 1))
            os.rename(inbox / f"{name}.part", inbox / name)
        else:
            (inbox / name).write_bytes(b"x" * (i % 97 + 1))
        names.add(name)
        if i % 1000 == 0:
            (inbox / f".hidden{i}.jpg").write_bytes(b"h")
            (inbox / f"skip{i}.tmp").write_bytes(b"t")
    return names


@pytest.mark.parametrize("mode", MODES)
def test_a_file_written_in_two_parts_fires_once_complete(sqlite_project: Project, mode: str):
    project = sqlite_project
    # Without close events (polling), settle must outlast the writer's pause.
    inbox = configure(project, mode, settle="1s" if mode == "events" else "5s")
    daemon = project.start("daemon")
    wait_until(lambda: daemon_ready(project), "the daemon")
    with open(inbox / "two-parts.jpg", "wb") as handle:
        handle.write(b"a" * 1000)
        handle.flush()
        time.sleep(3)
        handle.write(b"b" * 1000)
    (inbox / "upload.jpg.part").write_bytes(b"c" * 500)
    os.rename(inbox / "upload.jpg.part", inbox / "upload.jpg")
    wait_until(lambda: len(seen(project)) >= 2, "both files to be processed", timeout_s=30)
    time.sleep(2 if mode == "events" else 6)  # nothing more may come
    stop(project, daemon)
    assert seen(project) == {"two-parts.jpg": 1, "upload.jpg": 1}
    assert seen_sizes(project) == {"two-parts.jpg": 2000, "upload.jpg": 500}
    assert all(".part" not in " ".join(r["paths"] or []) for r in project.history("files"))


@pytest.mark.parametrize("mode", MODES)
def test_a_burst_of_ten_thousand_files_each_once(sqlite_project: Project, mode: str):
    project = sqlite_project
    inbox = configure(project, mode, settle="0" if mode == "events" else "1s", extra="batch = 200")
    daemon = project.start("daemon")
    wait_until(lambda: daemon_ready(project), "the daemon")
    names = burst(inbox, BURST)
    wait_drained(project, daemon, BURST, timeout_s=180)
    time.sleep(1.5)
    stop(project, daemon)
    counts = seen(project)
    assert set(counts) == names, set(counts) ^ names
    assert max(counts.values()) == 1
    assert claim_states(project) == {"done": BURST}
    runs = project.history("files")
    assert all(r["status"] == "succeeded" for r in runs)
    assert sum(len(r["paths"]) for r in runs) == BURST
    assert not any(p.endswith((".tmp", ".part")) or "/." in p for r in runs for p in r["paths"])


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_of_the_daemon_mid_burst_loses_nothing_and_repeats_nothing(
    sqlite_project: Project, mode: str
):
    project = sqlite_project
    inbox = configure(
        project, mode, settle="0" if mode == "events" else "1s", extra="batch = 50\nper_file_s = 0.002"
    )
    names = burst(inbox, 3000)
    daemon = project.start("daemon")
    wait_until(lambda: len(seen(project)) >= 1000, "a third of the files", timeout_s=120)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    # Its workers stop at a file boundary and record what they finished; wait until they are gone.
    wait_until(lambda: not _runner_children(project), "the old daemon's workers to exit", timeout_s=30)
    assert len(seen(project)) < len(names), "the burst finished before the kill; nothing was tested"
    daemon = project.start("daemon")
    wait_until(lambda: len(seen(project)) >= len(names), "the rest of the files", timeout_s=180)
    time.sleep(1.5)
    stop(project, daemon)
    counts = seen(project)
    assert set(counts) == names
    assert [n for n, c in counts.items() if c > 1] == []
    assert claim_states(project) == {"done": len(names)}


def _runner_children(project: Project) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(project.config_path).encode() in cmdline and not process_gone(int(proc.name)):
                found.append(int(proc.name))
    return found


@pytest.mark.parametrize("mode", MODES)
def test_files_that_arrived_while_stopped_are_processed_on_start(sqlite_project: Project, mode: str):
    project = sqlite_project
    inbox = configure(project, mode)
    daemon = project.start("daemon")
    wait_until(lambda: daemon_ready(project), "the daemon")
    (inbox / "before.jpg").write_bytes(b"1")
    wait_until(lambda: seen(project), "the first file")
    stop(project, daemon)
    names = {f"offline{i}.jpg" for i in range(20)}
    for name in names:
        (inbox / name).write_bytes(b"22")
    daemon = project.start("daemon")
    wait_until(lambda: len(seen(project)) >= 21, "the files copied in while stopped", timeout_s=30)
    stop(project, daemon)
    assert seen(project) == collections.Counter({"before.jpg": 1, **dict.fromkeys(names, 1)})


def test_two_daemons_on_one_database_process_each_file_once(project: Project):
    inbox = configure(project, "polling", settle="0.5s", extra="batch = 20")
    first = project.start("daemon")
    second = project.start("daemon")
    wait_until(lambda: len(project.runner("status", "--json").json()["daemons"]) == 2, "both daemons")
    names = burst(inbox, 600)
    wait_until(lambda: len(seen(project)) >= len(names), "all files", timeout_s=120)
    time.sleep(2)
    stop(project, first)
    stop(project, second)
    counts = seen(project)
    assert set(counts) == names
    assert max(counts.values()) == 1
    hosts_pids = {(r["host"], r["pid"]) for r in project.history("files")}
    assert len(hosts_pids) >= 2, "one daemon did all the work; the test proves nothing about sharing"


def test_manual_run_processes_unclaimed_files(sqlite_project: Project):
    project = sqlite_project
    inbox = configure(project, "events")
    for name in ("m1.jpg", "m2.txt", "ignored.tmp", ".dot.jpg"):
        (inbox / name).write_bytes(b"m")
    done = project.runner("run", "files")
    assert done.returncode == 0, done
    assert seen(project) == {"m1.jpg": 1, "m2.txt": 1}
    again = project.runner("run", "files")
    assert again.returncode == 0, again
    assert seen(project) == {"m1.jpg": 1, "m2.txt": 1}


def test_missing_watch_folder_fails_check_but_not_the_daemon(sqlite_project: Project):
    project = sqlite_project
    inbox = configure(project, "events")
    inbox.rmdir()
    check = project.runner("check")
    assert check.returncode == 2, check
    assert "not a folder" in check.stderr and "Traceback" not in check.stderr
    daemon = project.start("daemon")
    wait_until(lambda: daemon_ready(project), "the daemon to run despite the missing folder")
    assert daemon.poll() is None
    stop(project, daemon)


def test_a_retry_skips_the_files_the_failed_attempt_finished(sqlite_project: Project):
    project = sqlite_project
    inbox = project.root / "inbox"
    inbox.mkdir(parents=True)
    project.configure(
        f"""
        [job:flaky]
        uses = jobs_fixture.filerec:flaky_files
        watch = {inbox}
        out = {project.root / "seen.txt"}
        """
    )
    for i in range(8):
        (inbox / f"r{i}.jpg").write_bytes(b"r")
    done = project.runner("run", "flaky")
    assert done.returncode == 0, done
    counts = seen(project)
    assert sorted(counts) == [f"r{i}.jpg" for i in range(8)]
    assert max(counts.values()) == 1
    attempts = [row["attempt"] for row in project.history("flaky")]
    assert sorted(attempts) == [1, 2]


def test_one_bad_file_fails_alone_and_can_be_listed_and_retried(project: Project):
    """A job that raises on bad.txt: only bad.txt counts attempts and ends `failed`; a.txt is done,
    c.txt (never reached while bad.txt failed) goes back untouched and is done by a later run."""
    inbox = project.root / "inbox"
    inbox.mkdir(parents=True)
    project.configure(
        f"""
        [job:picky]
        uses = jobs_fixture.filerec:picky
        watch = {inbox}
        out = {project.root / "seen.txt"}
        """
    )
    for name in ("a.txt", "bad.txt", "c.txt"):
        (inbox / name).write_text(name)

    runs = [project.runner("run", "picky") for _ in range(3)]
    after_three = {row["path"]: row for row in project.runner("files", "picky", "--json").json()}
    fourth = project.runner("run", "picky")
    failed = project.runner("files", "picky", "--state", "failed", "--json")
    table = project.runner("files", "picky")
    retried = project.runner("files", "retry", "picky", str(inbox / "bad.txt"))
    again = project.runner("files", "picky", "--state", "failed")
    not_failed = project.runner("files", "retry", "picky", str(inbox / "a.txt"))

    assert [done.returncode for done in runs] == [1, 1, 1], runs
    states = {Path(p).name: (row["state"], row["attempts"]) for p, row in after_three.items()}
    assert states == {"a.txt": ("done", 1), "bad.txt": ("failed", 3), "c.txt": ("pending", 0)}
    assert fourth.returncode == 0, fourth
    assert seen(project) == {"a.txt": 1, "c.txt": 1}
    assert [Path(row["path"]).name for row in failed.json()] == ["bad.txt"]
    assert "failed" in table.stdout and str(inbox / "bad.txt") in table.stdout, table
    assert retried.returncode == 0 and "1 file(s)" in retried.stdout, retried
    assert again.stdout.strip() == "no files of job picky with state failed", again
    assert not_failed.returncode == 2 and "not a failed file" in not_failed.stderr, not_failed


@pytest.fixture
def busy_cpus() -> Iterator[None]:
    """Three CPU-bound processes for the test's duration: a 2-core machine under contention."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def assert_each_file_once(project: Project, names: set[str]) -> None:
    counts = seen(project)
    assert set(counts) == names, set(counts) ^ names
    assert max(counts.values()) == 1
    assert claim_states(project) == {"done": len(names)}
    assert all(r["status"] == "succeeded" for r in project.history("files"))


def test_a_burst_drains_beside_cpu_bound_processes(sqlite_project: Project, busy_cpus: None):
    project = sqlite_project
    inbox = configure(project, "events", settle="0", extra="batch = 200")
    daemon = project.start("daemon")
    wait_until(lambda: daemon_ready(project), "the daemon")
    names = burst(inbox, BURST)
    wait_drained(project, daemon, BURST, timeout_s=240)
    stop(project, daemon)
    assert_each_file_once(project, names)


def test_a_burst_split_into_many_runs_drains(sqlite_project: Project):
    """Under contention the burst went out in more, smaller runs, and the daemon logs a line per
    run: more lines than an unread output pipe holds must not stop it (batch = 2 forces that)."""
    project = sqlite_project
    inbox = configure(project, "events", settle="0", extra="batch = 2")
    daemon = project.start("daemon")
    wait_until(lambda: daemon_ready(project), "the daemon")
    names = burst(inbox, 1500)
    wait_drained(project, daemon, len(names), timeout_s=240)
    stop(project, daemon)
    assert_each_file_once(project, names)
    assert len(project.history("files")) >= 750


def test_an_open_whose_close_an_overflow_lost_stops_blocking_at_the_stream_mark(tmp_path: Path):
    """watchdog reports an overflow at once but delivers the events it read before it later (a
    busy CPU makes that later still): an 'opened' among them, whose 'closed' was lost, arrived after
    the reset and held its file back for OPEN_STALE_S. The mark resets again after all of them."""
    from runner.watch import Tracker, WatchSettings, mark_event_stream, start_observer

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jpg").write_bytes(b"a")
    settings = WatchSettings(folders=(inbox,), settle_s=0.0)
    tracker = Tracker(settings)
    observer = start_observer(settings, tracker, lambda: None)
    try:
        tracker.event("opened", str(inbox / "a.jpg"))  # delivered after the overflow's reset
        assert tracker.ready(time.monotonic())[0] == []
        mark_event_stream(settings)
        ready = wait_until(lambda: tracker.ready(time.monotonic())[0], "the file to be ready")
    finally:
        observer.stop()
        observer.join()
    assert [Path(v.path).name for v in ready] == ["a.jpg"]
    assert sorted(p.name for p in inbox.iterdir()) == ["a.jpg"]  # the mark is gone


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_files_of_a_run_whose_supervisor_worker_died_are_processed_soon(sqlite_project: Project):
    """The daemon's supervisor worker killed mid-run (the OOM killer, a crash): the run is marked
    lost once its heartbeat is stale, and its files go to a new run then, not at the next
    `rescan` (10 minutes here), which is when the daemon used to look at them again."""
    project = sqlite_project
    started, release = project.root / "started.txt", project.root / "release"
    inbox = configure(
        project,
        "events",
        settle="0",
        uses="jobs_fixture.filerec:filegate",
        extra=f"started = {started}\nrelease = {release}",
        heartbeat="0.2s",
        stale_after="1s",
    )
    daemon = project.start("daemon")
    wait_until(lambda: daemon_ready(project), "the daemon")
    (inbox / "one.txt").write_bytes(b"1")
    job_pid = int(wait_until(lambda: started.exists() and started.read_text().split(), "the first run")[0])
    chain = [job_pid]  # the job, up to the daemon: ..., supervisor worker, fork server, daemon
    while chain[-1] != daemon.pid:
        chain.append(_parent(chain[-1]))
    os.kill(chain[-3], signal.SIGKILL)
    release.touch()
    wait_until(lambda: seen(project), "the file, handed to a new run", timeout_s=60)
    stop(project, daemon)
    assert seen(project) == collections.Counter({"one.txt": 1})
    statuses = sorted(run["status"] for run in project.history("files"))
    assert statuses == ["lost", "succeeded"], statuses
