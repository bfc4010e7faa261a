"""The one file hasher: ``file_hash(path)``, BLAKE2b-256 (or SHA-256) of a file's bytes, streamed.

BLAKE2b-256 names sources and styles by content (media.content_hash, the node file cache);
SHA-256 checks downloaded weights and names checkpoints (models.checkpoint.file_digest), where
the published digests are SHA-256. Files are read in 4 MiB blocks, so memory stays flat on a film.
"""
from __future__ import annotations

import hashlib
import os

_BLOCK = 4 << 20


def file_hash(path: str | os.PathLike, algorithm: str = "blake2b", length: int | None = None) -> str:
    """Hex digest of the file at ``path``, by "blake2b" (digest_size 32) or "sha256".

    With ``length``, only its first ``length`` hex digits.
    """
    if algorithm == "blake2b":
        h = hashlib.blake2b(digest_size=32)
    elif algorithm == "sha256":
        h = hashlib.sha256()
    else:
        raise ValueError(f"unknown hash algorithm {algorithm!r}; use 'blake2b' or 'sha256'")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    digest = h.hexdigest()
    return digest if length is None else digest[:length]
