"""Ingest images from an inbox: check, measure, thumbnail and record each one, then move it to
processed/YYYY/MM/DD/, or to quarantine/ with NAME.reason.txt beside it. Nothing is deleted.

Crash-safety protocol. Invariant: every input file is in exactly one of inbox / processed /
quarantine, and every file in processed/ has exactly one row in `images`.

1. Measure. A worker reads the file (refusing symlinks, over max_bytes), decodes, measures and
   thumbnails it from the bytes in memory. The thumbnail goes to a temp name, then is renamed to
   thumbs/ab/SHA256.webp: derived data, rewritten freely. No database write, no move yet.
2. Reserve. The parent checks the file is still the version that was read, picks a free name in
   processed/YYYY/MM/DD/ and, in ONE transaction, inserts the row in state 'moving' with that
   name (processed_path is unique: two rows can never reserve one name).
3. Move. Hard link to the reserved name (atomic, refused if taken), fsync, unlink the inbox name,
   fsync; across file systems, copy + fsync + link first. Then the row becomes 'done'.
4. Reconcile, at the start of every run and before each file: a 'moving' row whose file is still
   in the inbox finishes its move to the reserved name (a file under both names, the same inode or
   the same bytes, loses its inbox name); a 'moving' row whose processed file exists is 'done'.
   A crash before step 2 leaves the file in the inbox and no row: it is measured again.
5. Quarantine. NAME.reason.txt is written first, then the file is moved beside it; a rerun reuses
   the same free name (rewriting the reason) or finishes a half-done link. Then a row in
   `quarantined` records it with its SHA-256, so the same content sent again is recognised (a crash
   before that row costs only that recognition).
The only unlink of an input name is in step 3/4/5, once the same file is durable under its new name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from jobs import _filemoves as moves
from jobs._cleanlog import clean_log
from jobs._imaging import FORMATS, Failed, Limits, Measured, analyse, check_formats, hamming
from runner import JobContext, JobTables, job, main

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000  # about 200 MB decoded as RGBA: what a small server can hold per worker
DEFAULT_THUMB_SIZE = 256
DEFAULT_FILE_TIMEOUT_S = 60.0
# A batch is safe to stop anywhere (the next run goes on from there): an hour bounds a stuck run.
DEFAULT_TIMEOUT = "1h"
IN_FLIGHT_PER_WORKER = 2  # files handed to the pool ahead of the one being recorded
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".swp", "~")  # uploads still being written
MOVING, DONE, LOST = "moving", "done", "lost"
MAX_NAME_TRIES = 1000
QUARANTINE_HASH_MAX_BYTES = 1 << 30  # a refused file larger than this is not read to compare it
NEAR_RECENT_FOLD = 256  # hashes compared one by one before they join the NumPy array

metadata = sa.MetaData()

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # moving | done | lost
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("source_size", sa.BigInteger, nullable=False),
    sa.Column("source_mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("processed_path", sa.Text, nullable=False),
    sa.Column("duplicate_of", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
    sa.Column("near_duplicate_of", sa.Integer, sa.ForeignKey("images.id"), nullable=True),
    sa.Column("near_distance", sa.Integer, nullable=True),
    sa.Column("near_unlinked", sa.Text, nullable=True),  # why it was not compared for near duplicates
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("byte_size", sa.BigInteger, nullable=False),
    sa.Column("captured_at", sa.DateTime, nullable=True),  # EXIF: the camera's local time, no zone
    sa.Column("channel_means", sa.JSON, nullable=False),
    sa.Column("channel_stds", sa.JSON, nullable=False),
    sa.Column("brightness", sa.JSON, nullable=False),
    sa.Column("dhash", sa.BigInteger, nullable=False),  # signed 64-bit
    sa.Column("thumbnail_path", sa.Text, nullable=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("ingested_at", sa.DateTime, nullable=False),  # UTC
    sa.UniqueConstraint("processed_path", name="uq_images_processed_path"),
    sa.Index("ix_images_sha256", "sha256"),
    sa.Index("ix_images_state", "state"),
)
# Every file quarantined, with the SHA-256 of its content when it is a regular file: a file sent
# again says so in its reason, and `same_as` points at the first quarantined copy.
quarantined = sa.Table(
    "quarantined",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sha256", sa.String(64), nullable=True),  # None: a symlink, a device, over the hash limit
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("quarantine_path", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("same_as", sa.Integer, sa.ForeignKey("quarantined.id"), nullable=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("quarantined_at", sa.DateTime, nullable=False),  # UTC
    sa.Index("ix_quarantined_sha256", "sha256"),
)
TABLES = JobTables(  # the job creates its own tables, and brings older ones up to date
    "ingest_images",
    metadata,
    version=3,
    upgrades={
        2: lambda conn: conn.execute(sa.text("ALTER TABLE images ADD COLUMN near_unlinked TEXT")),
        3: lambda conn: quarantined.create(conn, checkfirst=True),
    },
)


@job(watch_param="inbox", timeout=DEFAULT_TIMEOUT)
def ingest_images(
    ctx: JobContext,
    inbox: Path,
    processed: Path | None = None,
    quarantine: Path | None = None,
    thumbs: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    thumb_format: str = "webp",
    near_duplicate_bits: int = 6,
    workers: int = 0,
    formats: str = ", ".join(FORMATS),
    file_timeout: float = DEFAULT_FILE_TIMEOUT_S,
) -> dict[str, Any]:
    """Check, measure, thumbnail and record the images in INBOX, then move each one on.

    Args:
        inbox: where images arrive (in a section with `watch =`, the watched folder).
        processed: where good images go, in YYYY/MM/DD folders (default: INBOX/../processed).
        quarantine: where bad files go, each with NAME.reason.txt (default: INBOX/../quarantine).
        thumbs: where thumbnails go (default: INBOX/../thumbs).
        max_bytes: larger files are quarantined.
        max_pixels: images declaring more pixels are quarantined as possible decompression bombs.
        thumb_size: the longest side of a thumbnail, in pixels.
        thumb_format: webp or jpeg.
        near_duplicate_bits: dHash Hamming distance up to which an image is linked as a near-duplicate.
        workers: processes decoding images (0 = one per CPU).
        formats: the image formats taken (Pillow's names, comma-separated); a file in another
            one is quarantined with a reason naming its format.
        file_timeout: seconds one file may take to decode and measure; a file over it is
            quarantined and its decoding process replaced.
    """
    started = time.monotonic()
    thumb_format = {"jpg": "jpeg"}.get(thumb_format.strip().lower(), thumb_format.strip().lower())
    if thumb_format not in ("webp", "jpeg"):
        raise ValueError(f"thumb_format = {thumb_format!r}: expected webp or jpeg")
    if min(max_bytes, max_pixels, thumb_size, file_timeout) <= 0 or near_duplicate_bits < 0 or workers < 0:
        raise ValueError(
            "max_bytes, max_pixels, thumb_size and file_timeout must be positive; "
            "workers, near_duplicate_bits >= 0"
        )
    accepted = check_formats(formats.replace(",", " ").split())
    inbox = Path(os.path.abspath(inbox))
    folders = Folders(
        inbox=inbox,
        processed=Path(os.path.abspath(processed or inbox.parent / "processed")),
        quarantine=Path(os.path.abspath(quarantine or inbox.parent / "quarantine")),
        thumbs=Path(os.path.abspath(thumbs or inbox.parent / "thumbs")),
    )
    if not inbox.is_dir():
        raise FileNotFoundError(f"inbox {inbox} is not a folder; create it or set inbox to another one")
    paths = [Path(os.path.abspath(p)) for p in ctx.fire.paths] if ctx.fire.paths else list_inbox(inbox)
    if paths:  # an empty run leaves no folders behind
        for folder in (folders.processed, folders.quarantine, folders.thumbs):
            folder.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    limits = Limits(max_bytes, max_pixels, thumb_size, thumb_format, accepted)
    # Decoders (libtiff) print to stderr, Pillow warns: every line of the run log gets its prefix.
    with clean_log(ctx.log):
        feed = Feed(paths, limits, folders, workers, file_timeout, ctx.log)
        finished = False
        try:
            ingest = Ingest(ctx, folders, limits, near_duplicate_bits)
            try:
                ingest.reconcile_finished()
                walk = ctx.files() if ctx.fire.paths else iter(paths)
                for path in ctx.progress(walk, total=len(paths), label="ingest_images"):
                    ingest.handle(Path(os.path.abspath(path)), feed)
                finished = True
            finally:
                ingest.finish()
        finally:
            feed.close(wait=finished)
    summary = ingest.summary(time.monotonic() - started, workers)
    ctx.log.info(
        "ingest_images: %(processed)d processed (%(duplicates)d duplicates, %(near_duplicates)d near), "
        "%(quarantined)d quarantined, %(skipped)d skipped, %(bytes)d bytes in %(seconds).1fs",
        summary,
    )
    if paths and ingest.left_alone == len(paths):
        # Every file it was given was left where it was: that is a misconfiguration, not a success.
        raise RuntimeError(f"left all {len(paths)} files alone; the first: {ingest.first_left_alone}")
    return summary


@dataclass(frozen=True, slots=True)
class Folders:
    inbox: Path
    processed: Path
    quarantine: Path
    thumbs: Path


def content_sha256(path: Path) -> str | None:
    """SHA-256 of a regular file (never through a symlink), or None; over the limit it is not read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > QUARANTINE_HASH_MAX_BYTES:
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, moves.HASH_CHUNK_BYTES):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def list_inbox(inbox: Path) -> list[Path]:
    """The inbox's files and symlinks (not folders), oldest name first, skipping uploads in progress."""
    found = []
    with os.scandir(inbox) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(TEMP_SUFFIXES):
                continue
            if entry.is_dir(follow_symlinks=False):
                continue
            found.append(inbox / entry.name)
    return sorted(found)


def start_pool(workers: int) -> Any:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init
    )
    pool.submit(int).result()  # a fork pool starts all its workers on the first task: start them now
    return pool


def _worker_init() -> None:
    import signal

    # SIGTERM keeps its default: ProcessPoolExecutor terminates the survivors of a broken pool with
    # it (an ignoring worker made its manager thread spin forever). A stop that kills the workers
    # only costs the file in hand: the parent retries it, or stops at the file boundary.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Feed:
    """Hands files to the decoding processes ahead of the parent, and gives back each file's
    outcome when the parent asks for it (in the batch's order, so the next ones are in flight).

    A file whose outcome takes longer than `file_timeout_s` to come (counted from when the parent
    starts waiting for it, so it had at least that long) is refused, and the decoding processes
    are replaced: the one working on it may never finish. Files in flight are handed out again.
    """

    def __init__(
        self,
        paths: list[Path],
        limits: Limits,
        folders: Folders,
        workers: int,
        file_timeout_s: float,
        log: Any,
    ) -> None:
        self.paths, self.limits, self.folders = paths, limits, folders
        self.workers, self.file_timeout_s, self.log = workers, file_timeout_s, log
        self.position = {path: index for index, path in enumerate(paths)}
        self.ahead = workers * IN_FLIGHT_PER_WORKER
        self.futures: dict[int, Future] = {}
        self.submitted = 0
        # The pool forks before anything else opens a database connection or starts a thread.
        self.pool = start_pool(workers) if paths else None

    def _submit(self, path: Path) -> Future:
        return self.pool.submit(analyse, str(path), self.limits, str(self.folders.thumbs))

    def outcome(self, path: Path) -> Measured | Failed:
        if self.pool is None:
            return analyse(str(path), self.limits, str(self.folders.thumbs))
        from concurrent.futures.process import BrokenProcessPool

        index = self.position.get(path)
        try:
            if index is None:  # not in the batch it was given: measured on its own
                future = self._submit(path)
            else:
                while self.submitted < min(len(self.paths), index + 1 + self.ahead):
                    self.futures[self.submitted] = self._submit(self.paths[self.submitted])
                    self.submitted += 1
                future = self.futures.pop(index, None) or self._submit(path)
            return future.result(timeout=self.file_timeout_s)
        except TimeoutError:
            return self._too_slow(path)
        except BrokenProcessPool:
            return self._isolate(path)

    def discard(self, path: Path) -> None:
        """`path` needs no measuring (refused, vanished, or finished from a crash)."""
        index = self.position.get(path)
        if index is None:
            return
        future = self.futures.pop(index, None)
        if future is not None:
            future.cancel()
        self.submitted = max(self.submitted, index + 1)

    def _too_slow(self, path: Path) -> Failed:
        self.log.warning(
            "%s took longer than file_timeout = %gs; replacing the decoding processes",
            path.name,
            self.file_timeout_s,
        )
        self._replace_pool(kill=True)
        self._resubmit()
        return Failed(
            f"decoding it took longer than file_timeout = {self.file_timeout_s:g}s, so it was stopped; "
            "if it is a real image (a very large one, a slow machine), raise file_timeout"
        )

    def _isolate(self, path: Path) -> Measured | Failed:
        """A worker died (a crash in native code, the OOM killer): retry this file alone."""
        from concurrent.futures.process import BrokenProcessPool

        self.log.warning("a decoding process died; retrying %s on its own", path.name)
        self._replace_pool()
        try:
            outcome = self._submit(path).result(timeout=self.file_timeout_s)
        except TimeoutError:
            return self._too_slow(path)
        except BrokenProcessPool:
            self._replace_pool()
            outcome = Failed(
                "it crashed the image decoder (the worker process died); report this file, do not retry it"
            )
        self._resubmit()
        return outcome

    def _replace_pool(self, *, kill: bool = False) -> None:
        if kill:  # a worker stuck in native code never looks at a cancelled future
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.kill()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = start_pool(self.workers)

    def _resubmit(self) -> None:
        """Files that were in flight in the old pool go to the new one."""
        for later in sorted(self.futures):
            self.futures[later] = self._submit(self.paths[later])

    def close(self, *, wait: bool) -> None:
        """Stop the decoding processes; with `wait`, let each finish what it holds (within
        file_timeout), so what they print is in the run log before the job ends."""
        if self.pool is None:
            return
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes if wait else ():
            process.join(self.file_timeout_s)
            if process.is_alive():
                process.kill()


class NearIndex:
    """dHashes of the first copy of every image, for near-duplicate lookup by Hamming distance.

    Counts bits with a byte table, not `np.bitwise_count` (NumPy >= 2 only): NumPy 1.26 is supported.
    """

    def __init__(self, rows: list[tuple[int, int]]) -> None:
        import numpy as np

        self.ids = np.array([row[0] for row in rows], dtype=np.int64)
        self.hashes = np.array([row[1] for row in rows], dtype=np.int64).view(np.uint64)
        self.recent: list[tuple[int, int]] = []
        self.bits_in_byte = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)

    def nearest(self, value: int, within: int) -> tuple[int, int] | None:
        import numpy as np

        best: tuple[int, int] | None = None
        if len(self.ids):
            target = np.array([value], dtype=np.int64).view(np.uint64)[0]
            differ = (self.hashes ^ target).view(np.uint8).reshape(-1, 8)
            distances = self.bits_in_byte[differ].sum(axis=1, dtype=np.int64)
            where = int(np.argmin(distances))
            best = (int(distances[where]), int(self.ids[where]))
        for row_id, other in self.recent:
            candidate = (hamming(value, other), row_id)
            if best is None or candidate < best:
                best = candidate
        if best is None or best[0] > within:
            return None
        return best[1], best[0]

    def add(self, row_id: int, value: int) -> None:
        self.recent.append((row_id, value))
        if len(self.recent) >= NEAR_RECENT_FOLD:  # a long batch: compare in NumPy, not in a loop
            import numpy as np

            ids, hashes = zip(*self.recent, strict=True)
            self.ids = np.concatenate([self.ids, np.array(ids, dtype=np.int64)])
            added = np.array(hashes, dtype=np.int64).view(np.uint64)
            self.hashes = np.concatenate([self.hashes, added])
            self.recent = []


def featureless(value: int, near_bits: int) -> str | None:
    """Why a dHash says nothing about similarity, or None. A flat, tiny or featureless picture
    hashes to (almost) no set bits; all hashes with at most near_bits/2 bits set lie within
    near_bits of each other, so linking on them would make every such picture a near duplicate."""
    ones = hamming(value, 0)
    if ones > near_bits // 2:
        return None
    return (
        f"its dHash has {ones} of 64 bits set (a flat, tiny or featureless picture), "
        "which says nothing about similarity: not compared for near duplicates"
    )


class Ingest:
    """The parent's side: reconciling, recording, moving, counting."""

    def __init__(self, ctx: JobContext, folders: Folders, limits: Limits, near_bits: int) -> None:
        self.ctx, self.folders, self.limits, self.near_bits = ctx, folders, limits, near_bits
        self.counts = dict.fromkeys(
            ("processed", "duplicates", "near_duplicates", "quarantined", "skipped", "recovered", "bytes"), 0
        )
        self.inbox_real = folders.inbox.resolve()
        self.left_alone, self.first_left_alone = 0, ""  # skipped for a reason other than vanishing
        self.moved: list[int] = []  # rows whose file is in processed/, still 'moving' in the database
        TABLES.ensure(ctx)
        with ctx.engine.connect() as conn:
            rows = conn.execute(
                sa.select(images.c.id, images.c.dhash)
                .where(images.c.duplicate_of.is_(None), images.c.state != LOST)
                .order_by(images.c.id)
            ).all()
            moving = conn.execute(
                sa.select(
                    images.c.id,
                    images.c.source_path,
                    images.c.processed_path,
                    images.c.source_size,
                    images.c.source_mtime_ns,
                ).where(images.c.state == MOVING)
            ).all()
        self.near = NearIndex([(row.id, row.dhash) for row in rows if not featureless(row.dhash, near_bits)])
        self.moving = {
            row.source_path: (row.id, Path(row.processed_path), (row.source_size, row.source_mtime_ns))
            for row in moving
        }

    # -- reconciling a crashed run
    def reconcile_finished(self) -> None:
        """'moving' rows whose inbox file is gone: done if the processed file is there, else lost."""
        for source, (row_id, target, _) in list(self.moving.items()):
            if os.path.lexists(source):
                continue  # finished when its file comes up (it may belong to another run's batch)
            if os.path.lexists(target):
                self._set_state(row_id, DONE)
            else:
                self.ctx.log.warning(
                    "row %d: %s vanished from the inbox before its move; marked lost", row_id, source
                )
                self._set_state(row_id, LOST)
            del self.moving[source]

    def _finish_interrupted(self, path: Path) -> bool:
        """Finish a move a crashed run started for `path`; True if nothing is left to do for it."""
        row_id, target, version = self.moving.pop(str(path))
        if os.path.lexists(target) and not moves.same_content(path, target):
            self._set_state(row_id, DONE)  # its move had finished: the inbox name holds a new file
            return False
        if moves.finish_move(path, target, version):
            self._set_state(row_id, DONE)
            self.counts["recovered"] += 1
            self.ctx.log.info("finished the interrupted move of %s to %s", path.name, target)
            return not os.path.lexists(path)
        self.ctx.log.warning("row %d: %s is no longer the file it describes; marked lost", row_id, path)
        self._set_state(row_id, LOST)
        return False  # a different file has that name now: it is measured like any other

    def _set_state(self, row_id: int, state: str) -> None:
        with self.ctx.transaction() as conn:
            conn.execute(sa.update(images).where(images.c.id == row_id).values(state=state))

    def _mark_moved(self, conn: sa.Connection) -> None:
        """Inside the next write transaction: the rows whose files are in processed/ now become
        'done' (one transaction a file, not two; a crash before it leaves 'moving' rows whose
        processed file exists, which the next run's reconciling marks done)."""
        if self.moved:
            conn.execute(sa.update(images).where(images.c.id.in_(self.moved)).values(state=DONE))
            self.moved = []

    def finish(self) -> None:
        """Record what is still to be recorded (the last files' 'done')."""
        if self.moved:
            with self.ctx.transaction() as conn:
                self._mark_moved(conn)

    # -- one file
    def handle(self, path: Path, feed: Feed) -> None:
        if str(path) in self.moving and self._finish_interrupted(path):
            feed.discard(path)
            return
        problem = self._precheck(path)
        if problem is not None:
            feed.discard(path)
            if problem == "":
                return
        outcome = Failed(problem) if problem else feed.outcome(path)
        if isinstance(outcome, Failed):
            self._quarantine(path, outcome.reason, outcome.sha256)
        else:
            self._record(path, outcome)

    def _precheck(self, path: Path) -> str | None:
        """None if the file should be measured, "" if it is to be left alone, else why it is refused."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self._skip(path, "it is no longer there", vanished=True)
            return ""
        if stat.S_ISDIR(info.st_mode):
            return ""
        try:
            inside = path.resolve().is_relative_to(self.inbox_real)
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(path)
            where = "outside the inbox" if not inside else "inside the inbox"
            return f"it is a symbolic link (to {target}, {where}); put the real file in the inbox instead"
        if not path.parent.resolve().is_relative_to(self.inbox_real):
            self._skip(path, f"it is outside the inbox {self.folders.inbox}")
            return ""
        if not stat.S_ISREG(info.st_mode):
            return "it is not a regular file (a device, pipe or socket); only image files belong here"
        return None

    def _skip(self, path: Path, why: str, *, vanished: bool = False) -> None:
        self.counts["skipped"] += 1
        if not vanished:
            self.left_alone += 1
            self.first_left_alone = self.first_left_alone or f"{path}: {why}"
        self.ctx.log.warning("skipped %s: %s", path, why)

    def _quarantine(self, path: Path, reason: str, sha: str | None = None) -> None:
        if not os.path.lexists(path):
            self._skip(path, "it is no longer there", vanished=True)
            return
        sha = sha or content_sha256(path)
        earlier = self._first_quarantined(sha) if sha else None
        if earlier is not None:
            when = earlier.quarantined_at.strftime("%Y-%m-%d %H:%M")
            reason += (
                f"; it is the same content as {Path(earlier.quarantine_path).name}, quarantined "
                f"{when} UTC by run {earlier.run_id}"
            )
        target = moves.quarantine(path, self.folders.quarantine, reason)
        with self.ctx.transaction() as conn:
            self._mark_moved(conn)
            known = conn.execute(  # a rerun that finished a half-done quarantine: its row may be there
                sa.select(quarantined.c.id).where(quarantined.c.quarantine_path == str(target))
            ).first()
            if known is None:
                conn.execute(
                    sa.insert(quarantined).values(
                        sha256=sha,
                        source_path=str(path),
                        quarantine_path=str(target),
                        reason=" ".join(reason.split()),
                        same_as=earlier.id if earlier is not None else None,
                        job=self.ctx.job,
                        run_id=self.ctx.run_id,
                        quarantined_at=datetime.now(UTC).replace(tzinfo=None),
                    )
                )
        self.counts["quarantined"] += 1
        self.ctx.log.warning("quarantined %s as %s: %s", path.name, target.name, reason)

    def _first_quarantined(self, sha: str) -> Any:
        with self.ctx.engine.connect() as conn:
            return conn.execute(
                sa.select(quarantined)
                .where(quarantined.c.sha256 == sha, quarantined.c.same_as.is_(None))
                .order_by(quarantined.c.id)
                .limit(1)
            ).first()

    def _record(self, path: Path, measured: Measured) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self._skip(path, "it disappeared while being measured", vanished=True)
            return
        seen = measured.identity
        if (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev) != (
            seen.size,
            seen.mtime_ns,
            seen.inode,
            seen.device,
        ):
            self._skip(path, "it changed while being measured; the next run takes the new version")
            return
        folder = self.folders.processed / datetime.now().strftime("%Y/%m/%d")
        folder.mkdir(parents=True, exist_ok=True)
        for attempt, target in enumerate(moves.candidates(folder, path.name)):
            if attempt >= MAX_NAME_TRIES:
                raise RuntimeError(f"no free name for {path.name} in {folder} after {MAX_NAME_TRIES} tries")
            if os.path.lexists(target):
                continue
            try:
                row_id, first, near = self._insert(path, measured, target)
                break
            except sa.exc.IntegrityError:
                continue  # a row reserved this name for a move still to finish: take the next one
        moves.move_file(path, target)
        self.moved.append(row_id)
        self.counts["processed"] += 1
        self.counts["bytes"] += measured.byte_size
        if first is not None:
            self.counts["duplicates"] += 1
        elif not featureless(measured.dhash, self.near_bits):
            self.near.add(row_id, measured.dhash)
            if near is not None:
                self.counts["near_duplicates"] += 1

    def _insert(
        self, path: Path, m: Measured, target: Path
    ) -> tuple[int, int | None, tuple[int, int] | None]:
        with self.ctx.transaction() as conn:
            self._mark_moved(conn)
            first = conn.execute(
                sa.select(images.c.id)
                .where(images.c.sha256 == m.sha256, images.c.duplicate_of.is_(None), images.c.state != LOST)
                .order_by(images.c.id)
                .limit(1)
            ).scalar()
            unlinked = featureless(m.dhash, self.near_bits) if first is None else None
            near = self.near.nearest(m.dhash, self.near_bits) if first is None and not unlinked else None
            result = conn.execute(
                sa.insert(images).values(
                    sha256=m.sha256,
                    state=MOVING,
                    source_path=str(path),
                    source_size=m.identity.size,
                    source_mtime_ns=m.identity.mtime_ns,
                    processed_path=str(target),
                    duplicate_of=first,
                    near_duplicate_of=near[0] if near else None,
                    near_distance=near[1] if near else None,
                    near_unlinked=unlinked,
                    format=m.format,
                    mode=m.mode,
                    width=m.width,
                    height=m.height,
                    frames=m.frames,
                    byte_size=m.byte_size,
                    captured_at=m.captured_at,
                    channel_means=m.channel_means,
                    channel_stds=m.channel_stds,
                    brightness=m.brightness,
                    dhash=m.dhash,
                    thumbnail_path=m.thumbnail,
                    job=self.ctx.job,
                    run_id=self.ctx.run_id,
                    ingested_at=datetime.now(UTC).replace(tzinfo=None),
                )
            )
            return result.inserted_primary_key[0], first, near

    def summary(self, seconds: float, workers: int) -> dict[str, Any]:
        done = self.counts["processed"] + self.counts["quarantined"]
        return {
            **self.counts,
            "seconds": round(seconds, 3),
            "images_per_s": round(done / seconds, 2) if seconds > 0 else None,
            "workers": workers,
        }


if __name__ == "__main__":
    main()
