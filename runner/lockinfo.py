"""Who holds a lock on a file: read from /proc/locks, for error messages that name the process."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC_LOCKS = Path("/proc/locks")
MAX_NAMED = 3  # processes named in one message
MAX_COMMAND_CHARS = 80


def lock_holders(paths: Iterable[Path]) -> list[str]:
    """'pid N (command line)' for every other process holding a lock on one of these files.

    SQLite takes POSIX locks on the database and its -shm file; runner's writer queue takes a
    flock. Locks of this process, open-file-description locks (pid -1) and files that do not exist
    are left out; on a system without /proc/locks the answer is empty.
    """
    inodes = set()
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        inodes.add((os.major(info.st_dev), os.minor(info.st_dev), info.st_ino))
    if not inodes:
        return []
    try:
        text = PROC_LOCKS.read_text()
    except OSError:
        return []
    pids: list[int] = []
    for line in text.splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except (IndexError, ValueError):
            continue
        if key in inodes and pid > 0 and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    return [f"pid {pid} ({_command(pid)})" for pid in pids[:MAX_NAMED]]


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return " ".join(text.split())[:MAX_COMMAND_CHARS] or "?"  # one line, whatever it holds
