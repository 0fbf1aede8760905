"""The forked side of an attempt: the job's process-group leader, which takes every process of the
run down with it when the supervisor dies, and the job process under it, which runs the job body
with its output on the run log and its result on the result pipe."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any

from runner import jsonsafe
from runner.context import STOP, JobContext
from runner.prctl import become_subreaper, set_parent_death_signal

if TYPE_CHECKING:
    from runner.containment import Containment
    from runner.runplan import Attempt

CHILD_SETUP_FAILED = 70  # EX_SOFTWARE: the child died before the job body started
SUPERVISOR_GONE_SIGNAL = signal.SIGRTMIN + 1  # the leader's own notice that the supervisor died
ERROR_SUMMARY_CHARS = 500
LOG_FORMAT = "%(asctime)s run=%(run_id)s job=%(job)s %(levelname)s %(name)s: %(message)s"


def leader_main(
    attempt: Attempt, containment: Containment, *, log_fd: int, result_fd: int, supervisor: int
) -> int:
    """The job's process group leader: runs only this code, never the job's, so nothing a job does
    to its signal handlers can stop it from taking the job down when the supervisor dies. It forks
    the job process, waits for it and ends the way it ended (exit code or signal)."""
    os.setpgid(0, 0)
    containment.join()
    become_subreaper()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a stop is for the job; the leader waits for it
    signal.signal(SUPERVISOR_GONE_SIGNAL, lambda *_: _take_down_everything(containment))
    set_parent_death_signal(SUPERVISOR_GONE_SIGNAL)
    if os.getppid() != supervisor:  # it died before prctl took effect
        _take_down_everything(containment)
    leader = os.getpid()
    pid = os.fork()
    if pid == 0:  # the job process: never returns
        code = CHILD_SETUP_FAILED
        try:
            code = job_main(attempt, log_fd=log_fd, result_fd=result_fd, leader=leader)
        finally:
            os._exit(code)
    os.close(result_fd)
    os.close(log_fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # end by the same signal, so the supervisor names it
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler
            signal.signal(-code, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _take_down_everything(containment: Containment) -> None:
    """The supervisor is gone: kill the run's cgroup, every descendant of the leader (a subreaper:
    processes that left the group or session are re-parented to it) and the process group, which
    holds the leader itself."""
    from runner.containment import descendants

    if containment.cgroup is not None:
        with contextlib.suppress(OSError):
            (containment.cgroup / "cgroup.kill").write_text("1")
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)


def job_main(attempt: Attempt, *, log_fd: int, result_fd: int, leader: int) -> int:
    """The job process: stdin from /dev/null, stdout and stderr to the run log, then the job body.
    Returns the exit code; the result (or the error's summary) goes down the result pipe."""
    plan = attempt.plan
    spec = plan.spec
    _die_with_leader(leader)
    tty = None
    if plan.live and os.isatty(2):
        tty = os.fdopen(os.dup(2), "w", buffering=1)
    _redirect_output(log_fd)
    plan.store.after_fork(job_process=True)
    STOP.report_fd = result_fd
    ctx = JobContext(
        run_id=attempt.run_id,
        job=spec.name,
        attempt=attempt.number,
        fire=plan.fire,
        params=plan.params,
        store=plan.store,
        log=_child_logging(attempt.run_id, spec.name),
        tty=tty,
        timezone=spec.timezone,
    )
    kwargs = dict(plan.params)
    if spec.takes_ctx:
        kwargs["ctx"] = ctx
    code, message = 0, {}
    try:
        message = {"result": jsonsafe.jsonable(spec.func(**kwargs))}
    except SystemExit as exc:
        if exc.code not in (None, 0):
            code = exc.code if isinstance(exc.code, int) else 1
            message = {"error": f"exit code {code} (sys.exit({exc.code!r}))"}
    except BaseException as exc:
        # From the job's own frame down: this function's frame is ours, not the job's.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        code, message = 1, {"error": _summary(exc)}
    message["acked_files_only"] = STOP.used_files
    _write_all(result_fd, b"\n" + jsonsafe.dumps(message).encode() + b"\n")
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _redirect_output(log_fd: int) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)


def _die_with_leader(leader: int) -> None:
    """SIGTERM is a stop request (deferred inside ctx.files()); the leader's death is SIGKILL,
    which no job can catch or ignore."""

    def on_term(signum: int, _frame: Any) -> None:
        if STOP.deferring:  # inside ctx.files(): stop at the next file boundary
            STOP.requested = signum
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(SUPERVISOR_GONE_SIGNAL, signal.SIG_DFL)
    # Processes the job forks (a multiprocessing pool) get plain SIGTERM handling back: they are
    # in the job's group, so a stop reaches them, and the job's own handler covers the group.
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != leader:  # it died before prctl took effect
        os._exit(CHILD_SETUP_FAILED)


def _child_logging(run_id: int, job: str) -> logging.Logger:
    class RunFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.run_id, record.job = run_id, job
            return True

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RunFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return logging.getLogger(f"jobs.{job}")


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return jsonsafe.text(line[:ERROR_SUMMARY_CHARS])  # a NUL would make PostgreSQL refuse the row


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
