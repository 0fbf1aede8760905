"""Where a process runs (this host, this boot, this PID namespace) and whether a pid there lives:
what a run, a file claim and a lease record of their owner, and what decides that one is gone."""

from __future__ import annotations

import os
import socket
from pathlib import Path

HOSTNAME = socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Is this pid (in our PID namespace) a living process? A zombie is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


def _pid_namespace() -> str:
    """Where a pid means something: this boot of this machine, this PID namespace. Two processes
    with the same host name (containers sharing the host's network) differ here."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown-boot"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{boot}/{namespace}"[:80]


PIDNS = _pid_namespace()
