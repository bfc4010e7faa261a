"""glibc malloc settings for large-tensor workloads.

By default glibc serves every allocation above a dynamic threshold with a
fresh mmap and returns it on free, so each network step page-faults and zeroes
hundreds of MB again: measured here, a training step took 1.8-5.6 s with the
CPU mostly in the kernel, and 1.45 s steadily with these settings.

Kept memory is per arena, and glibc gives new threads arenas of their own: a render starts decode,
encode and commit threads for every chunk, so a film of 17 chunks peaked at 613 MB against 541 MB
for 3 chunks (+13%, ``benchmarks/memory.py``). Two arenas: 433 MB for both.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_done = False


def tune_malloc() -> bool:
    """Keep freed memory in the heap (once per process). Returns False where not glibc."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # the largest glibc accepts on 64-bit
    ok &= mallopt(_M_TRIM_THRESHOLD, 4 << 30)
    ok &= mallopt(_M_TOP_PAD, 256 << 20)
    ok &= mallopt(_M_ARENA_MAX, 2)
    _done = bool(ok)
    return _done
