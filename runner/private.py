"""Files we keep under var/ (run logs, crontab backups) are private: folders 0700, files 0600.

They hold job output and copies of the user's crontab, which often carry passwords, so they are
created private whatever the umask, and folders that an older version left readable are tightened
(with the files in them) the first time this version uses them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: Path, *, tighten: bool = True) -> Path:
    """Create `path` (and missing parents) 0700; with `tighten`, an existing folder of ours that is
    readable by others becomes 0700 and its files 0600. Shared folders (sticky, like /tmp, or
    owned by someone else) are never changed."""
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(created, FOLDER_MODE)
            os.chmod(created, FOLDER_MODE)  # the umask may have taken bits away; never added
    if tighten and not missing:
        _tighten(path)
    return path


def _tighten(folder: Path) -> None:
    try:
        st = os.stat(folder)
    except OSError:
        return
    if st.st_uid != os.geteuid() or st.st_mode & stat.S_ISVTX or stat.S_IMODE(st.st_mode) == FOLDER_MODE:
        return
    with contextlib.suppress(OSError):
        os.chmod(folder, FOLDER_MODE)
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, FILE_MODE)


def open_private(path: Path, flags: int) -> int:
    """os.open with O_CREAT and mode 0600; an existing file readable by others is made 0600."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)
    return fd


def write_private(path: Path, text: str) -> Path:
    """Write a new private file (refuses to follow or replace an existing one)."""
    fd = open_private(path, os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
