"""The one cache-root resolver: where filmstyle keeps what it can rebuild (hashes, sources, flow, weights).

An explicit override (--cache-dir, a config's cache_dir) wins, then $FILMSTYLE_CACHE, then
~/.cache/filmstyle. An empty override or variable counts as unset. The folder is not created here.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else $FILMSTYLE_CACHE, else ~/.cache/filmstyle."""
    root = override or os.environ.get("FILMSTYLE_CACHE") or Path.home() / ".cache" / "filmstyle"
    return Path(root)
