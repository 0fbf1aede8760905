"""What a SQLite history file needs beyond SQL: noticing that the file was deleted or replaced
while in use, dropping the old file's write-ahead log, checkpoints, and bringing the rows an older
version kept in the history over to a new job-data file."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from runner.store.engine import sqlite3_error

if TYPE_CHECKING:
    from runner.store.database import Store


class SqliteFile:
    """The SQLite-file half of `Store` (each is a no-op on PostgreSQL)."""

    def _adopt_job_tables_from(self: Store, history: Store) -> None:
        """Once, when the job-data file is new: bring over the rows an older version kept in the
        history database (job state, and the tables of shipped jobs)."""
        if history._file is None or not history._file.exists():
            return
        raw = self.engine.raw_connection()
        try:
            db = raw.driver_connection
            db.execute("ATTACH DATABASE ? AS history", (str(history._file),))
            try:
                names = {row[0] for row in db.execute("SELECT name FROM history.sqlite_master")}
                db.execute("BEGIN IMMEDIATE")
                for table in ("job_state", "images"):  # images: the ingest job's, from revision 0004
                    if table not in names:
                        continue
                    mine = db.execute("SELECT 1 FROM main.sqlite_master WHERE name = ?", (table,))
                    if mine.fetchone() is None:  # a job's own table: its layout comes along
                        ddl = db.execute(
                            "SELECT sql FROM history.sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
                            "ORDER BY type = 'index'",
                            (table,),
                        )
                        for (statement,) in ddl.fetchall():
                            db.execute(statement)
                    # INSERT OR IGNORE: two processes may both get here
                    db.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM history.{table}")
                db.execute("COMMIT")
            finally:
                db.execute("DETACH DATABASE history")
        except sqlite3_error() as exc:
            raise self.fault(exc) from None
        finally:
            raw.close()

    def file_identity(self: Store) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the SQLite file at the database's path now; None when there is no
        file there (or the database is not a file)."""
        if self._file is None:
            return None
        try:
            info = os.stat(self._file)
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def file_replaced(self: Store, identity: tuple[int, int] | None) -> str | None:
        """Why the file at the database's path is no longer the one whose identity was taken when
        it was opened (deleted, or another file moved over it), or None while it is the same."""
        if self._file is None or identity is None:
            return None
        now = self.file_identity()
        if now == identity:
            return None
        if now is None:
            return f"database file {self._file} was deleted while in use"
        return (
            f"database file {self._file} was replaced while in use "
            f"(inode {identity[1]} on device {identity[0]}, now inode {now[1]} on device {now[0]})"
        )

    def drop_old_wal(self: Store) -> list[str]:
        """After the database file was deleted or replaced while in use: the -wal and -shm files at
        its path are the old file's, and SQLite would replay that log into the new file when it
        next opens it. Remove them, once no process of ours uses the old file any more."""
        removed = []
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self._file}{suffix}")
                removed.append(f"{self._file}{suffix}")
        return removed

    def vacuum(self: Store) -> tuple[int, int] | None:
        """Rewrite the SQLite file with incremental auto-vacuum (once, for a file made before it was
        the default; later prunes then give freed pages back a few at a time). Takes the write
        lock for as long as it runs. Returns (bytes before, bytes after); None on PostgreSQL,
        whose autovacuum needs no help."""
        if self._file is None:
            return None
        self.ensure_schema()
        before = self._file.stat().st_size
        try:
            with self._queue.held() if self._queue is not None else contextlib.nullcontext():
                raw = self.engine.raw_connection()
                try:
                    db = raw.driver_connection
                    db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                    db.execute("VACUUM")
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    raw.close()
        except sqlite3_error() as exc:
            raise self.fault(exc) from None
        return before, self._file.stat().st_size

    def checkpoint(self: Store) -> None:
        """Fold SQLite's write-ahead log into the database without blocking writers (PASSIVE)."""
        if not self.url.startswith("sqlite"):
            return
        raw = self.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            raw.close()
