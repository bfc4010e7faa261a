"""Run the stages around the net beside it: a decode thread ahead of the net, and the upscale and
encode of one slice behind it.

``prefetch`` reads an iterator in a thread, at most ``depth`` items ahead; ``Behind`` runs one job
at a time in a thread and lets at most one wait, so the net never waits on the encoder unless the
encoder is the slower stage, and memory stays at a few slices whatever the chunk length. ffmpeg's
decode and encode are processes of their own and OpenCV and numpy release the GIL, so on a machine
with cores to spare these stages cost the net nothing; on two cores they take what the net leaves.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


def prefetch(items: Iterable[T], depth: int = 2, name: str = "filmstyle-prefetch") -> Iterator[T]:
    """Yield ``items`` as a thread produces them, at most ``depth`` ahead. An error in the thread is
    raised here; leaving the loop early stops the thread and closes the source iterator (an ffmpeg
    decode pipe is killed, not left running)."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((True, item)):
                    break
            put((True, _END))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((False, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class Behind:
    """One job at a time in a background thread; ``submit`` waits for the job before last, so at
    most one waits while the caller computes the next. ``finish`` waits for the last one; errors
    surface at the next ``submit`` or at ``finish``."""

    def __init__(self, name: str = "filmstyle-behind"):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: Future | None = None

    def submit(self, fn: Callable, *args) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(fn, *args)

    def finish(self) -> None:
        try:
            if self._pending is not None:
                self._pending.result()
        finally:
            self._pending = None
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Let the running job end, drop its result and any waiting one."""
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Behind":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish()
        else:  # the caller failed
            self.abort()
        return False
