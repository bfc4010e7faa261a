"""engine.overlap: the decode thread ahead of the net and the encode behind it."""
from __future__ import annotations

import threading
import time

import pytest

from engine.overlap import Behind, prefetch


def test_prefetch_yields_in_order_and_reads_ahead_at_most_depth():
    produced = []

    def source():
        for i in range(10):
            produced.append(i)
            yield i

    seen = []
    for item in prefetch(source(), depth=2):
        time.sleep(0.01)
        assert len(produced) - len(seen) <= 4  # the item in hand, the queue, one being put
        seen.append(item)
    assert seen == list(range(10))


def test_prefetch_raises_the_threads_error_and_closes_the_source_on_early_exit():
    def failing():
        yield 1
        raise ValueError("decoding stopped at frame 1")

    with pytest.raises(ValueError, match="frame 1"):
        list(prefetch(failing()))

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    for item in prefetch(endless()):
        if item == 3:
            break
    assert closed.wait(2)


def test_behind_runs_jobs_in_order_one_waiting_and_surfaces_errors():
    done = []
    with Behind() as b:
        for i in range(5):
            b.submit(lambda k: (time.sleep(0.01), done.append(k)), i)
    assert done == [0, 1, 2, 3, 4]
    b = Behind()
    b.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        b.finish()
