"""Where artifacts live: a local folder or an S3 prefix, behind one small interface.

``open_storage(uri)`` picks the backend by scheme ("/path", "file:///path", "s3://bucket/prefix").
Keys are relative '/'-separated paths and the same keys are valid on both backends.
Writes are atomic on both: a reader sees the old object or the new one, never a part.

The package: ``base`` (the Storage protocol, errors, key rules, the scheme registry), ``uri``
(URI parsing, open_storage/open_object), ``local`` and ``s3`` (the backends; importing them here
registers their schemes) and ``s3_stream`` (S3 reads that resume after a broken connection).
"""
from __future__ import annotations

import os  # noqa: F401  (tests patch storage.os.fsync, storage.shutil.copyfileobj)
import shutil  # noqa: F401

from .base import (_TMP_SUFFIX, MiB, InvalidKeyError, ObjectStat, Storage, StorageError,  # noqa: F401
                   register_scheme, registered_schemes)
from .uri import is_remote, join_uri, open_object, open_storage, parent_uri, split_uri
from .local import LocalStorage, atomic_write, clear
from .s3 import S3Config, S3Storage

__all__ = [
    "Storage", "ObjectStat", "StorageError", "InvalidKeyError", "MiB",
    "register_scheme", "registered_schemes",
    "split_uri", "is_remote", "join_uri", "parent_uri", "open_storage", "open_object",
    "LocalStorage", "atomic_write", "clear", "S3Config", "S3Storage",
]
