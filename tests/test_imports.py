"""Cheap to start: a crontab line pays for every import, so the engine and a trivial run must not
import the heavy libraries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import COMMAND_TIMEOUT_S, TESTS_DIR, Project

HEAVY_MODULES = ("numpy", "PIL", "requests", "apscheduler", "watchdog", "matplotlib", "prometheus_client")
PACKAGE_DIR = TESTS_DIR.parent / "runner"


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


def runner_modules() -> dict[str, Path]:
    """Every module of the `runner` package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, module: str, modules: dict[str, Path]) -> dict[str, set[str]]:
    """{imported runner module: the names taken from it} for every import that runs, at the top
    or inside a function (a lazy import still ties the two modules); `if TYPE_CHECKING:` never runs."""
    edges: dict[str, set[str]] = {}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                edges.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    edges.setdefault(submodule, set())
                else:
                    edges.setdefault(base, set()).add(alias.name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name: names for name, names in edges.items() if name in modules and name != module}


def import_graph() -> dict[str, dict[str, set[str]]]:
    modules = runner_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                found.append(sorted([node, *group]))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_the_engine_has_no_import_cycle() -> None:
    """No cycle anywhere, and the CLI imports the engine, never the other way: `runner.main()`
    (the `python -m jobs.NAME` entry point of the public API) is the one place that hands over to
    the CLI."""
    graph = import_graph()
    is_cli = lambda name: name == "runner.cli" or name.startswith("runner.cli.")  # noqa: E731
    into_cli = {name for name, targets in graph.items() if not is_cli(name) and any(map(is_cli, targets))}
    assert into_cli <= {"runner"}
    assert cycles(graph) == []


def test_config_uses_only_the_public_names_of_triggers_and_never_watch() -> None:
    imported = import_graph()["runner.config"]
    assert "runner.watch" not in imported
    assert not [name for name in imported.get("runner.triggers", ()) if name.startswith("_")]
