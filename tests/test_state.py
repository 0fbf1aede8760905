"""ctx.state under concurrency: the atomic calls count every update of two overlapping runs."""

from __future__ import annotations

import pytest
from conftest import Project

TIMES = 100


@pytest.mark.parametrize("how", ["incr", "update", "transaction"])
def test_two_overlapping_runs_lose_no_update(project: Project, how: str) -> None:
    started = project.root / "started.txt"
    project.configure(f"[job:tally]\noverlap = allow\ntimes = {TIMES}\nhow = {how}\nstarted = {started}\n")

    runs = [project.start("run", "tally") for _ in range(2)]
    done = [project.finish(run) for run in runs]

    assert [d.returncode for d in done] == [0, 0], done
    assert len(started.read_text().split()) == 2
    final = project.runner("run", "tally", "-p", "times=0", "-p", "started=", "--json")
    assert final.json()["result"] == 2 * TIMES, final
