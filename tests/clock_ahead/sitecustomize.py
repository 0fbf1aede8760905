"""On PYTHONPATH, makes every Python process (and its forks) see a wall clock that is
RUNNER_TEST_CLOCK_AHEAD_S seconds fast, as on a host whose clock is off; the monotonic clock is
left alone. time-machine moves time.time, datetime.now and the like in the process itself: Debian's
libfaketime cannot be used for a threaded Python 3.11 (its timed waits hang, or its sleeps fail
with EINVAL when the monotonic clock is left real)."""

import os

if os.environ.get("RUNNER_TEST_CLOCK_AHEAD_S"):
    from datetime import UTC, datetime, timedelta

    import time_machine

    ahead = timedelta(seconds=float(os.environ["RUNNER_TEST_CLOCK_AHEAD_S"]))
    time_machine.travel(datetime.now(UTC) + ahead, tick=True).start()
