"""The storage interface every backend meets, and the registry of backends by URI scheme.

Holds the ``Storage`` protocol, ``ObjectStat``, the errors (``StorageError``, ``InvalidKeyError``),
the key rules shared by all backends (relative '/'-separated paths; in-flight temp names are never
keys) and the scheme registry: a backend module calls ``register_scheme("s3", factory)`` when it is
imported, and ``open_storage``/``open_object`` (in ``uri``) look the scheme up here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Protocol, runtime_checkable

from pipeline.errors import FilmstyleError

MiB = 1 << 20
_TMP_SUFFIX = ".filmstyle-tmp"  # in-flight writes; never a key, skipped by list()


class StorageError(FilmstyleError):
    """A storage location is missing, unreachable or refuses access (the message names the URI)."""


class InvalidKeyError(StorageError, ValueError):
    """A key that is not a plain relative path (absolute, '..', empty parts, ...)."""


@runtime_checkable
class Storage(Protocol):
    uri: str

    def get(self, key: str) -> bytes: ...                 # KeyError if absent
    def put(self, key: str, data: bytes) -> None: ...     # atomic
    def put_file(self, key: str, path: str) -> None: ...  # atomic; multipart on S3
    def get_file(self, key: str, path: str) -> None: ...  # atomic (temp + rename); KeyError if absent
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...               # no error if absent
    def list(self, prefix: str = "") -> list[str]: ...    # keys relative to the root, sorted
    def open(self, key: str) -> BinaryIO: ...             # streaming read; KeyError if absent
    def child(self, prefix: str) -> "Storage": ...
    def local_path(self, key: str) -> str | None: ...     # a real file path when local, else None
    def stat(self, key: str) -> "ObjectStat": ...         # size and version; KeyError if absent


@dataclass(frozen=True)
class ObjectStat:
    """Size in bytes and a version tag that changes when the content does
    (local: mtime in ns; S3: the ETag)."""

    size: int
    version: str


# --------------------------------------------------------------------------- keys

def _check_key(key: str) -> str:
    parts = key.split("/")
    if (not key or key.startswith("/") or "\\" in key or "\0" in key
            or any(p in ("", ".", "..") for p in parts) or key.endswith(_TMP_SUFFIX)):
        raise InvalidKeyError(f"invalid storage key {key!r}: keys are relative '/'-separated "
                              "paths without empty, '.' or '..' parts")
    return key


def _check_prefix(prefix: str) -> str:
    """List prefixes may be partial names and may end with '/'; they must not escape either."""
    if prefix.rstrip("/"):
        _check_key(prefix.rstrip("/"))
    return prefix


# --------------------------------------------------------------------------- scheme registry

#: ``factory(uri, config) -> Storage``: the storage rooted at ``uri`` (config: the S3Config given
#: to open_storage, or None; backends that need no settings ignore it).
StorageFactory = Callable[[str, Any], Storage]

_SCHEMES: dict[str, StorageFactory] = {}


def register_scheme(scheme: str, factory: StorageFactory) -> None:
    """Make ``open_storage``/``open_object`` hand URIs ``scheme://...`` to ``factory``.

    "file" covers plain paths too. Registering a scheme again replaces its factory.
    """
    _SCHEMES[scheme.lower()] = factory


def registered_schemes() -> tuple[str, ...]:
    return tuple(sorted(_SCHEMES))


def scheme_factory(scheme: str) -> StorageFactory | None:
    """The factory registered for ``scheme``, or None."""
    return _SCHEMES.get(scheme)
