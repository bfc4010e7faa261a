"""Small JSON index files (caches, sidecars) read leniently and replaced atomically."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def read_json_dict(path: Path) -> dict:
    """The dict stored at ``path``, or {} when it is missing or damaged (a cache only costs time)."""
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json_atomic(path: Path, data: dict) -> None:
    """Replace ``path`` atomically: concurrent writers may race, but never leave a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
