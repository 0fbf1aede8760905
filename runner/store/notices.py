"""Notices: the notifications and dead-man pings we tried to deliver, one row per channel, so
that a rate limit or a recovery holds across processes and `runner status` shows failures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from runner.enums import NoticeEvent
from runner.models import notices, utcnow
from runner.store.base import StorePart


class Notices(StorePart):
    """`store.notices`: record a delivery, find each channel's last one, list recent failures."""

    __slots__ = ()

    def record(
        self, job: str, run_id: int | None, event: NoticeEvent, channel: str, error: str | None
    ) -> None:
        with self.begin() as conn:
            conn.execute(
                sa.insert(notices).values(
                    job=job, run_id=run_id, event=event, channel=channel, created_at=utcnow(), error=error
                )
            )

    def last_delivered(
        self, job: str, channels: list[str], events: tuple[NoticeEvent, ...]
    ) -> dict[str, tuple[NoticeEvent, datetime]]:
        """Per channel: the newest of `events` that reached it for `job`, and when."""
        newest = (
            sa.select(notices.c.channel, sa.func.max(notices.c.id).label("id"))
            .where(
                notices.c.job == job,
                notices.c.channel.in_(channels),
                notices.c.event.in_([str(e) for e in events]),
                notices.c.error.is_(None),
            )
            .group_by(notices.c.channel)
            .subquery()
        )
        query = sa.select(notices.c.channel, notices.c.event, notices.c.created_at).join(
            newest, notices.c.id == newest.c.id
        )
        with self.read() as conn:
            return {ch: (NoticeEvent(ev), at) for ch, ev, at in conn.execute(query)}

    def failures_since(self, since: datetime, limit: int) -> list[dict[str, Any]]:
        """Deliveries that failed after `since`, newest first."""
        query = (
            sa.select(notices.c.id, notices.c.job, notices.c.run_id, notices.c.event)
            .add_columns(notices.c.channel, notices.c.created_at, notices.c.error)
            .where(notices.c.error.is_not(None), notices.c.created_at >= since)
            .order_by(notices.c.id.desc())
            .limit(limit)
        )
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]
