"""Cheap to start: a crontab line pays for every import, so the engine and a trivial run must not
import the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import COMMAND_TIMEOUT_S, Project

HEAVY_MODULES = ("numpy", "PIL", "requests", "apscheduler", "watchdog", "matplotlib")


def heavy_modules_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """Run `code` in a fresh interpreter; return the heavy modules it left in sys.modules."""
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    probe = "\n".join(
        [
            "import json, sys",
            "try:",
            body,
            "except SystemExit:",
            "    pass",
            f"heavy = {HEAVY_MODULES!r}",
            "found = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))",
            "print(json.dumps(found), file=sys.__stderr__)",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_importing_the_engine_skips_heavy_libraries() -> None:
    assert heavy_modules_after("import runner, runner.cli, runner.execution") == []


def test_a_trivial_run_skips_heavy_libraries(sqlite_project: Project) -> None:
    """The supervisor side of `runner run echo`, in-process through the console script's main()."""
    code = f"""
    from runner.cli import main
    main(["--config", {str(sqlite_project.config_path)!r}, "run", "echo", "-p", "text=light"])
    """

    assert heavy_modules_after(code, env=sqlite_project.env()) == []
    assert sqlite_project.only_run()["result"]["text"] == "light"
