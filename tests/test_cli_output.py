"""What the commands print: --json everywhere a script may read, readable --help, effective
settings, --config in any position, and job tracebacks free of the engine's own frames."""

from __future__ import annotations

from conftest import RUNNER_BIN, Project


def test_run_json_prints_a_refusal_as_json(sqlite_project: Project) -> None:
    fire = ["--fire-at", "2026-01-05T06:00:00Z"]
    first = sqlite_project.runner("run", "echo", *fire, "--json")

    again = sqlite_project.runner("run", "echo", *fire, "--json")

    assert first.returncode == 0, first
    assert again.returncode == 3, again
    refusal = again.json()
    assert refusal["status"] == "not_started"
    assert refusal["exit_code"] == 3
    assert "already" in refusal["error"]
    assert again.stderr.startswith("runner: "), again


def test_logs_crontab_show_and_db_upgrade_print_json(sqlite_project: Project) -> None:
    sqlite_project.configure("[job:echo]\nschedule = cron 0 7 * * mon\ntext = logged")
    upgraded = sqlite_project.runner("db", "upgrade", "--json")
    ran = sqlite_project.runner("run", "echo", "--json")

    logs = sqlite_project.runner("logs", str(ran.json()["run_id"]), "--json")
    crontab = sqlite_project.runner("crontab", "show", "--json")
    again = sqlite_project.runner("db", "upgrade", "--json")

    assert upgraded.returncode == 0, upgraded
    assert upgraded.json()["changed"] is True
    assert again.json()["changed"] is False
    assert again.json()["before"] == again.json()["after"] == upgraded.json()["after"]
    assert logs.returncode == 0, logs
    assert logs.json()["job"] == "echo"
    assert f"run {ran.json()['run_id']} of job echo started" in logs.json()["log"]
    assert crontab.returncode == 0, crontab
    assert any(" run echo --from-cron" in line for line in crontab.json()["lines"])
    assert crontab.json()["block"].startswith("# BEGIN runner ")


def test_show_gives_the_effective_timezone_jitter_and_catchup(sqlite_project: Project) -> None:
    sqlite_project.configure(
        "[job:echo]\nschedule = every 15m\ntimezone = America/New_York\njitter = 30s\n\n[job:counter]\n",
        catchup="2h",
        timezone="Europe/Berlin",
    )

    echo = sqlite_project.runner("show", "echo", "--json")
    counter = sqlite_project.runner("show", "counter")

    assert echo.returncode == 0, echo
    settings = echo.json()["settings"]
    assert (settings["timezone"], settings["jitter"], settings["catchup"]) == (
        "America/New_York",
        "30s",
        "2h",
    )
    assert counter.returncode == 0, counter
    lines = {
        line.split()[0]: line.split()[-1] for line in counter.stdout.splitlines() if line.startswith("  ")
    }
    assert (lines["timezone"], lines["jitter"], lines["catchup"]) == ("Europe/Berlin", "0s", "2h"), counter


def test_run_help_shows_path_defaults_as_paths(sqlite_project: Project) -> None:
    done = sqlite_project.runner("run", "tidy", "--help")

    assert done.returncode == 0, done
    assert "default: exports" in done.stdout, done
    assert "PosixPath" not in done.stdout, done


def test_config_is_accepted_after_the_subcommand(sqlite_project: Project) -> None:
    config = str(sqlite_project.config_path)
    cwd = sqlite_project.root  # holds no config/runner.ini: only --config can find the file

    listed = sqlite_project.command([str(RUNNER_BIN), "list", "--config", config, "--json"], cwd=cwd)
    ran = sqlite_project.command([str(RUNNER_BIN), "run", "echo", f"--config={config}", "--json"], cwd=cwd)

    assert listed.returncode == 0, listed
    assert "echo" in {row["name"] for row in listed.json()}
    assert ran.returncode == 0, ran
    assert ran.json()["status"] == "succeeded"


def test_a_job_traceback_starts_at_the_job(sqlite_project: Project) -> None:
    failed = sqlite_project.runner("run", "fail", "--json")

    log = sqlite_project.runner("logs", str(failed.json()["run_id"]))

    assert failed.returncode == 1, failed
    assert "Traceback (most recent call last)" in log.stdout, log
    assert "_inner" in log.stdout, log
    assert "runner/execution.py" not in log.stdout, log
    assert "runner/jobprocess.py" not in log.stdout, log
    assert "_child_main" not in log.stdout, log


def screen(output: str) -> list[str]:
    """What a terminal shows for `output`: \\r returns to the line's start, ESC[K clears to its end."""
    lines, line, col = [], [], 0
    at = 0
    while at < len(output):
        if output.startswith("\x1b[K", at):
            del line[col:]
            at += 3
            continue
        char = output[at]
        at += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            line[col : col + 1] = [char]
            col += 1
    if line:
        lines.append("".join(line))
    return lines


def run_on_a_terminal(project: Project, *args: str) -> tuple[int, str]:
    """`runner ARGS` with stdout and stderr on a pseudo-terminal; (exit code, all it printed)."""
    import os
    import pty
    import subprocess

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        project.argv(args), stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL, env=project.env()
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_log_lines_print_above_a_live_progress_bar(sqlite_project: Project) -> None:
    code, output = run_on_a_terminal(sqlite_project, "run", "chatty", "-p", "items=15")

    shown = screen(output)
    assert code == 0, output
    started = next(i for i, line in enumerate(shown) if "run 1 of job chatty started" in line)
    bars = [i for i, line in enumerate(shown) if "%" in line and "chatty [" in line]
    items = [i for i, line in enumerate(shown) if " item " in line]
    assert len(items) == 15, shown
    assert bars and started < bars[0], f"the bar came before the run's first line:\n{output!r}"
    for line in shown:
        assert not ("chatty [" in line and " item " in line), f"a log line ran into the bar: {line!r}"
        assert line.count("chatty [") <= 1, f"two bars on one line: {line!r}"
    assert "chatty [##############################] 100%" in "\n".join(shown), shown
