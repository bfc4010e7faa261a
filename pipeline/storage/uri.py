"""Storage URIs: parsing and joining them, and opening the storage or object one names.

A URI is a plain path, ``file:///path`` or ``scheme://location/prefix`` for a registered remote
scheme (``s3://bucket/prefix``). ``open_storage`` and ``open_object`` find the backend in the
scheme registry (``base.register_scheme``), so this module names no backend class.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .base import Storage, StorageError, registered_schemes, scheme_factory

if TYPE_CHECKING:
    from .s3 import S3Config


def split_uri(uri: str) -> tuple[str, ...]:
    """("file", path) or ("s3", bucket, prefix); the prefix has no leading/trailing '/'.

    Another registered scheme splits like S3: (scheme, location, prefix).
    """
    uri = os.fspath(uri)
    if "://" not in uri:
        return ("file", uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"{uri}: an S3 URI needs a bucket (s3://bucket/prefix)")
        return ("s3", parts.netloc, parts.path.strip("/"))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"{uri}: file URIs must be local (file:///path)")
        return ("file", unquote(parts.path))
    if scheme in registered_schemes():
        return (scheme, parts.netloc, parts.path.strip("/"))
    raise StorageError(f"{uri}: unsupported storage scheme {scheme!r} (use {_choices()})")


def _choices() -> str:
    """The URI forms to suggest: 'a path, file:// or s3://', plus any other registered scheme."""
    options = ["a path", *(f"{s}://" for s in registered_schemes())]
    return ", ".join(options[:-1]) + " or " + options[-1]


def _factory(scheme: str, uri: str):
    factory = scheme_factory(scheme)
    if factory is None:  # split_uri knows the syntax but no backend registered itself for it
        raise StorageError(f"{uri}: unsupported storage scheme {scheme!r} (use {_choices()})")
    return factory


def is_remote(uri: str) -> bool:
    return split_uri(uri)[0] != "file"


def open_storage(uri: str, config: S3Config | None = None) -> Storage:
    """A Storage for a path, file:// URI or s3://bucket/prefix (config: S3 settings, default from env)."""
    scheme = split_uri(uri)[0]
    return _factory(scheme, uri)(uri, config)


def open_object(uri: str, config: S3Config | None = None) -> tuple[Storage, str]:
    """The storage that holds the object at ``uri``, and its key there.

    "/films/a.mp4" -> (LocalStorage("/films"), "a.mp4"); "s3://b/films/a.mp4" -> (S3Storage("b", "films"), "a.mp4").
    """
    parts = split_uri(uri)
    scheme = parts[0]
    if scheme == "file":
        path = os.path.abspath(parts[1])
        return _factory(scheme, uri)(os.path.dirname(path), config), os.path.basename(path)
    location, key = parts[1], parts[2]
    prefix, _, name = key.rpartition("/")
    if not name:
        raise StorageError(f"{uri}: names no object (use {scheme}://bucket/path/name)")
    parent = f"{scheme}://{location}/{prefix}" if prefix else f"{scheme}://{location}"
    return _factory(scheme, uri)(parent, config), name


def join_uri(base: str, *keys: str) -> str:
    """``base`` (a path or URI) extended by '/'-separated keys."""
    base = os.fspath(base)
    for key in keys:
        base = f"{base.rstrip('/')}/{key.strip('/')}" if "://" in base else os.path.join(base, key)
    return base


def parent_uri(uri: str) -> str:
    """The folder (local) or prefix (S3) that holds the object at ``uri``."""
    if is_remote(uri):
        return uri.rstrip("/").rpartition("/")[0]
    return os.path.dirname(os.path.abspath(split_uri(uri)[1]))
