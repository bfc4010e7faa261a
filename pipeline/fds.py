"""Point the process's stdout/stderr file descriptors at a log file for a while.

Native code (Ray's C++ core, uvicorn started as a child) writes to fds 1 and 2 directly, below
Python's ``sys.stderr``; the only way to keep its output out of the terminal is to move the fds.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def fds_to(path: str | Path, fds: tuple[int, ...] = (1, 2)):
    """Point ``fds`` at ``path`` (appending; children started inside inherit it), then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(f) for f in fds]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for f in fds:
            os.dup2(fd, f)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for f, s in zip(fds, saved):
            os.dup2(s, f)
        for f in (*saved, fd):
            os.close(f)
