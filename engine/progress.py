"""Progress and timing, the same for both executors: stage timers and throttled progress lines.

Lines go to a ``log`` callable (the CLI prints them on stderr; the Prefect executor also sends
them to the flow run's log), at most one every ``every`` seconds per stage, so a 130,000-frame
render does not flood a terminal or a log store.
"""
from __future__ import annotations

import time
from contextlib import contextmanager


class StageTimer:
    """Seconds spent per stage; stages may be entered many times (once per chunk)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def merge(self, seconds: dict[str, float]) -> None:
        for stage, s in seconds.items():
            self.add(stage, s)


class Ticker:
    """Throttled progress lines for one stage: ``flow: 12/40 chunks``."""

    def __init__(self, log, label: str, total: int, unit: str, every: float = 2.0):
        self.log, self.label, self.total, self.unit, self.every = log, label, total, unit, every
        self.done, self.last = 0, 0.0

    def add(self, n: int, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.log(f"{self.label}: {self.done}/{self.total} {self.unit}{extra}")


def quiet(_message: str) -> None:
    """A log that prints nothing."""
