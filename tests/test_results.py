"""Job results and state that JSON cannot hold as they are: one encoding on SQLite and PostgreSQL,
and every --json output strict JSON."""

from __future__ import annotations

import json
from typing import Any

from conftest import Project

ODD_ENCODED = {
    "nan": "NaN",
    "inf": "Infinity",
    "-inf": "-Infinity",
    "np_mean": 1.5,
    "np_int": 7,
    "np_nan": "NaN",
    "np_array": [[1.5, "NaN"], ["Infinity", 2.0]],
    "decimal": "1.10",
    "when": "2026-11-26T12:30:00+00:00",
    "day": "2026-11-26",
    "bytes": "ab\\xff",
    "set": [1, 2, 3],
    "tuple": [1, "a"],
    "name": "caf\\xe9.jpg",
    "7": "int key",
}


def strict(text: str) -> Any:
    """json.loads that refuses NaN and Infinity (what PostgreSQL and every other parser refuse)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def strict_history(project: Project) -> list[dict[str, Any]]:
    done = project.runner("history", "--json", "--limit", "100")
    assert done.returncode == 0, done
    return list(reversed(strict(done.stdout)))


def test_odd_results_are_stored_the_same_way_on_both_backends(project: Project) -> None:
    first = project.runner("run", "odd_values", "--json")
    second = project.runner("run", "odd_values")

    assert first.returncode == 0, first
    assert strict(first.stdout)["result"] == {"value": ODD_ENCODED, "previous": None}
    assert second.returncode == 0, second
    assert strict(second.stdout) == {"value": ODD_ENCODED, "previous": ODD_ENCODED}
    runs = strict_history(project)
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert runs[1]["result"] == {"value": ODD_ENCODED, "previous": ODD_ENCODED}
    status = project.runner("status", "--json")
    assert status.returncode == 0, status
    strict(status.stdout)


def test_a_failure_message_no_database_can_hold_is_recorded(project: Project) -> None:
    done = project.runner("run", "odd_values", "-p", "fail=true")

    assert done.returncode == 1, done
    [run] = strict_history(project)
    assert run["status"] == "failed"
    assert run["error"] == "RuntimeError: bad\\x00byte in caf\\xe9.jpg"


def test_history_json_stays_strict_for_nan_written_by_an_older_version(sqlite_project: Project) -> None:
    import sqlalchemy as sa

    project = sqlite_project
    assert project.runner("run", "echo").returncode == 0
    engine = sa.create_engine(project.database_url)
    with engine.begin() as conn:  # what versions before the encoder stored on SQLite
        conn.execute(sa.text("""UPDATE runs SET result = '{"mean": NaN, "max": Infinity}'"""))
    engine.dispose()

    [run] = strict_history(project)
    assert run["result"] == {"mean": "NaN", "max": "Infinity"}
