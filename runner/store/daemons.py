"""Daemons: each scheduling daemon on the database registers and beats, so `runner status` and
the catch-up after a restart know who was scheduling, and when. Beats are the database's clock
(runner.store.clock); each also carries the host's own clock, so its offset shows."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from runner.models import daemons
from runner.store.base import StorePart
from runner.store.clock import server_now
from runner.store.host import HOSTNAME
from runner.store.records import as_utc


class Daemons(StorePart):
    """`store.daemons`: register a daemon, record its beats, list the live ones."""

    __slots__ = ()

    def register(self, config_path: str, code: dict[str, Any] | None = None) -> int:
        """A daemon starts; `code` is what `loaded_code` records."""
        with self.begin() as conn:
            return conn.execute(
                sa.insert(daemons)
                .values(
                    host=HOSTNAME,
                    pid=os.getpid(),
                    config_path=config_path,
                    started_at=server_now(),
                    heartbeat_at=server_now(),
                    host_time=datetime.now(UTC),
                    **(code or {}),
                )
                .returning(daemons.c.id)
            ).scalar_one()

    def loaded_code(self, daemon_id: int, code: dict[str, Any]) -> None:
        """The daemon (re)loaded its job code: `code_version`, `code_loaded_at` and the `broken`
        jobs ({job: why}) it cannot run."""
        with self.begin() as conn:
            conn.execute(sa.update(daemons).where(daemons.c.id == daemon_id).values(**code))

    def heartbeat(
        self,
        daemon_id: int,
        *,
        stopped: bool = False,
        queues: dict[str, dict[str, Any]] | None = None,
        notes: list[str] | None = None,
        fired: dict[str, int] | None = None,
    ) -> None:
        """The daemon is scheduling (or, `stopped`, has stopped); `queues` are the fires waiting
        in it per job, `notes` the settings a reload could not apply, `fired` the runs it started
        in the last hour per job."""
        values: dict[str, Any] = {"heartbeat_at": server_now(), "host_time": datetime.now(UTC)}
        if stopped:
            values["stopped_at"] = server_now()
        if queues is not None:
            values["queues"] = queues
        if notes is not None:
            values["notes"] = notes
        if fired is not None:
            values["fired"] = fired
        with self.begin() as conn:
            conn.execute(sa.update(daemons).where(daemons.c.id == daemon_id).values(**values))

    def last_beat(self) -> datetime | None:
        """The last moment any daemon on this database was known to be scheduling."""
        with self.begin() as conn:
            at = conn.execute(sa.select(sa.func.max(daemons.c.heartbeat_at))).scalar()
        return as_utc(at) if at is not None else None

    def alive(self, alive_within_s: float) -> list[dict[str, Any]]:
        """Daemons that have not stopped and reported within the window (on the database's
        clock), newest first; each with its heartbeat's age and its host clock's offset from the
        database's (positive: the host is ahead), in seconds."""
        query = (
            sa.select(daemons, server_now().label("db_now"))
            .where(daemons.c.stopped_at.is_(None), daemons.c.heartbeat_at >= server_now(-alive_within_s))
            .order_by(daemons.c.id.desc())
        )
        with self.read() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            db_now = row.pop("db_now")
            row["heartbeat_age_s"] = max(0.0, (db_now - row["heartbeat_at"]).total_seconds())
            host_time = row.get("host_time")
            row["clock_offset_s"] = (host_time - row["heartbeat_at"]).total_seconds() if host_time else None
        return rows
