"""The README is the contract: every INI, shell and Python block in README.md (fenced or indented),
and `config/runner.ini` and `crontab.example`, is run in a temporary copy of the project.

* An INI block passes `runner check`: absolute paths are swapped for temp folders (created), a
  `uses =` that does not resolve is stubbed by a function taking the section's parameters, and a
  block without a section header is a list of choices, each checked alone in a `[job:...]` section.
* A shell line runs with `bash` from the project's folder with the venv's `bin` on PATH and must
  exit 0 without a traceback; a line marked `[not run in tests]` is only checked for syntax
  (`bash -n`) and each `runner` command in it for `--help`.
* An indented block of `runner: ...` lines is an error message: the test makes it happen.
* The Python block is written where its first-line comment says, passes the project's `ruff check`,
  and runs.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import COMMAND_TIMEOUT_S, RUNNER_BIN

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
NOT_RUN = "[not run in tests]"
SHELL_LANGS = ("sh", "bash", "shell", "console")
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])/(?:srv|data|mnt|opt|home)(?:/[\w.-]+)+")
# The README shows error messages as a user sees them, from a project in /home/you/app.
SHOWN_ROOT = "/home/you/app"
# Each error message the README shows, and how to make it happen: (INI text, runner arguments).
ERROR_EXAMPLES = {
    "[job:x] timeout = 'ten'": ("[job:x]\ntimeout = ten\n", ["check"]),
    "[job:x] url = 'ftp://files.example.com/orders.json'": (
        "[job:x]\nuses = jobs.poll_api:poll_api\nurl = ftp://files.example.com/orders.json\n",
        ["check"],
    ),
}
# The environment variables the README's INI examples name (${env:...}), as a user would export them.
README_ENV = {
    "ORDERS_API_TOKEN": "readme-example-token",
    "NOTIFY_SMTP_PASSWORD": "readme-example-password",
    "SLACK_WEBHOOK_PATH": "T000/B000/readme-example",
    "EXPORT_CHECK_UUID": "0e1f2a3b-readme-example",
}


@dataclass(frozen=True)
class Block:
    kind: str  # ini | shell | python | output
    text: str
    line: int  # 1-based line in the file where the block starts

    def __repr__(self) -> str:
        return f"README.md:{self.line} ({self.kind})"


def readme_blocks(path: Path = README) -> list[Block]:
    """Every fenced block (by its language) and every indented block (shell, or error output)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    at = 0
    while at < len(lines):
        line = lines[at]
        fence = re.match(r"^(```+)\s*(\w*)", line)
        if fence:
            end = next(i for i in range(at + 1, len(lines)) if lines[i].startswith(fence.group(1)))
            lang = fence.group(2).lower()
            kind = "shell" if lang in SHELL_LANGS else lang or "text"
            blocks.append(Block(kind, "\n".join(lines[at + 1 : end]) + "\n", at + 2))
            at = end + 1
            continue
        if line.startswith("    ") and line.strip() and (at == 0 or not lines[at - 1].strip()):
            end = at
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = [text[4:] for text in lines[at:end]]
            while body and not body[-1].strip():
                body.pop()
            text = "\n".join(body) + "\n"
            kind = "output" if all(b.startswith("runner: ") for b in body if b.strip()) else "shell"
            blocks.append(Block(kind, text, at + 1))
            at = end
            continue
        at += 1
    return blocks


BLOCKS = readme_blocks()


def blocks_of(kind: str) -> list[Block]:
    return [b for b in BLOCKS if b.kind == kind]


def test_every_block_is_a_kind_the_test_runs() -> None:
    kinds = {b.kind for b in BLOCKS}
    assert kinds <= {"ini", "shell", "python", "output"}, [b for b in BLOCKS if b.kind not in kinds]
    assert blocks_of("ini") and blocks_of("shell") and blocks_of("python") and blocks_of("output")


# --- a temporary copy of the project ----------------------------------------------------------------


class Copy:
    """config/, jobs/ (shadowing the installed package) and crontab.example in a temp folder; every
    command runs from there with the venv's bin first on PATH, as the README says."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(REPO / "config", root / "config")
        shutil.copytree(REPO / "jobs", root / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "crontab.example", root / "crontab.example")
        self.stubs = root / "readme_stubs"
        self.stubs.mkdir()
        (self.stubs / "__init__.py").write_text("")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RUNNER_CONFIG", "PYTHONPATH")}
        env["PATH"] = f"{RUNNER_BIN.parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(self.root)
        env.update(README_ENV)
        return env

    def bash(self, script: str, *check: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", *check, "-c", script],
            capture_output=True,
            text=True,
            cwd=self.root,
            env=self.env(),
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )

    def runner(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.bash(shlex.join(["runner", *args]))

    def swap_paths(self, text: str) -> str:
        """/srv/inbox -> ROOT/abs/srv/inbox (created): an example's folders exist, in the temp copy."""

        def swap(match: re.Match[str]) -> str:
            folder = self.root / "abs" / match.group().lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder)

        return ABSOLUTE_PATH.sub(swap, text)


@pytest.fixture
def copy(tmp_path: Path) -> Copy:
    return Copy(tmp_path / "app")


def done_ok(done: subprocess.CompletedProcess[str], what: str) -> None:
    shown = f"{what}\n--- exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, shown
    assert "Traceback" not in done.stdout + done.stderr, shown


# --- INI -----------------------------------------------------------------------------------------------


def ini_sections(text: str) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        header = re.match(r"^\[(.+)\]\s*$", line)
        if header:
            sections.append((header.group(1), []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def key_groups(lines: list[str]) -> list[str]:
    """`key = value` lines with their indented continuation lines, one string each."""
    groups: list[str] = []
    for line in lines:
        if line[:1].isspace() and groups and line.strip():
            groups[-1] += "\n" + line
        elif line.strip() and not line.lstrip().startswith(("#", ";")):
            groups.append(line)
    return groups


def resolves(target: str) -> bool:
    module, _, attr = target.partition(":")
    try:
        return hasattr(importlib.import_module(module), attr) if attr else True
    except ImportError:
        return False


def stub_sections(copy: Copy, text: str, name: str) -> str:
    """Point each job section whose function does not exist at a stub taking its parameters."""
    from runner.config import JOB_KEYS

    out: list[str] = []
    functions: list[str] = []
    for section, lines in ini_sections(text):
        groups = key_groups(lines)
        if section.startswith("job:"):
            keys = {g.split("=", 1)[0].strip().lower(): g.split("=", 1)[1] for g in groups}
            uses = re.sub(r"\s[;#].*", "", keys.get("uses", "")).strip()
            if not (uses and resolves(uses)) and not (
                not uses and resolves(f"jobs.{section[4:]}:{section[4:]}")
            ):
                function = re.sub(r"\W", "_", section[4:])
                params = [k for k in keys if k not in JOB_KEYS]
                signature = ", ".join(f"{p}: str = ''" for p in params)
                functions.append(f"@job\ndef {function}({signature}) -> None:\n    pass\n")
                groups = [g for g in groups if g.split("=", 1)[0].strip().lower() != "uses"]
                groups.insert(0, f"uses = readme_stubs.{name}:{function}")
        out.append(f"[{section}]\n" + "\n".join(groups) + "\n")
    (copy.stubs / f"{name}.py").write_text("from runner import job\n\n\n" + "\n\n".join(functions))
    return "\n".join(out)


def check_ini(copy: Copy, text: str, name: str) -> None:
    text = copy.swap_paths(text)
    if not text.lstrip().startswith("[runner]") and "\n[runner]" not in text:
        text = "[runner]\nvar_dir = ../var\n\n" + text
    config = copy.root / "config" / f"{name}.ini"
    config.write_text(stub_sections(copy, text, name))
    done = copy.runner("--config", str(config), "check")
    done_ok(done, f"runner check of:\n{config.read_text()}")
    assert done.stderr == "", done.stderr


@pytest.mark.parametrize("block", blocks_of("ini"), ids=repr)
def test_ini_block_passes_runner_check(copy: Copy, block: Block) -> None:
    if ini_sections(block.text):
        check_ini(copy, block.text, f"readme_{block.line}")
        return
    # A list of choices for one job section: each alone.
    for index, choice in enumerate(key_groups(block.text.splitlines())):
        check_ini(copy, f"[job:choice]\n{choice}\n", f"readme_{block.line}_{index}")


def test_shipped_config_passes_runner_check(copy: Copy) -> None:
    done = copy.runner("check")

    done_ok(done, "runner check of config/runner.ini")


def test_shipped_config_with_the_watch_line_its_comment_suggests(copy: Copy) -> None:
    config = copy.root / "config" / "runner.ini"
    config.write_text(
        config.read_text().replace("inbox = ../var/inbox", "inbox = ../var/inbox\nwatch = ../var/inbox")
    )
    (copy.root / "var" / "inbox").mkdir(parents=True)

    done_ok(copy.runner("check"), "runner check with watch = ../var/inbox")


# --- shell ---------------------------------------------------------------------------------------------


def runner_commands(line: str) -> list[list[str]]:
    """The `runner ...` commands in a shell line (split on && | ;), without comment, `env` or redirections."""
    words = shlex.split(line, comments=True)
    commands, current = [], []
    for word in [*words, "&&"]:
        if word in ("&&", "||", "|", ";"):
            while current and (Path(current[0]).name == "env" or re.fullmatch(r"\w+=.*", current[0])):
                current.pop(0)  # `env PATH=... runner ...`
            if current and Path(current[0]).name == "runner":
                commands.append(current[1:])
            current = []
        elif not re.match(r"\d*>|<", word):  # redirections
            current.append(word)
    return commands


def help_args(args: list[str]) -> list[str]:
    """`run hello -p count=2` -> `run hello --help`; `crontab install --file X` -> `crontab install --help`."""
    words = [a for a in args if not a.startswith("-")]
    depth = 2 if words[:1] in (["run"], ["crontab"], ["db"]) else 1
    return [*words[:depth], "--help"]


def test_shell_blocks_run_as_written(copy: Copy, crontab_lock: None) -> None:
    """Every shell line of the README, in order, in one project: exit 0, no traceback."""
    ran = 0
    try:
        for block in blocks_of("shell"):
            for offset, line in enumerate(block.text.splitlines()):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                where = f"README.md:{block.line + offset}: {line.strip()}"
                if NOT_RUN in line:
                    done_ok(copy.bash(line, "-n"), f"{where} (syntax)")
                    for args in runner_commands(line):
                        done_ok(copy.runner(*help_args(args)), f"{where} (--help)")
                    continue
                # Without a crontab command (test_crontab.py installs cron where it may): --help.
                words = line.split()
                changes_crontab = words[:2] == ["runner", "crontab"] and words[2:3] in (
                    ["install"],
                    ["remove"],
                )
                if changes_crontab and not shutil.which("crontab"):
                    done_ok(copy.runner(*words[1:3], "--help"), f"{where} (no crontab here: --help)")
                    continue
                done_ok(copy.bash(copy.swap_paths(line)), where)
                ran += 1
    finally:
        if shutil.which("crontab"):
            copy.runner("crontab", "remove")  # whatever happened, our block leaves the real crontab
    assert ran >= 15, f"only {ran} README commands ran"


def test_readme_crontab_commands_leave_the_crontab_as_it_was(copy: Copy, crontab_lock: None) -> None:
    if not shutil.which("crontab"):
        pytest.skip("no crontab command on this machine")
    before = subprocess.run(["crontab", "-l"], capture_output=True, text=True)

    installed = copy.runner("crontab", "install")
    listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    removed = copy.runner("crontab", "remove")
    after = subprocess.run(["crontab", "-l"], capture_output=True, text=True)

    done_ok(installed, "crontab install")
    done_ok(removed, "crontab remove")
    assert str(copy.root / "config" / "runner.ini") in listed.stdout
    assert after.stdout == before.stdout


# --- error output --------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of("output"), ids=repr)
def test_error_message_example_is_what_runner_prints(copy: Copy, block: Block) -> None:
    key = next((k for k in ERROR_EXAMPLES if k in block.text), None)
    assert key, f"{block}: no recipe in ERROR_EXAMPLES makes this message happen:\n{block.text}"
    jobs, args = ERROR_EXAMPLES[key]
    config = copy.root / "config" / "runner.ini"
    config.write_text(config.read_text() + "\n" + jobs)

    done = copy.runner(*args)

    assert done.returncode == 2, done
    shown = done.stderr.replace(str(copy.root), SHOWN_ROOT)
    assert shown == block.text, f"README shows:\n{block.text}\nrunner printed:\n{shown}"


# --- Python --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of("python"), ids=repr)
def test_python_block_passes_ruff_and_runs(copy: Copy, block: Block) -> None:
    first = block.text.splitlines()[0]
    target = re.fullmatch(r"# (jobs/\w+\.py)", first)
    assert target, f"{block}: the first line names the file, like `# jobs/cleanup.py`"
    path = copy.root / target.group(1)
    path.write_text(block.text)

    ruff = subprocess.run(
        [
            str(Path(sys.executable).parent / "ruff"),
            "check",
            "--config",
            str(REPO / "pyproject.toml"),
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    if path.stem == "cleanup":
        exports = copy.root / "exports"
        exports.mkdir()
        for name, age_days in (("old.csv", 40), ("new.csv", 1), ("old.txt", 40)):
            (exports / name).write_text("x")
            stamp = time.time() - age_days * 86400
            os.utime(exports / name, (stamp, stamp))
        dry = copy.bash(f"python -m jobs.cleanup --folder {exports} --dry-run")
        real = copy.runner("run", "cleanup", "-p", f"folder={exports}", "--json")
        done_ok(dry, "python -m jobs.cleanup --dry-run")
        done_ok(real, "runner run cleanup")
        assert '"removed": 1' in dry.stdout, dry.stdout
        assert sorted(p.name for p in exports.iterdir()) == ["new.csv", "old.txt"]


# --- crontab.example -------------------------------------------------------------------------------


def test_crontab_example_lines_run(copy: Copy) -> None:
    """crontab.example with its /path/to placeholders filled in: the @reboot line runs, the job
    line's command is valid shell and its runner command parses."""
    venv = RUNNER_BIN.parent.parent
    text = (copy.root / "crontab.example").read_text()
    text = text.replace("/path/to/.venv", str(venv)).replace("/path/to", str(copy.root))
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines, "crontab.example has no lines"
    for line in lines:
        command = line.split(None, 1)[1] if line.startswith("@") else line.split(None, 5)[5]
        done_ok(copy.bash(command, "-n"), f"crontab.example: {line} (syntax)")
        (copy.root / "var" / "log" / "cron").mkdir(parents=True, exist_ok=True)
        if line.startswith("@reboot"):
            done_ok(copy.bash(command), f"crontab.example: {line}")
        else:
            args = [a for a in runner_commands(command)[0] if a != "--from-cron"]
            done_ok(copy.runner(*args, "--help"), f"crontab.example: {line} (--help)")
