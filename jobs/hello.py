"""Smoke job: proves that configuration, supervision and history work end to end."""

from __future__ import annotations

from runner import JobContext, job, main


@job(timeout="1m")  # it logs a few lines: a minute means it is stuck
def hello(ctx: JobContext, name: str = "world", count: int = 1) -> str:
    """Greet someone, COUNT times.

    Args:
        name: who to greet.
        count: how many greetings to log.
    """
    for number in range(1, count + 1):
        ctx.log.info("hello %s (%d/%d)", name, number, count)
    greetings = ctx.state.get("greetings", 0) + count
    ctx.state["greetings"] = greetings
    return f"Hello, {name}! ({count} greeting{'s' if count != 1 else ''}, {greetings} so far)"


if __name__ == "__main__":
    main()
