"""`runner run` end to end: the shipped hello job, parameters, results, and how exits are recorded."""

from __future__ import annotations

import sys

import pytest
from conftest import TESTS_DIR, Project, assert_one_line_error

SHIPPED_CONFIG = TESTS_DIR.parent / "config" / "runner.ini"


@pytest.fixture
def shipped(project: Project) -> Project:
    """The shipped config/runner.ini, verbatim but for the database it points at."""
    text = SHIPPED_CONFIG.read_text(encoding="utf-8")
    assert "\n[runner]\n" in text
    project.write_config(text.replace("\n[runner]\n", f"\n[runner]\ndatabase = {project.database_url}\n", 1))
    return project


def test_run_hello_succeeds_and_is_in_history(shipped: Project) -> None:
    done = shipped.runner("run", "hello", "-p", "count=2")

    assert done.returncode == 0, done
    assert "Hello, ops! (2 greetings" in done.stdout
    row = shipped.only_run("hello")
    assert row["status"] == "succeeded"
    assert row["exit_code"] == 0
    assert row["trigger"] == "manual"
    assert row["params"] == {"name": "ops", "count": 2}
    assert row["result"].startswith("Hello, ops! (2 greetings")


def test_python_dash_m_job_module_goes_through_history(shipped: Project) -> None:
    done = shipped.command(
        [sys.executable, "-m", "jobs.hello", "--count", "2", "--config", str(shipped.config_path)]
    )

    assert done.returncode == 0, done
    row = shipped.only_run("hello")
    assert row["status"] == "succeeded"
    assert row["params"] == {"name": "ops", "count": 2}


def test_python_dash_m_accepts_config_equals_path(sqlite_project: Project) -> None:
    """`--config=PATH` is how many users spell it (and `runner --config=PATH` accepts it)."""
    sqlite_project.configure(job_packages="jobs")
    argv = [sys.executable, "-m", "jobs.hello", f"--config={sqlite_project.config_path}"]

    done = sqlite_project.command(argv)

    assert done.returncode == 0, done
    assert sqlite_project.only_run("hello")["status"] == "succeeded"


def test_options_named_after_parameters(shipped: Project) -> None:
    done = shipped.runner("run", "hello", "--count", "2", "--name", "ops")
    other = shipped.runner("run", "hello", "--count", "1", "--name", "dev")

    assert done.returncode == 0, done
    assert "Hello, ops! (2 greetings, 2 so far)" in done.stdout
    assert other.returncode == 0, other
    assert "Hello, dev! (1 greeting, 3 so far)" in other.stdout
    assert [row["params"] for row in shipped.history("hello")] == [
        {"name": "ops", "count": 2},
        {"name": "dev", "count": 1},
    ]


def test_option_beats_dash_p_beats_config(project: Project) -> None:
    project.configure("[job:echo]\ntext = from-config\nother = from-config")

    done = project.runner(
        "run", "echo", "-p", "text=from-p", "-p", "other=from-p", "--other", "from-option", "--json"
    )

    assert done.returncode == 0, done
    assert done.json()["result"] == {"text": "from-p", "other": "from-option"}


def test_run_help_lists_parameters_types_defaults_and_description(shipped: Project) -> None:
    done = shipped.runner("run", "hello", "--help")

    assert done.returncode == 0, done
    text = " ".join(done.stdout.split())  # click wraps long option lines
    assert "Greet someone, COUNT times." in text
    assert "--name STR [str; default: 'world', configured: 'ops'] who to greet." in text
    assert "--count INT [int; default: 1] how many greetings to log." in text
    assert shipped.history() == [], "--help must not start a run"


def test_run_json_outcome(project: Project) -> None:
    done = project.runner("run", "echo", "-p", "text=hi", "--json")

    assert done.returncode == 0, done
    outcome = done.json()
    assert outcome["status"] == "succeeded"
    assert outcome["attempts"] == 1
    assert outcome["result"] == {"text": "hi", "other": ""}
    assert outcome["run_id"] == project.only_run()["id"]


def test_typed_parameters_are_converted(sqlite_project: Project) -> None:
    done = sqlite_project.runner(
        "run", "typed", "--day", "2026-12-01", "--flag", "-p", "ids=1, 2,3", "-p", "ratio=0.5", "--json"
    )

    assert done.returncode == 0, done
    assert done.json()["result"] == {
        "day": "2026-12-01",
        "flag": True,
        "ids": [1, 2, 3],
        "ratio": 0.5,
        "types": ["date", "bool", "float"],
    }


def test_no_flag_sets_a_bool_parameter_false(sqlite_project: Project) -> None:
    sqlite_project.configure("[job:typed]\nflag = yes")

    done = sqlite_project.runner("run", "typed", "--day", "2026-12-01", "--no-flag", "--json")

    assert done.returncode == 0, done
    assert done.json()["result"]["flag"] is False


def test_missing_required_parameter(sqlite_project: Project) -> None:
    done = sqlite_project.runner("run", "typed")

    assert_one_line_error(done, "needs a value for day", "-p day=VALUE")
    assert sqlite_project.history() == []


def test_sys_exit_zero_succeeds(project: Project) -> None:
    done = project.runner("run", "sys_exit", "-p", "code=0")

    assert done.returncode == 0, done
    row = project.only_run()
    assert row["status"] == "succeeded"
    assert row["exit_code"] == 0


def test_sys_exit_three_fails_with_exit_code_3(project: Project) -> None:
    done = project.runner("run", "sys_exit", "-p", "code=3")

    assert done.returncode == 1, done
    row = project.only_run()
    assert row["status"] == "failed"
    assert row["exit_code"] == 3
    assert "exit code 3" in row["error"]


def test_result_larger_than_a_pipe_buffer_is_recorded(sqlite_project: Project) -> None:
    done = sqlite_project.runner("run", "big_result", "-p", "size=300000", "--json")

    assert done.returncode == 0, done
    assert done.json()["result"] == "x" * 300_000
    assert sqlite_project.only_run()["result"] == "x" * 300_000


def test_a_set_result_is_kept_as_a_sorted_list(sqlite_project: Project) -> None:
    done = sqlite_project.runner("run", "unjsonable", "--json")

    assert done.returncode == 0, done
    assert done.json()["result"] == [1, 2]
    assert sqlite_project.only_run()["result"] == [1, 2]


def test_one_function_configured_under_two_names(project: Project) -> None:
    project.configure(
        """
        [job:greet_en]
        uses = jobs_fixture.echo:echo
        text = hello

        [job:greet_de]
        uses = jobs_fixture.echo:echo
        text = hallo
        """
    )

    assert project.runner("run", "greet_en").returncode == 0
    assert project.runner("run", "greet_de").returncode == 0

    rows = {row["job"]: row for row in project.history()}
    assert rows["greet_en"]["result"]["text"] == "hello"
    assert rows["greet_de"]["result"]["text"] == "hallo"
    assert {row["status"] for row in rows.values()} == {"succeeded"}
