"""Moving input files without ever losing or overwriting one (used by ingest_images).

A move is a hard link to the new name (atomic, and refused if the name exists), then the unlink of
the old name, with both folders fsync'ed; across file systems it is copy + fsync + link + unlink.
A crash in between leaves the file under both names; `finish_move` recognises that state.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

REASON_SUFFIX = ".reason.txt"
HASH_CHUNK_BYTES = 1 << 20
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EACCES)


def candidates(folder: Path, name: str) -> Iterator[Path]:
    """NAME, then NAME-1.ext, NAME-2.ext, ... in `folder`."""
    yield folder / name
    stem, suffix = os.path.splitext(name)
    number = 1
    while True:
        yield folder / f"{stem}-{number}{suffix}"
        number += 1


def free_name(folder: Path, name: str) -> Path:
    """The first candidate name in `folder` that nothing (not even a dangling symlink) uses."""
    return next(path for path in candidates(folder, name) if not os.path.lexists(path))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_file(src: Path, dst: Path) -> None:
    """Move `src` (a file or a symlink, never followed) to `dst`, which must not exist.

    Raises FileExistsError if `dst` exists; the source is unlinked only once `dst` is durable.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy_then_link(src, dst)
        elif exc.errno in NO_HARD_LINKS:
            _rename_no_replace(src, dst)
            return
        else:
            raise
    fsync_dir(dst.parent)
    os.unlink(src)
    fsync_dir(src.parent)


def _rename_no_replace(src: Path, dst: Path) -> None:
    # A file system without hard links: check, then rename. The name was chosen free by the only
    # writer of this folder (the job's parent process), so the window is theoretical.
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", str(dst))
    os.rename(src, dst)
    fsync_dir(dst.parent)
    fsync_dir(src.parent)


def _copy_then_link(src: Path, dst: Path) -> None:
    temp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # our own leftover from a crashed copy: never an input file
    if os.path.islink(src):
        os.symlink(os.readlink(src), temp)
    else:
        shutil.copy2(src, temp, follow_symlinks=False)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        os.link(temp, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        _rename_no_replace(temp, dst)
    else:
        os.unlink(temp)


def same_content(a: Path, b: Path) -> bool:
    """True if `a` and `b` are one file (hard links) or hold the same bytes."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    if os.path.samestat(sa, sb):
        return True
    if os.path.islink(a) or os.path.islink(b):
        return os.path.islink(a) and os.path.islink(b) and os.readlink(a) == os.readlink(b)
    return sa.st_size == sb.st_size and file_sha256(a) == file_sha256(b)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def finish_move(src: Path, dst: Path, version: tuple[int, int]) -> bool:
    """Complete an interrupted `move_file(src, dst)` of the file whose (size, mtime_ns) was
    `version`; True if `dst` now holds that file, False if `src` is a different file now.

    dst missing -> move src if it is still that version; both present with the same content ->
    the move got as far as the new name, so the old name goes.
    """
    if os.path.lexists(dst):
        if not os.path.lexists(src):
            return True
        if not same_content(src, dst):
            return False
        os.unlink(src)
        fsync_dir(src.parent)
        return True
    try:
        info = os.lstat(src)
    except FileNotFoundError:
        return False
    if (info.st_size, info.st_mtime_ns) != tuple(version):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    move_file(src, dst)
    return True


def quarantine(src: Path, folder: Path, reason: str) -> Path:
    """Move `src` to `folder` with NAME.reason.txt beside it; returns where it went.

    The reason is written first: a crash before the move leaves a reason file for a name that is
    still free, and the rerun reuses that name. A crash between link and unlink (the file under
    both names) is finished rather than quarantined twice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for target in candidates(folder, src.name):
        if not os.path.lexists(target):
            break
        if same_content_inode(src, target):
            os.unlink(src)
            fsync_dir(src.parent)
            return target
    note = target.with_name(target.name + REASON_SUFFIX)
    temp = note.with_name(f".{note.name}.{os.getpid()}.tmp")
    temp.write_text(" ".join(reason.split()) + "\n", encoding="utf-8")
    os.replace(temp, note)
    move_file(src, target)
    return target


def same_content_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except FileNotFoundError:
        return False
