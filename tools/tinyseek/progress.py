"""Progress of the long loops (teacher adaptation, extraction, distillation) as plain log lines
that read well in a CI log or a file: an estimate of the whole once the first steps are timed,
then one summary line per epoch with the time left. No carriage returns, no terminal needed."""
from __future__ import annotations

import time
from typing import Callable


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """`total` steps of work named `what`. After `probe` steps (or the first epoch, if sooner) it
    logs the expected duration once; `epoch()` logs a summary line with the elapsed time and the
    time left at the rate so far."""

    def __init__(self, what: str, total: int, log: Callable[[str], None] | None = print, probe: int = 20,
                 units: str = "steps"):
        self.what, self.total, self.log, self.probe, self.units = what, total, log, probe, units
        self.done, self.start, self.estimated = 0, time.monotonic(), False

    def add_total(self, steps: int) -> None:
        self.total += steps

    def step(self, n: int = 1) -> None:
        self.done += n
        if not self.estimated and self.done >= min(self.probe, max(1, self.total)):
            self._estimate()

    def _estimate(self) -> None:
        self.estimated = True
        if self.log is None:
            return
        rate = (time.monotonic() - self.start) / max(1, self.done)
        self.log(f"[{self.what}] expected duration about {_duration(rate * self.total)} "
                 f"({self.total:,} {self.units} at {rate * 1000:.0f} ms each, timed on the first {self.done})")

    def left(self) -> float:
        elapsed = time.monotonic() - self.start
        return elapsed / max(1, self.done) * max(0, self.total - self.done)

    def epoch(self, label: str, text: str) -> None:
        if not self.estimated:
            self._estimate()
        if self.log is None:
            return
        elapsed = time.monotonic() - self.start
        tail = f"; about {_duration(self.left())} left" if self.done < self.total else ""
        self.log(f"[{self.what}] {label}: {text} ({_duration(elapsed)} so far{tail})")
