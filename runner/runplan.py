"""What the execution path passes along: a fire to run (`RunPlan`), one attempt at it (`Attempt`,
its own row of the history) and what came of it (`Outcome`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import jsonsafe
from runner.context import Fire
from runner.enums import RunStatus
from runner.settings import Overlap, mask_value

if TYPE_CHECKING:
    from runner.jobapi import JobSpec
    from runner.settings import RunnerSettings
    from runner.store import Store

LATE_AFTER_S = 1.0  # a fire that starts this much after it was due is recorded late


@dataclass(frozen=True, slots=True)
class RunPlan:
    """One fire of a job as the execution path runs it: the job, its parameters, why it fired,
    where it is recorded, and whether a terminal watches (`live`)."""

    spec: JobSpec
    params: Mapping[str, Any]
    fire: Fire
    settings: RunnerSettings
    store: Store
    live: bool = False
    late_s: float | None = None  # how long after it was due the fire was taken up

    @property
    def lease_job(self) -> str | None:
        """The job whose overlap lease the run holds; None with overlap = allow (no lease)."""
        return self.spec.name if self.spec.overlap != Overlap.ALLOW else None

    def claim_values(self) -> dict[str, Any]:
        """The run row's values for Store.claim(), the same for every attempt."""
        fire = self.fire
        return dict(
            job=self.spec.name,
            fire_key=fire.key,
            trigger=fire.kind,
            params=masked_params(self.params),
            paths=[str(p) for p in fire.paths] or None,
            scheduled_at=fire.scheduled_at,
            late=self.late,
            late_s=self.late_s,
        )

    @property
    def late(self) -> bool:
        """A daemon fire (it knows when it was due) that waited is late; a cron line says so itself."""
        waited = self.late_s is not None and self.late_s > LATE_AFTER_S
        return self.fire.late or (self.fire.due_at is not None and waited)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a planned run, in its own row of the history."""

    plan: RunPlan
    run_id: int
    first_run_id: int  # the first attempt's row: the fire's claim
    number: int  # 1 for the first attempt

    @property
    def final(self) -> bool:
        return self.number > self.plan.spec.retries


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one fire after all its attempts."""

    run_id: int
    first_run_id: int
    attempts: int
    status: RunStatus
    exit_code: int | None
    signal: int | None
    error: str | None
    result: Any
    log_path: Path | None
    duration_s: float
    stop_signal: int | None = None  # set when the supervisor itself was told to stop
    acked_files_only: bool = False  # the job went through ctx.files(): it said which it finished
    file_in_progress: str | None = None  # the ctx.files() file it was on when it ended, if any

    @property
    def cli_exit_code(self) -> int:
        if self.stop_signal:
            return 128 + self.stop_signal
        return 0 if self.status is RunStatus.SUCCEEDED else 1


def masked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as history and logs show them: JSON values, secret-looking ones and URL passwords as ***."""

    plain = jsonsafe.jsonable(dict(params))
    return {key: mask_value(key, value) for key, value in plain.items()}
