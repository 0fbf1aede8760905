"""SIGHUP reloads the job code, not just the config: the next fire runs the edited module, a fire
running across the reload finishes on the old code (whose fork server then retires and is
reaped), and a module the edit broke leaves the other jobs firing and shows in `runner status`."""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
import uuid
from pathlib import Path

from conftest import TESTS_DIR, Project, stop, wait_until

REPO = TESTS_DIR.parent

# A job package of the test's own, on the daemon's PYTHONPATH, rewritten as a deploy would.
VALUE_JOB = '''
import time
from pathlib import Path

from runner import job

VERSION = {version!r}


@job
def value(ctx, hold: str = "") -> str:
    """Return VERSION; while the file `hold` exists, wait (the test holds one fire across a reload)."""
    held = Path(hold) if hold else None
    if held is not None and held.exists():
        held.with_name("held.pid").write_text(str(__import__("os").getppid()))
        while held.exists():
            time.sleep(0.05)
    return VERSION
'''

OTHER_JOB = """
from runner import job


@job
def other() -> str:
    return {version!r}


@job
def spare() -> str:
    return "spare " + {version!r}
"""


class JobCode:
    """A package `pkg` in the project, with a `value` and an `other` module, on PYTHONPATH."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.package = f"reload_jobs_{uuid.uuid4().hex[:8]}"
        self.folder = project.root / "code" / self.package
        self.folder.mkdir(parents=True)
        (self.folder / "__init__.py").write_text("")
        project.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.folder.parent), os.environ.get("PYTHONPATH")])
        )

    def write(self, module: str, text: str) -> None:
        path = self.folder / f"{module}.py"
        path.write_text(textwrap.dedent(text))

    def configure(self, jobs: str) -> None:
        self.project.configure(jobs, job_packages=self.package, timezone="UTC", max_workers="3")


def results(project: Project, job: str) -> list[tuple[str, str | None, str | None]]:
    """(status, result, reason) of each run of `job`, oldest first."""
    return [(r["status"], r["result"], r["reason"]) for r in project.history(job)]


def daemon_row(project: Project) -> dict:
    """The one live daemon's row in `runner status --json` ({} while it is starting)."""
    daemons = project.runner("status", "--json").json()["daemons"]
    assert len(daemons) <= 1, daemons
    return daemons[0] if daemons else {}


def proc_exists(pid: int) -> bool:
    """Even as a zombie: a server the daemon did not reap would still be listed."""
    return Path(f"/proc/{pid}").exists()


def test_sighup_runs_the_edited_code_while_a_running_fire_ends_on_the_old(sqlite_project: Project):
    project = sqlite_project
    code = JobCode(project)
    hold = project.root / "hold"
    hold.touch()
    code.write("value", VALUE_JOB.format(version="v1"))
    code.configure(f"[job:value]\nschedule = every 1s\nhold = {hold}\n")
    daemon = project.start("daemon")
    worker = int(
        wait_until(
            lambda: (hold.parent / "held.pid").exists() and (hold.parent / "held.pid").read_text(),
            "a held fire",
        )
    )
    old_server = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
    before = wait_until(lambda: daemon_row(project).get("code_version"), "the daemon's code version")

    code.write("value", VALUE_JOB.format(version="v2"))
    stale = project.runner("check")
    daemon.send_signal(signal.SIGHUP)
    after = wait_until(
        lambda: (v := daemon_row(project).get("code_version")) != before and v, "the reload's code version"
    )
    assert proc_exists(old_server), "the old fork server went away while its fire still ran"
    hold.unlink()  # the held fire (old code) may end now
    wait_until(lambda: ("succeeded", "v2", None) in results(project, "value"), "a fire on the new code")
    wait_until(lambda: not proc_exists(old_server), "the retired fork server to exit and be reaped")
    fresh = project.runner("check")
    stop(project, daemon)

    ran = [r for r in results(project, "value") if r[0] == "succeeded"]
    assert ran[0] == ("succeeded", "v1", None), ran  # the fire that ran across the reload
    assert all(result == "v2" for _, result, _ in ran[1:]), ran
    assert not proc_exists(worker)
    assert stale.returncode == 0, stale
    assert f"runs job code {before}" in stale.stderr and f"the files here are {after}" in stale.stderr, stale
    assert fresh.returncode == 0 and "warning" not in fresh.stderr, fresh


def test_a_module_broken_by_the_edit_leaves_the_other_jobs_on_new_code(project: Project):
    code = JobCode(project)
    code.write("value", VALUE_JOB.format(version="v1"))
    code.write("other", OTHER_JOB.format(version="v1"))
    jobs = "[job:value]\nschedule = every 1s\n\n[job:other]\nschedule = every 1s\n"
    code.configure(jobs + f"\n[job:gone]\nuses = {code.package}.other:spare\nschedule = every 1s\n")
    daemon = project.start("daemon")
    wait_until(lambda: ("succeeded", "v1", None) in results(project, "value"), "a fire of value")
    wait_until(lambda: ("succeeded", "spare v1", None) in results(project, "gone"), "a fire of gone")

    # One deploy: `value` no longer imports, `other` changes, a `renamed` job uses a function that
    # is gone, `fresh` is new and `gone` is removed from the config.
    code.write("value", "def broken(:\n")
    code.write("other", OTHER_JOB.format(version="v2").replace("def spare", "def spare_parts"))
    code.configure(
        jobs
        + f"\n[job:renamed]\nuses = {code.package}.other:spare\nschedule = every 1s\n"
        + f"\n[job:fresh]\nuses = {code.package}.other:spare_parts\nschedule = every 1s\n"
    )
    daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: ("succeeded", "v2", None) in results(project, "other"), "other on the new code")
    wait_until(lambda: ("succeeded", "spare v2", None) in results(project, "fresh"), "the new job fired")
    wait_until(
        lambda: ("failed", None, "broken") in results(project, "value"), "value's fire recorded failed"
    )
    wait_until(
        lambda: ("failed", None, "broken") in results(project, "renamed"), "renamed's fire recorded failed"
    )
    status = project.runner("status")
    row = daemon_row(project)
    failed = [r for r in project.history("value") if r["status"] == "failed"]
    stop(project, daemon)

    assert daemon.returncode == 0
    assert set(row["broken"]) == {"value", "renamed"}, row["broken"]
    assert "SyntaxError" in row["broken"]["value"], row["broken"]
    assert "has no function spare" in row["broken"]["renamed"], row["broken"]
    assert "job value is broken" in status.stdout and "SyntaxError" in status.stdout, status
    assert "not run: the job's code is broken" in failed[0]["error"], failed
    assert failed[0]["started_at"] is None, failed  # nothing ran
    # (after the stop: a fire due while it stopped has a shutdown row that never started)
    applied = min(r["started_at"] for r in project.history("fresh") if r["started_at"])
    assert not [r for r in project.history("gone") if (r["started_at"] or "") > applied]  # removed


def test_a_reload_that_finds_another_runner_installed_keeps_the_old_code(sqlite_project: Project):
    """`pip install` of a new runner under a running daemon: a reload refuses to mix versions (the
    daemon and its fork servers speak one), keeps firing the old code and says to restart."""
    project = sqlite_project
    installed = project.root / "site-packages"
    shutil.copytree(REPO / "runner", installed / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    project.environ["PYTHONPATH"] = os.pathsep.join([str(installed), str(TESTS_DIR)])
    out = project.root / "ticks.txt"
    project.configure(f"[job:tick]\nuses = jobs_fixture.ticks:tick\nschedule = every 1s\nout = {out}\n")
    daemon = project.start("daemon")
    before = wait_until(lambda: daemon_row(project).get("code_version"), "the daemon's code version")

    (installed / "runner" / "version.py").write_text('__version__ = "9.9.9"\n')
    daemon.send_signal(signal.SIGHUP)
    row = wait_until(lambda: (r := daemon_row(project)).get("notes") and r, "the refused reload noted")
    fired = len(out.read_text().splitlines())
    wait_until(lambda: len(out.read_text().splitlines()) >= fired + 2, "the old code to keep firing")
    stderr = stop(project, daemon)

    assert row["code_version"] == before, row
    assert "reload refused: runner 9.9.9 is installed, this daemon runs 0.1.0" in row["notes"][0], row
    assert "restart the daemon" in row["notes"][0]
    assert "reload refused" in stderr and "Traceback" not in stderr
