"""Progress and timing, the same for both executors: stage timers and throttled progress lines.

Lines go to a ``log`` callable (the CLI prints them on stderr; the Prefect executor also sends
them to the flow run's log), at most one every ``every`` seconds per stage, so a 130,000-frame
render does not flood a terminal or a log store.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class StageTimer:
    """Seconds spent per stage; stages may be entered many times (once per chunk)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()  # stages of one chunk run in threads side by side (engine.overlap)

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
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


class RenderProgress:
    """Where a render stands, for a watcher (``filmstyle queue`` reads it from a Prefect artifact):
    the flow stage's chunks, then the stylized frames and chunks. ``percent`` weighs the flow stage
    as a quarter of the work when it computes anything (DIS at 960 px costs about a third of the
    per-frame net's time on a CPU); chunks resumed from an earlier run count as done."""

    FLOW_SHARE = 0.25

    def __init__(self, report=None):
        self.report = report or (lambda p: None)
        self.stage = "plan"
        self.flow_done = self.flow_total = 0
        self.frames_done = self.frames_total = 0
        self.chunks_done = self.chunks_total = 0

    def flow(self, done: int, total: int) -> None:
        self.stage, self.flow_done, self.flow_total = "flow", done, total
        self.report(self)

    def stylize(self, frames_done: int, frames_total: int, chunks_done: int, chunks_total: int) -> None:
        self.stage = "stylize"
        self.frames_done, self.frames_total = frames_done, frames_total
        self.chunks_done, self.chunks_total = chunks_done, chunks_total
        self.report(self)

    def finish(self, stage: str) -> None:
        self.stage = stage
        self.report(self)

    @property
    def percent(self) -> float:
        """0-100; 100 only once the output is written."""
        if self.stage == "done":
            return 100.0
        if self.stage == "assemble":
            return 99.0
        flow = self.flow_done / self.flow_total if self.flow_total else 1.0
        frames = self.frames_done / self.frames_total if self.frames_total else 0.0
        share = self.FLOW_SHARE if self.flow_total else 0.0
        return min(99.0, round(100.0 * (share * flow + (1 - share) * frames), 1))

    def text(self) -> str:
        parts = []
        if self.flow_total:
            parts.append(f"flow {self.flow_done}/{self.flow_total} chunks")
        if self.frames_total:
            parts.append(f"stylize {self.frames_done}/{self.frames_total} frames "
                         f"({self.chunks_done}/{self.chunks_total} chunks)")
        if self.stage in ("assemble", "done"):
            parts.append(self.stage)
        return ", ".join(parts) or self.stage
