"""runner: scheduled scripts beside a backend, with one execution path and one run history.

Jobs import only this module's public API:

    from runner import JobContext, job

    @job
    def hello(ctx: JobContext, name: str = "world", count: int = 1) -> str: ...
"""

from __future__ import annotations

from runner.context import Fire, JobContext, JobState
from runner.jobapi import job
from runner.jobtables import JobTables
from runner.version import __version__

__all__ = [
    "Fire",
    "JobContext",
    "JobState",
    "JobTables",
    "MailError",
    "SmtpServer",
    "__version__",
    "job",
    "main",
    "send_mail",
]


def __getattr__(name: str) -> object:
    """The mail helpers (`send_mail`, `SmtpServer`, `MailError`), imported when a job asks for them."""
    if name in ("MailError", "SmtpServer", "send_mail"):
        from runner import mail

        return getattr(mail, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Run the job of the module executed with `python -m` (`python -m jobs.hello --count 2`),
    through the same execution path and history as `runner run`."""
    import __main__
    from runner.cli import run_module

    spec = getattr(__main__, "__spec__", None)
    if spec is None:
        raise SystemExit("runner.main(): start the job module with `python -m package.module`")
    run_module(spec.name, argv)
