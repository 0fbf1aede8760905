"""Jobs that use ctx: the attempt number, persistent state and transactions."""

from __future__ import annotations

import sqlalchemy as sa

from runner import JobContext, job


@job
def flaky(ctx: JobContext, failures: int = 2) -> int:
    """Fail the first `failures` attempts, then succeed."""
    if ctx.attempt <= failures:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return ctx.attempt


@job
def counter(ctx: JobContext) -> int:
    """Count this job's runs in ctx.state."""
    count = ctx.state.get("count", 0) + 1
    ctx.state["count"] = count
    return count


@job
def ledger(ctx: JobContext, fail_after_write: bool = False) -> dict[str, int]:
    """Add a row to its own table and advance a cursor in the same transaction.

    With fail_after_write, raise inside the transaction: neither the row nor the cursor may stay.
    """
    items = sa.Table("test_ledger_items", sa.MetaData(), sa.Column("n", sa.Integer))
    items.create(ctx.engine, checkfirst=True)
    with ctx.transaction() as conn:
        cursor = ctx.state.get("cursor", 0, conn=conn) + 1
        conn.execute(sa.insert(items).values(n=cursor))
        ctx.state.set("cursor", cursor, conn=conn)
        if fail_after_write:
            raise RuntimeError("failed after writing")
    with ctx.engine.connect() as conn:
        rows = conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one()
    return {"cursor": ctx.state.get("cursor"), "rows": rows}


@job
def tally(ctx: JobContext, times: int = 100, how: str = "incr", started: str = "") -> int:
    """Add 1 to the shared key 'n' `times` times, the way `how` says: incr, update, or transaction
    (a get then a set inside ctx.transaction(), without passing conn=)."""
    import os
    import time

    if started:  # tell the test we run, then wait a moment so the other run overlaps
        with open(started, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.2)
    for _ in range(times):
        if how == "incr":
            ctx.state.incr("n")
        elif how == "update":
            ctx.state.update("n", lambda value: (value or 0) + 1)
        else:
            with ctx.transaction():
                ctx.state.set("n", ctx.state.get("n", 0) + 1)
    return ctx.state.get("n")
