"""The local backend: ``LocalStorage`` over a folder, registered for plain paths and file:// URIs.

Also holds ``atomic_write`` (temp file beside the target, fsync, rename), which every write to a
local file goes through, S3 downloads included, and ``clear``, which empties any storage (a local
folder in one rmtree).
"""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager, suppress
from typing import BinaryIO, Iterator

from .base import _TMP_SUFFIX, MiB, ObjectStat, Storage, _check_key, _check_prefix, register_scheme
from .uri import split_uri


@contextmanager
def atomic_write(path: str) -> Iterator[BinaryIO]:
    """Write to a temp file beside ``path``, fsync, rename over it: never a partial file at ``path``."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")
    # os.open with 0o666 keeps the user's umask (mkstemp would force 0600 on the result).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class LocalStorage:
    def __init__(self, root: str):
        self.root = os.path.abspath(os.fspath(root))
        self.uri = self.root

    def __repr__(self) -> str:
        return f"LocalStorage({self.uri!r})"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *_check_key(key).split("/"))

    def _open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def get(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def put(self, key: str, data: bytes) -> None:
        with atomic_write(self._path(key)) as f:
            f.write(data)

    def put_file(self, key: str, path: str) -> None:
        with open(path, "rb") as src, atomic_write(self._path(key)) as dst:
            shutil.copyfileobj(src, dst, 4 * MiB)

    def get_file(self, key: str, path: str) -> None:
        with self._open(key) as src, atomic_write(path) as dst:
            shutil.copyfileobj(src, dst, 4 * MiB)

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, key: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the deepest folder the prefix names, then filter like S3 does (string prefix).
        folder = _check_prefix(prefix).rpartition("/")[0]
        top = self._path(folder) if folder else self.root
        keys = []
        for dirpath, _, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.endswith(_TMP_SUFFIX) and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def open(self, key: str) -> BinaryIO:
        return self._open(key)

    def child(self, prefix: str) -> LocalStorage:
        return LocalStorage(self._path(prefix.rstrip("/")))

    def local_path(self, key: str) -> str | None:
        return self._path(key)

    def stat(self, key: str) -> ObjectStat:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise KeyError(key) from None
        if not os.path.isfile(self._path(key)):
            raise KeyError(key)
        return ObjectStat(st.st_size, str(st.st_mtime_ns))


def _open_local(uri: str, config=None) -> LocalStorage:
    return LocalStorage(split_uri(uri)[1])


register_scheme("file", _open_local)


def clear(storage: Storage) -> None:
    """Delete everything under ``storage`` (a local folder is removed with its subfolders)."""
    if isinstance(storage, LocalStorage):
        shutil.rmtree(storage.root, ignore_errors=True)
        return
    for key in storage.list():
        storage.delete(key)
