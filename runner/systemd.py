"""systemd integration: sd_notify without a dependency, and the unit file `runner systemd-unit` prints."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import sys
from pathlib import Path

from runner.config import sqlite_path
from runner.errors import ConfigError, RunnerError
from runner.settings import Settings

# A unit file is line-based: a newline or control character in a value would start a new setting.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
# PrivateTmp=yes gives the service its own empty /tmp and /var/tmp: a project there is invisible.
PRIVATE_TMP_FOLDERS = (Path("/tmp"), Path("/var/tmp"))


def notify(message: str) -> bool:
    """Send one sd_notify message (READY=1, WATCHDOG=1, STOPPING=1, ...) if systemd asked for them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec when systemd watches us, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def runner_executable() -> str:
    """The absolute path of this installation's `runner` console script."""
    beside = Path(sys.executable).parent / "runner"
    if beside.exists():
        return str(beside)
    found = shutil.which("runner")
    return str(Path(found).resolve()) if found else f"{sys.executable} -m runner.cli"


def check_user(user: str) -> str:
    """`user` must exist on this machine (cron would silently skip the lines of an unknown one)."""
    try:
        pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise RunnerError(f"--user {user!r}: no such user on this machine") from None
    return user


def _checked(value: str, what: str) -> str:
    if _UNSAFE.search(value):
        raise RunnerError(
            f"{what} {value!r} holds a newline or control character, which a systemd unit cannot carry"
        )
    return value


def _specifiers(value: str) -> str:
    """systemd expands %x specifiers in most settings; %% is a literal %."""
    return value.replace("%", "%%")


def _quoted(value: str, *, command: bool = False) -> str:
    """One word, double-quoted per systemd.syntax(7) ($ too in command lines, where $$ is a $)."""
    text = value.replace("\\", "\\\\").replace('"', '\\"')
    if command:
        text = text.replace("$", "$$")
    if text == value and value and not re.search(r"[\s'\";]", value):
        return _specifiers(text)  # nothing to quote: keep the unit readable
    return '"' + _specifiers(text) + '"'


def writable_paths(settings: Settings) -> tuple[list[str], list[str]]:
    """(folders the daemon itself writes, folders jobs write: watched folders and Path parameters)."""
    runner = settings.runner
    own = sorted({str(runner.var_dir), str(runner.log_dir)})
    database = sqlite_path(runner.database)
    if database is not None and str(database.parent) not in own:
        own.append(str(database.parent))
    jobs: set[str] = set()
    for job in settings.jobs.values():
        if job.watch is not None:
            jobs.update(str(folder) for folder in job.watch.folders)
    jobs.update(str(p) for p in _path_parameters(settings))
    return own, sorted(p for p in jobs if p not in own and not any(p.startswith(o + "/") for o in own))


def _path_parameters(settings: Settings) -> list[Path]:
    """Every Path-typed parameter of a configured job, as the job will see it (configured value or
    default, relative to the config file's folder)."""
    from runner.discovery import discover
    from runner.params import REQUIRED

    catalog = discover(settings)
    found = []
    for name in settings.jobs:
        spec = catalog.jobs.get(name)
        if spec is None:
            continue
        for param in spec.params:
            annotation = param.annotation
            if not _is_path_type(annotation):
                continue
            value = spec.config_params.get(param.name)
            if value is None and param.default not in (REQUIRED, None):
                value = str(param.default)
            if value and value.strip():
                found.append((settings.path.parent / Path(value.strip()).expanduser()).resolve())
    return found


def _is_path_type(annotation: object) -> bool:
    import typing

    candidates = typing.get_args(annotation) or (annotation,)
    return any(isinstance(c, type) and issubclass(c, Path) for c in candidates)


def private_tmp_warning(settings: Settings) -> str | None:
    """A one-line warning when the project lives where PrivateTmp=yes hides it from the service."""
    for folder in (settings.path.parent, settings.runner.var_dir):
        for hidden in PRIVATE_TMP_FOLDERS:
            if folder == hidden or hidden in folder.parents:
                return (
                    f"{folder} is under {hidden}, which PrivateTmp=yes hides from the service "
                    "(it would see an empty folder): move the project, or drop PrivateTmp=yes"
                )
    return None


def render_unit(settings: Settings, *, user_unit: bool, user: str | None = None) -> str:
    """A Type=notify service running `runner daemon` for this config.

    Every path is checked for newlines and quoted and %-escaped per systemd.unit(5)/systemd.syntax(7)."""
    runner = settings.runner
    own, for_jobs = writable_paths(settings)
    config = _checked(str(settings.path), "the config file's path")
    exe = _checked(runner_executable(), "the runner executable's path")
    for path in [*own, *for_jobs]:
        if _UNSAFE.search(path):
            raise ConfigError(
                "holds a newline or control character, which a systemd unit cannot carry", value=path
            )
    if user is not None:
        check_user(user)
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", user):
            raise RunnerError(f"--run-as {user!r}: not a user name systemd accepts")
    workdir = settings.path.parent.parent if settings.path.parent.name == "config" else settings.path.parent
    grace = int(runner.shutdown_grace_s + runner.kill_grace_s + 15)
    # Own folders must exist (the daemon writes there at once); a job's may be created later ("-").
    writable = [_quoted(p) for p in own] + [_quoted("-" + p) for p in for_jobs]
    command = " ".join(_quoted(word, command=True) for word in (exe, "--config", config, "daemon"))
    lines = [
        "[Unit]",
        f"Description={_specifiers(f'runner scheduler daemon ({config})')}",
        "Documentation=" + _specifiers((workdir / "README.md").as_uri()),
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={_specifiers(str(workdir))}",
        "Restart=on-failure",
        "RestartSec=5s",
        "WatchdogSec=60s",
        # SIGTERM goes to the daemon only, which lets running jobs finish (shutdown_grace);
        # whatever is left when TimeoutStopSec runs out is killed with the whole cgroup.
        "KillMode=mixed",
        # Lets the daemon give each run a cgroup of its own, so a job's timeout kills every
        # process it started, even those that left its process group (README: guarantees).
        "Delegate=yes",
        f"TimeoutStopSec={grace}s",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(writable)}",
    ]
    if not user_unit and user:
        lines.append(f"User={user}")
    lines += ["", "[Install]", f"WantedBy={'default.target' if user_unit else 'multi-user.target'}", ""]
    return "\n".join(lines)
