"""systemd integration: sd_notify without a dependency, and the unit file `runner systemd-unit` prints."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from runner.config import Settings


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


def render_unit(settings: Settings, *, user_unit: bool, user: str | None = None) -> str:
    """A Type=notify service running `runner daemon` for this config."""
    runner = settings.runner
    writable = sorted({str(runner.var_dir), str(runner.log_dir)})
    if runner.database.startswith("sqlite"):
        db_dir = str(Path(runner.database.split(":///", 1)[1].split("?", 1)[0]).parent)
        if db_dir not in writable:
            writable.append(db_dir)
    workdir = settings.path.parent.parent if settings.path.parent.name == "config" else settings.path.parent
    grace = int(runner.shutdown_grace_s + runner.kill_grace_s + 15)
    lines = [
        "[Unit]",
        f"Description=runner scheduler daemon ({settings.path})",
        "Documentation=file://" + str(workdir / "README.md"),
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={runner_executable()} --config {settings.path} daemon",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={workdir}",
        "Restart=on-failure",
        "RestartSec=5s",
        "WatchdogSec=60s",
        # SIGTERM goes to the daemon only, which lets running jobs finish (shutdown_grace);
        # whatever is left when TimeoutStopSec runs out is killed with the whole cgroup.
        "KillMode=mixed",
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
