"""S3 GET streams that survive broken connections: ``_S3Reader`` and its retry helpers.

botocore retries whole requests, but not a body that breaks off after the response headers
arrived; ``_S3Reader`` resumes such a stream with a ranged GET pinned to the first ETag, so a
read never ends short and never mixes two versions of an object.
"""
from __future__ import annotations

import io
import random
import time
from contextlib import suppress
from typing import TYPE_CHECKING

from .base import MiB, StorageError

if TYPE_CHECKING:
    from .s3 import S3Storage

_READ_CHUNK = 8 * MiB


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a body read raises when the connection drops or stalls after the headers arrived."""
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError
    from urllib3.exceptions import HTTPError

    return (HTTPClientError, ConnectionError, IncompleteReadError, HTTPError, OSError)


def _backoff(attempt: int) -> float:
    return min(5.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0)


class _S3Reader(io.RawIOBase):
    """A GET stream that resumes with a ranged GET (If-Match the first ETag) when the connection
    drops or stalls mid-body, up to max_attempts consecutive failures; it never ends short."""

    def __init__(self, store: S3Storage, key: str):
        self._store, self._key = store, key
        self._pos, self._body, self._etag = 0, None, None
        self.size = 0
        self._connect()

    def _connect(self) -> None:
        extra = {"Range": f"bytes={self._pos}-", "IfMatch": self._etag} if self._pos else {}
        resp = self._store._get_object(self._key, **extra)
        if not self._pos:
            self.size, self._etag = resp["ContentLength"], resp["ETag"]
        self._body = resp["Body"]

    def _drop_body(self) -> None:
        if self._body is not None:
            with suppress(Exception):
                self._body.close()
            self._body = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._pos >= self.size or not len(buf):
            return 0
        from botocore.exceptions import IncompleteReadError

        errors = _stream_errors()
        for attempt in range(1, self._store.config.max_attempts + 1):
            try:
                if self._body is None:
                    self._connect()
                # bounded reads: urllib3 copies through a temp of the requested size
                n = self._body.readinto(memoryview(buf)[:_READ_CHUNK])
                if not n:
                    raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self.size)
                self._pos += n
                return n
            except errors as e:
                self._drop_body()
                if attempt == self._store.config.max_attempts:
                    raise StorageError(f"{self._store.uri}: reading {self._key!r} broke off at byte "
                                       f"{self._pos} of {self.size} ({type(e).__name__}) "
                                       f"{attempt} times in a row") from e
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop_body()
        super().close()
