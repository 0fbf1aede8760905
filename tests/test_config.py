"""The INI file at the edge: every user mistake is one line and exit 2; interpolation, secrets,
relative paths, broken job modules, and the --json output of the listing commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import RUNNER_BIN, TESTS_DIR, Project, assert_one_line_error

UNSET_ENV = "RUNNER_TEST_SURELY_UNSET_VARIABLE"


def job_section(body: str) -> str:
    return f"[job:echo]\n{body}"


# (config: jobs text and [runner] overrides, or the whole file; the command; fragments of the error)
USER_ERRORS = [
    pytest.param(
        {"text": "[runner\nvar_dir = var\n"}, ["list"], ["not a valid INI file"], id="malformed-ini"
    ),
    pytest.param({"text": "[runner]\nvar_dir\n"}, ["list"], ["not a valid INI file"], id="key-without-value"),
    pytest.param({"missing": True}, ["list"], ["config file not found"], id="missing-config-file"),
    pytest.param(
        {"runner": {"colour": "red"}}, ["list"], ["[runner] colour", "unknown key"], id="unknown-runner-key"
    ),
    pytest.param(
        {"jobs": job_section("timeout = ten")},
        ["run", "echo"],
        ["[job:echo] timeout = 'ten'", "expected a duration like 90s, 15m, 2h"],
        id="bad-job-duration",
    ),
    pytest.param(
        {"runner": {"kill_grace": "soon"}},
        ["run", "echo"],
        ["[runner] kill_grace", "expected a duration like 90s, 15m, 2h"],
        id="bad-runner-duration",
    ),
    pytest.param({}, ["run", "nosuch"], ["unknown job 'nosuch'", "echo"], id="unknown-job"),
    pytest.param(
        {}, ["run", "echo", "-p", "bogus=1"], ["bogus", "no such parameter"], id="unknown-parameter"
    ),
    pytest.param(
        {"runner": {"job_packages": "jobs"}},
        ["run", "hello", "-p", "count=abc"],
        ["count", "'abc'", "expected a whole number"],
        id="p-count-abc",
    ),
    pytest.param(
        {"runner": {"job_packages": "jobs"}},
        ["run", "hello", "--count", "abc"],
        ["'abc'", "expected a whole number"],
        id="option-count-abc",
    ),
    pytest.param({}, ["run", "echo", "-p", "text"], ["expected key=value"], id="p-without-equals"),
    pytest.param({}, ["run", "typed"], ["needs a value for day"], id="missing-required-parameter"),
    pytest.param(
        {"jobs": job_section("retries = -1")},
        ["run", "echo"],
        ["[job:echo] retries = '-1'", "expected a whole number from 0 to 100"],
        id="negative-retries",
    ),
    pytest.param(
        {"jobs": job_section("overlap = sometimes")},
        ["run", "echo"],
        ["overlap = 'sometimes'", "skip, queue, allow"],
        id="unknown-overlap",
    ),
    pytest.param(
        {"jobs": "[job:x]\nuses = jobs_fixture.nosuch:echo"},
        ["run", "x"],
        ["[job:x] uses", "jobs_fixture.nosuch"],
        id="uses-module-missing",
    ),
    pytest.param(
        {"jobs": "[job:x]\nuses = jobs_fixture.echo:nosuch"},
        ["run", "x"],
        ["[job:x] uses", "no function nosuch"],
        id="uses-function-missing",
    ),
    pytest.param(
        {"jobs": "[job:x]\nuses = not a target"},
        ["run", "x"],
        ["[job:x] uses", "package.module:function"],
        id="uses-malformed",
    ),
    pytest.param(
        {"jobs": job_section("colour = red")},
        ["run", "echo"],
        ["[job:echo]", "colour", "no such parameter"],
        id="param-the-function-does-not-take",
    ),
    pytest.param(
        {"jobs": job_section(f"text = ${{env:{UNSET_ENV}}}")},
        ["run", "echo"],
        [UNSET_ENV, "is not set"],
        id="env-unset",
    ),
    pytest.param(
        {"jobs": job_section("text = ${nosuch:key}")},
        ["run", "echo"],
        ["${nosuch:key}", "does not exist"],
        id="reference-to-missing-key",
    ),
    pytest.param(
        {"jobs": job_section("text = ${other}\nother = ${text}")},
        ["run", "echo"],
        ["nest too deep"],
        id="reference-loop",
    ),
    pytest.param(
        {"jobs": "[jobs:echo]\ntext = x"}, ["list"], ["[jobs:echo]", "unknown section"], id="unknown-section"
    ),
    pytest.param({"jobs": "[job:bad name]\n"}, ["list"], ["[job:bad name]", "job names"], id="bad-job-name"),
    pytest.param(
        {"runner": {"timezone": "Mars/Olympus"}}, ["list"], ["timezone", "IANA"], id="unknown-timezone"
    ),
    pytest.param(
        {"runner": {"max_workers": "0"}}, ["list"], ["max_workers", "from 1 to 1024"], id="zero-max-workers"
    ),
    pytest.param(
        {"runner": {"heartbeat": "10s", "stale_after": "5s"}},
        ["list"],
        ["stale_after", "longer than heartbeat"],
        id="stale-after-not-longer-than-heartbeat",
    ),
    pytest.param(
        {"jobs": "[job:ghost]\n"}, ["run", "ghost"], ["[job:ghost]", "no job function"], id="no-function"
    ),
    pytest.param(
        {"runner": {"database": "not a url"}},
        ["history"],
        ["expected a SQLAlchemy URL"],
        id="database-not-a-url",
    ),
    pytest.param({}, ["logs", "999"], ["no run 999"], id="logs-of-unknown-run"),
    pytest.param({}, ["bogus"], ["bogus"], id="unknown-command"),
    pytest.param({}, ["run", "echo", "--bogus", "1"], ["--bogus"], id="unknown-job-option"),
    pytest.param({}, ["history", "--limit", "0"], ["--limit"], id="bad-option-value"),
]


@pytest.mark.parametrize(("config", "command", "fragments"), USER_ERRORS)
def test_user_error_is_one_line_and_exit_2(
    sqlite_project: Project, config: dict, command: list[str], fragments: list[str]
) -> None:
    if "text" in config:
        sqlite_project.write_config(config["text"])
    elif config.get("missing"):
        sqlite_project.config_path.unlink()
    else:
        sqlite_project.configure(config.get("jobs", ""), **config.get("runner", {}))

    done = sqlite_project.runner(*command)

    assert_one_line_error(done, *fragments)


def test_runner_config_env_var_names_the_file(sqlite_project: Project) -> None:
    env = sqlite_project.env(RUNNER_CONFIG=str(sqlite_project.config_path))

    done = sqlite_project.command([str(RUNNER_BIN), "run", "echo", "-p", "text=via-env"], env=env)

    assert done.returncode == 0, done
    assert sqlite_project.only_run()["result"]["text"] == "via-env"


def test_env_and_section_interpolation(project: Project) -> None:
    project.configure(
        """
        [job:echo]
        description = from the description
        text = ${env:RUNNER_TEST_GREETING}
        other = ${runner:timezone} / ${description} / $$5
        """,
        timezone="UTC",
    )

    project.environ["RUNNER_TEST_GREETING"] = "hello from env"

    done = project.runner("run", "echo")

    assert done.returncode == 0, done
    assert project.only_run()["result"] == {
        "text": "hello from env",
        "other": "UTC / from the description / $5",
    }


def secretive_config(project: Project) -> dict[str, str]:
    secrets = {"api_token": "hunter2-token", "password": "pw-s3cret"}
    project.environ["RUNNER_TEST_PASSWORD"] = secrets["password"]
    project.configure(
        """
        [job:secretive]
        api_token = hunter2-token
        password = ${env:RUNNER_TEST_PASSWORD}
        region = us
        """
    )
    return secrets


def test_show_masks_secret_looking_keys(sqlite_project: Project) -> None:
    secrets = secretive_config(sqlite_project)

    shown = sqlite_project.runner("show", "secretive", "--json")
    table = sqlite_project.runner("show", "secretive")

    assert shown.returncode == 0, shown
    data = shown.json()
    assert data["section"]["api_token"] == "***"
    assert data["section"]["password"] == "***"
    assert data["section"]["region"] == "us"
    configured = {p["name"]: p["configured"] for p in data["parameters"]}
    assert configured == {"api_token": "***", "password": "***", "region": "us"}
    for secret in secrets.values():
        assert secret not in shown.stdout
        assert secret not in table.stdout


def test_run_help_masks_configured_secrets(sqlite_project: Project) -> None:
    secrets = secretive_config(sqlite_project)

    done = sqlite_project.runner("run", "secretive", "--help")

    assert done.returncode == 0, done
    assert "--api-token" in done.stdout
    for secret in secrets.values():
        assert secret not in done.stdout


def test_history_and_log_mask_secret_parameters(sqlite_project: Project) -> None:
    secrets = secretive_config(sqlite_project)

    done = sqlite_project.runner("run", "secretive")
    history = sqlite_project.runner("history", "--json")
    logs = sqlite_project.runner("logs", str(history.json()[0]["id"]))

    assert done.returncode == 0, done
    assert history.json()[0]["params"]["region"] == "us"
    for secret in secrets.values():
        assert secret not in history.stdout
        assert secret not in logs.stdout


def test_relative_paths_resolve_against_the_config_file(sqlite_project: Project) -> None:
    """var_dir, a relative SQLite file and a Path parameter set in the INI all live beside the
    INI file, whatever the working directory; so does `--config` given relative to the cwd."""
    sqlite_project.configure("[job:write_file]\nout = out/result.txt", database="sqlite:///db/relative.db")
    conf_dir = sqlite_project.config_path.parent
    elsewhere = sqlite_project.root / "elsewhere"
    elsewhere.mkdir()
    relative_config = Path("..") / "conf" / "runner.ini"

    done = sqlite_project.command(
        [str(RUNNER_BIN), "--config", str(relative_config), "run", "write_file", "--json"], cwd=elsewhere
    )

    assert done.returncode == 0, done
    assert done.json()["result"] == str(conf_dir / "out" / "result.txt")
    assert (conf_dir / "out" / "result.txt").read_text() == "written"
    assert (conf_dir / "db" / "relative.db").is_file()
    assert Path(done.json()["log_path"]).is_relative_to(conf_dir / "var")
    assert list(elsewhere.iterdir()) == [], "nothing may be written relative to the working directory"


def test_path_given_on_the_command_line_resolves_against_the_cwd(sqlite_project: Project) -> None:
    done = sqlite_project.runner("run", "write_file", "-p", "out=cli/result.txt", "--json")

    assert done.returncode == 0, done
    assert done.json()["result"] == str(sqlite_project.root / "cli" / "result.txt")


def test_broken_module_is_listed_and_other_jobs_still_run(sqlite_project: Project) -> None:
    sqlite_project.configure(job_packages="jobs_fixture jobs_broken")

    listed = sqlite_project.runner("list", "--json")
    fine = sqlite_project.runner("run", "fine")
    echo = sqlite_project.runner("run", "echo")
    checked = sqlite_project.runner("check")
    checked_json = sqlite_project.runner("check", "--json")

    assert listed.returncode == 0, listed
    status = {row["name"]: row for row in listed.json()}
    assert status["jobs_broken.broken"]["status"] == "broken"
    assert "this module is broken on purpose" in status["jobs_broken.broken"]["description"]
    assert status["fine"]["status"] == "ok"
    assert status["echo"]["status"] == "ok"
    assert fine.returncode == 0, fine
    assert echo.returncode == 0, echo
    assert checked.returncode == 2, checked
    assert "jobs_broken.broken" in checked.stderr
    assert "Traceback" not in checked.stderr
    assert checked_json.returncode == 2, checked_json
    assert any("jobs_broken.broken" in problem for problem in checked_json.json()["problems"])


def test_broken_job_section_fails_check_but_not_the_others(sqlite_project: Project) -> None:
    sqlite_project.configure("[job:echo]\ncolour = red\n\n[job:counter]\n")

    listed = sqlite_project.runner("list", "--json")
    checked = sqlite_project.runner("check", "--json")
    counter = sqlite_project.runner("run", "counter")

    status = {row["name"]: row["status"] for row in listed.json()}
    assert status["echo"] == "broken"
    assert status["counter"] == "ok"
    assert checked.returncode == 2, checked
    assert any("colour" in problem for problem in checked.json()["problems"])
    assert counter.returncode == 0, counter


def test_check_passes_for_a_clean_config(project: Project) -> None:
    project.configure("[job:echo]\ntext = hi")

    done = project.runner("check")

    assert done.returncode == 0, done
    assert done.stderr == ""


def test_listing_commands_print_json(project: Project) -> None:
    project.configure("[job:echo]\ndescription = says things")
    assert project.runner("run", "echo").returncode == 0

    outputs = {
        name: project.runner(*argv)
        for name, argv in {
            "list": ["list", "--json"],
            "history": ["history", "--json"],
            "check": ["check", "--json"],
            "show": ["show", "echo", "--json"],
        }.items()
    }

    for done in outputs.values():
        assert done.returncode == 0, done
        json.loads(done.stdout)  # raises if the command printed anything but JSON
    jobs = {row["name"]: row for row in outputs["list"].json()}
    assert jobs["echo"]["description"] == "says things"
    assert outputs["history"].json()[0]["job"] == "echo"
    assert outputs["check"].json()["problems"] == []
    assert outputs["check"].json()["database"] == "ok"
    assert outputs["show"].json()["settings"]["overlap"] == "skip"


def test_history_filters_by_job_and_status(project: Project) -> None:
    assert project.runner("run", "echo").returncode == 0
    assert project.runner("run", "fail").returncode == 1

    failed = project.runner("history", "--status", "failed", "--json")
    echo = project.runner("history", "echo", "--json")

    assert [row["job"] for row in failed.json()] == ["fail"]
    assert [row["job"] for row in echo.json()] == ["echo"]


def test_an_unset_env_var_breaks_only_the_job_that_uses_it(sqlite_project: Project) -> None:
    """A crontab line has a bare environment: job B must not stop firing because job A's variable is unset."""
    sqlite_project.configure(
        f"""
        [job:needs_env]
        uses = jobs_fixture.echo:echo
        text = ${{env:{UNSET_ENV}}}

        [job:plain]
        uses = jobs_fixture.echo:echo
        text = fine
        """
    )
    ok = sqlite_project.runner("run", "plain")
    assert ok.returncode == 0, ok
    broken = sqlite_project.runner("run", "needs_env")
    assert_one_line_error(broken, UNSET_ENV, "[job:needs_env]")
    listed = sqlite_project.runner("list", "--json")
    statuses = {r["name"]: r["status"] for r in listed.json()}
    assert statuses["plain"] == "ok" and statuses["needs_env"] == "broken", statuses
    check = sqlite_project.runner("check")
    assert check.returncode == 2 and UNSET_ENV in check.stderr, check


def test_inline_comments_are_not_part_of_values(project: Project) -> None:
    """`key = value   ; why` and `# why` are comments, as INI users expect; `$;` and `$#` are literal."""
    project.write_config(
        f"""
[runner]
database = {project.database_url}   ; the run history
var_dir = var                ; beside this file
timezone = Europe/Berlin     # where schedules are evaluated
kill_grace = 1s              ; SIGTERM -> SIGKILL
job_packages = jobs_fixture

[job:echo]
schedule = cron 0 7 * * mon  ; five fields
           cron 0 18 * * fri # one a line
text = a $; b $# c            ; the escapes
other = a;b
"""
    )

    shown = project.runner("show", "echo", "--json")
    done = project.runner("run", "echo", "--json")

    assert shown.returncode == 0, shown
    assert shown.json()["section"]["schedule"] == "cron 0 7 * * mon\ncron 0 18 * * fri"
    assert done.returncode == 0, done
    assert done.json()["result"] == {"text": "a ; b # c", "other": "a;b"}
    assert sorted(p.name for p in project.config_path.parent.iterdir()) == ["runner.ini", "var"]


@pytest.mark.parametrize("value", ["15m; the longest", "15m;\tthe longest", "15m# the longest"])
def test_a_value_that_still_looks_like_a_comment_is_refused(sqlite_project: Project, value: str) -> None:
    sqlite_project.configure(job_section(f"timeout = {value}"))

    done = sqlite_project.runner("run", "echo")

    assert_one_line_error(done, "[job:echo] timeout", "looks like a comment", "$")


@pytest.mark.parametrize(
    "command", [["history", "ecko"], ["next", "ecko"], ["run", "ecko"], ["show", "ecko"]]
)
def test_an_unknown_job_name_is_exit_2_with_did_you_mean(sqlite_project: Project, command: list[str]) -> None:
    done = sqlite_project.runner(*command)

    assert_one_line_error(done, "unknown job 'ecko'", "did you mean echo?")


def test_an_empty_history_says_what_was_filtered(sqlite_project: Project) -> None:
    assert sqlite_project.runner("run", "echo").returncode == 0

    failed = sqlite_project.runner("history", "echo", "--status", "failed")
    nothing = sqlite_project.runner("history", "counter")

    assert failed.returncode == 0, failed
    assert failed.stdout.strip() == "no runs of job echo with status failed"
    assert nothing.returncode == 0, nothing
    assert nothing.stdout.strip() == "no runs of job counter"


def test_check_prints_no_ok_lines_before_failing(sqlite_project: Project) -> None:
    sqlite_project.configure("[job:echo]\ncolour = red")

    done = sqlite_project.runner("check")

    assert done.returncode == 2, done
    assert done.stdout == "", done
    assert "colour" in done.stderr, done


# (the file's text after "[runner]\n"; the error after the file's path), each taken from the code
# before the section reader replaced the per-key checks, one for each way of reading a value.
EXACT_ERRORS = [
    ("heartbeat = 0.05\n", "[runner] heartbeat = '0.05': must be at least 100ms"),
    ("kill_grace = -1\n", "[runner] kill_grace = '-1': expected a duration like 90s, 15m, 2h"),
    ("stale_after = 1s\n", "[runner] stale_after = '1s': must be longer than heartbeat (5s)"),
    ("max_workers = 1025\n", "[runner] max_workers = '1025': expected a whole number from 1 to 1024"),
    ("contain = bogus\n", "[runner] contain = 'bogus': expected one of: subreaper, cgroup"),
    ("job_packages = ,\n", "[runner] job_packages: expected at least one package name"),
    (
        "var_dir = a\x01b\n",
        "[runner] var_dir = 'a\\x01b': "
        + "holds a newline or control character; a path or URL must be one plain line",
    ),
    (
        "timezone = Mars/Base\n",
        "[runner] timezone = 'Mars/Base': unknown timezone; expected an IANA name like Europe/Berlin or UTC",
    ),
    (
        "max_log_bytes = 1k\n",
        "[runner] max_log_bytes = '1k': expected a size like 50MiB, 200KiB or 0 (no cap), at least 16KiB",
    ),
    ("[job:a]\ntimeout = 500d\n", "[job:a] timeout = '500d': must be at most 366d"),
    (
        "[job:a]\noverlap = bogus\n",
        "[job:a] overlap = 'bogus': unknown overlap policy; expected one of: skip, queue, allow",
    ),
    ("[job:a]\nuses = bad-name\n", "[job:a] uses = 'bad-name': expected package.module:function"),
    ("[job:a]\nretries = 101\n", "[job:a] retries = '101': expected a whole number from 0 to 100"),
    (
        "[job:a]\nschedule = cron 0 7 * * mon\n  nonsense\n",
        "[job:a] schedule = 'nonsense': expected 'cron M H DoM Mon DoW', 'every 15m' or 'at 2026-12-01 09:00'",
    ),
    ("[job:a]\nschedule = every 0.5s\n", "[job:a] schedule = 'every 0.5s': the interval must be at least 1s"),
    ("[job:a]\nbatch = 2\n", "[job:a] batch: only means something with `watch = FOLDER`"),
    ("[job:a]\nwatch = 'in\n", '[job:a] watch = "\'in": cannot read the folder list: No closing quotation'),
    ("[job:a]\nwatch = in\nwatch_mode =\n", "[job:a] watch_mode = '': expected one of: events, polling"),
    ("[job:a]\nwatch = in\nrecursive = maybe\n", "[job:a] recursive = 'maybe': expected true or false"),
    ("[job:a]\nwatch = in\nrescan = 0.5s\n", "[job:a] rescan = '0.5s': must be at least 1s"),
]


@pytest.mark.parametrize(("text", "message"), EXACT_ERRORS, ids=[m.split(":")[0] for _, m in EXACT_ERRORS])
def test_each_kind_of_value_keeps_its_exact_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    from runner.config import load_settings
    from runner.errors import ConfigError

    monkeypatch.setenv("TZ", "Etc/UTC")  # the default of [runner] timezone
    path = tmp_path / "runner.ini"
    path.write_text("[runner]\n" + text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value) == f"{path}: {message}"


def test_two_job_functions_with_one_name_are_never_picked_silently(sqlite_project: Project) -> None:
    """Adding a module must not change which function an existing job name runs: a name that two
    modules define runs only where a `uses =` says which."""
    project = sqlite_project
    package = project.root / "twins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module in ("a_first", "b_second"):
        (package / f"{module}.py").write_text(
            f"from runner import job\n\n\n@job()\ndef report() -> str:\n    return {module!r}\n"
        )
    project.environ["PYTHONPATH"] = os.pathsep.join([str(project.root), str(TESTS_DIR)])

    project.configure(job_packages="twins")
    unnamed = project.runner("run", "report")
    project.configure("[job:report]\nschedule = every 1h", job_packages="twins")
    unsaid = project.runner("check")
    project.configure("[job:report]\nuses = twins.b_second:report", job_packages="twins")
    said = project.runner("run", "report", "--json")

    for done in (unnamed, unsaid):
        assert done.returncode == 2, done
        assert "more than one job function" in done.stderr, done
        assert "twins.a_first:report" in done.stderr and "twins.b_second:report" in done.stderr, done
        assert "uses = package.module:function" in done.stderr and "Traceback" not in done.stderr, done
    assert said.returncode == 0, said
    assert said.json()["result"] == "b_second"
