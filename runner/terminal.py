"""A manual run's live output on a terminal: the run's log lines scroll above one progress bar.

The job's process only describes its bar (`render_bar`); the supervisor, which also copies the
run's log to the terminal, owns the screen: to print, it clears the bar's line, prints, redraws.
"""

from __future__ import annotations

import threading
from typing import IO

BAR_WIDTH = 30
CLEAR_LINE = "\r\x1b[K"


def render_bar(label: str, done: int, total: int | None, elapsed_s: float) -> str:
    """'label [#########---------]  45%  00:00:04' (or 'label  12 done  00:00:04' without a total)."""
    clock = f"{int(elapsed_s // 3600):02d}:{int(elapsed_s % 3600 // 60):02d}:{int(elapsed_s % 60):02d}"
    if not total:
        return f"{label}  {done} done  {clock}"
    filled = min(BAR_WIDTH, BAR_WIDTH * done // total)
    percent = min(100, 100 * done // total)
    return f"{label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:3d}%  {clock}"


class LiveTerminal:
    """A text stream for the run's log lines that keeps a progress bar below them."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.bar_text: str | None = None
        self.partial = ""  # a log line not yet ended: printed once its newline comes
        # The log copier thread writes lines while the supervisor's loop draws the bar.
        self._lock = threading.RLock()

    def write(self, text: str) -> None:
        with self._lock:
            lines = (self.partial + text).split("\n")
            self.partial = lines.pop()
            if lines:
                self._print("".join(line + "\n" for line in lines))

    def flush(self) -> None:
        self.stream.flush()

    def bar(self, text: str | None, *, finished: bool = False) -> None:
        """Show `text` as the bar (None hides it); a finished bar stays on screen as a line."""
        with self._lock:
            if finished and text:
                self.bar_text = None
                self.stream.write(CLEAR_LINE + text + "\n")
                self.stream.flush()
                return
            self.bar_text = text
            self.stream.write(CLEAR_LINE + (text or ""))
            self.stream.flush()

    def close(self) -> None:
        """The run ended: the last unfinished log line is printed, the bar taken away."""
        with self._lock:
            tail, self.partial = self.partial, ""
            self.bar_text = None
            self.stream.write(CLEAR_LINE + (tail + "\n" if tail else ""))
            self.stream.flush()

    def _print(self, text: str) -> None:
        if self.bar_text is None:
            self.stream.write(text)
        else:
            self.stream.write(CLEAR_LINE + text + self.bar_text)
        self.stream.flush()
