"""Where artifacts live: a local folder or an S3 prefix, behind one small interface.

``open_storage(uri)`` picks the backend by scheme ("/path", "file:///path", "s3://bucket/prefix").
Keys are relative '/'-separated paths and the same keys are valid on both backends.
Writes are atomic on both: a reader sees the old object or the new one, never a part.

S3 notes: the boto3 client is made lazily, once per process and config, so a storage object
pickles to a Ray worker as plain data (URI + config, never credentials: the worker finds its
own). botocore retries requests; a stream that breaks after the response headers (which
botocore cannot retry) is resumed here with a ranged GET. Errors a user can act on become one
``StorageError`` line naming the URI.
"""
from __future__ import annotations

import io
import os
import random
import secrets
import shutil
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from pipeline.errors import FilmstyleError

MiB = 1 << 20
_TMP_SUFFIX = ".filmstyle-tmp"  # in-flight writes; never a key, skipped by list()
_CHECKSUM_MODES = ("when_required", "when_supported")
_RETRY_MODES = ("standard", "adaptive")
_READ_CHUNK = 8 * MiB


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


# --------------------------------------------------------------------------- URIs and keys

def split_uri(uri: str) -> tuple[str, ...]:
    """("file", path) or ("s3", bucket, prefix); the prefix has no leading/trailing '/'."""
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
    raise StorageError(f"{uri}: unsupported storage scheme {scheme!r} (use a path, file:// or s3://)")


def is_remote(uri: str) -> bool:
    return split_uri(uri)[0] != "file"


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


# --------------------------------------------------------------------------- local

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


# --------------------------------------------------------------------------- S3

@dataclass(frozen=True)
class S3Config:
    """How to talk to S3 (or an S3-compatible store). Holds no credentials: boto3 finds them."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    # boto3 >= 1.36 sends CRC checksums by default; many S3-compatible stores reject them.
    checksum: str = "when_required"
    max_attempts: int = 8            # total attempts per request (botocore's total_max_attempts)
    retry_mode: str = "standard"
    multipart_threshold_mb: int = 64
    multipart_chunksize_mb: int = 16  # S3 parts are at least 5 MiB
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def __post_init__(self):
        if self.checksum not in _CHECKSUM_MODES:
            raise StorageError(f"S3 checksum mode must be one of {_CHECKSUM_MODES}, not {self.checksum!r}")
        if self.retry_mode not in _RETRY_MODES:
            raise StorageError(f"S3 retry mode must be one of {_RETRY_MODES}, not {self.retry_mode!r}")
        if self.max_attempts < 1:
            raise StorageError(f"S3 max_attempts must be at least 1, not {self.max_attempts}")

    @classmethod
    def from_env(cls, environ=None) -> S3Config:
        env = os.environ if environ is None else environ
        attempts = env.get("FILMSTYLE_S3_MAX_ATTEMPTS", "8")
        try:
            max_attempts = int(attempts)
        except ValueError:
            raise StorageError(f"FILMSTYLE_S3_MAX_ATTEMPTS must be an integer, not {attempts!r}") from None
        return cls(
            endpoint_url=env.get("FILMSTYLE_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            profile=env.get("AWS_PROFILE") or None,
            checksum=env.get("FILMSTYLE_S3_CHECKSUM", "when_required"),
            max_attempts=max_attempts,
        )


_clients: dict[tuple[int, S3Config], object] = {}
_clients_lock = threading.Lock()


def _s3_client(config: S3Config):
    """One client per process and config: boto3 clients are thread-safe but must not cross a fork."""
    key = (os.getpid(), config)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            for stale in [k for k in _clients if k[0] != key[0]]:  # inherited from a parent process
                del _clients[stale]
            session = boto3.session.Session(profile_name=config.profile, region_name=config.region)
            client = session.client("s3", endpoint_url=config.endpoint_url, config=Config(
                retries={"mode": config.retry_mode, "total_max_attempts": config.max_attempts},
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                request_checksum_calculation=config.checksum,
                response_checksum_validation=config.checksum,
                # custom endpoints (MinIO, moto, an IP) rarely resolve bucket.host names
                s3={"addressing_style": "path"} if config.endpoint_url else None,
            ))
            _clients[key] = client
    return client


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a body read raises when the connection drops or stalls after the headers arrived."""
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError
    from urllib3.exceptions import HTTPError

    return (HTTPClientError, ConnectionError, IncompleteReadError, HTTPError, OSError)


def _backoff(attempt: int) -> float:
    return min(5.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.0)


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "", config: S3Config | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.config = config or S3Config.from_env()
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._bucket_ok = False

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r})"

    @property
    def _client(self):
        return _s3_client(self.config)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{_check_key(key)}" if self.prefix else _check_key(key)

    # -- errors

    @contextmanager
    def _errors(self, op: str, key: str = ""):
        """Turn botocore errors into KeyError (missing key) or one StorageError line."""
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError,
                                         HTTPClientError, NoCredentialsError,
                                         PartialCredentialsError, ProfileNotFound)
        try:
            yield
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if key and code in ("NoSuchKey", "404", "NotFound"):
                self._check_bucket()
                raise KeyError(key) from None
            if code == "NoSuchBucket":
                raise self._no_bucket() from e
            if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                                         "ExpiredToken", "InvalidToken", "AllAccessDisabled"):
                # The code only: some services echo the access key id in the message.
                raise StorageError(f"{self.uri}: access denied ({code or status}) on {op}; check the "
                                   "AWS credentials or profile and the bucket policy") from e
            what = f"{op} {key!r}" if key else op
            raise StorageError(f"{self.uri}: S3 {what} failed: {code or 'error'} (HTTP {status})"
                               + (f" after {self.config.max_attempts} attempts"
                                  if status and status >= 500 else "")) from e
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise StorageError(f"{self.uri}: no usable AWS credentials ({type(e).__name__}); set "
                               "AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from e
        except ProfileNotFound as e:
            raise StorageError(f"{self.uri}: AWS profile {self.config.profile!r} not found") from e
        except (ConnectionError, HTTPClientError) as e:
            endpoint = self.config.endpoint_url or "the AWS S3 endpoint"
            raise StorageError(f"{self.uri}: cannot reach {endpoint} ({type(e).__name__}) after "
                               f"{self.config.max_attempts} attempts") from e
        except BotoCoreError as e:
            raise StorageError(f"{self.uri}: S3 {op} failed: {type(e).__name__}: {e}") from e

    def _no_bucket(self) -> StorageError:
        return StorageError(f"{self.uri}: bucket {self.bucket!r} does not exist "
                            "(check the URI, the endpoint and the region)")

    def _check_bucket(self) -> None:
        # HEAD answers a missing bucket with a bare 404, like a missing key: ask once which.
        if self._bucket_ok:
            return
        from botocore.exceptions import ClientError

        with self._errors("check bucket"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    raise self._no_bucket() from e
                if status != 403:  # 403: a prefix-only policy may forbid HEAD bucket; trust the 404
                    raise
        self._bucket_ok = True

    # -- operations

    def _get_object(self, key: str, **extra) -> dict:
        with self._errors("get", key):
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key), **extra)

    def get(self, key: str) -> bytes:
        with _S3Reader(self, key) as reader:
            buf = bytearray(reader.size)
            view, pos = memoryview(buf), 0
            while pos < reader.size:  # readinto raises rather than stop short: size is verified
                pos += reader.readinto(view[pos:])
            return bytes(buf)

    def put(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data))

    def put_file(self, key: str, path: str) -> None:
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_threshold=self.config.multipart_threshold_mb * MiB,
            multipart_chunksize=max(5, self.config.multipart_chunksize_mb) * MiB,
            max_concurrency=4,
            preferred_transfer_client="classic",  # the CRT client ignores our botocore Config
        )
        # upload_fileobj, unlike upload_file, lets ClientError through for _errors to translate.
        with open(path, "rb") as f, self._errors("put", key):
            self._client.upload_fileobj(f, self.bucket, self._key(key), Config=transfer)

    def get_file(self, key: str, path: str) -> None:
        with _S3Reader(self, key) as reader, atomic_write(path) as dst:
            shutil.copyfileobj(reader, dst, 4 * MiB)

    def exists(self, key: str) -> bool:
        try:
            with self._errors("exists", key):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except KeyError:
            return False
        return True

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with self._errors("list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + _check_prefix(prefix))
            for page in pages:
                keys += [o["Key"][len(root):] for o in page.get("Contents", ())
                         if not o["Key"].endswith("/")]  # folder markers are not keys
        return sorted(keys)

    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(_S3Reader(self, key), MiB)

    def child(self, prefix: str) -> S3Storage:
        return S3Storage(self.bucket, self._key(prefix.rstrip("/")), self.config)

    def local_path(self, key: str) -> str | None:
        return None

    def stat(self, key: str) -> ObjectStat:
        with self._errors("stat", key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        return ObjectStat(int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))


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


# --------------------------------------------------------------------------- entry point

def open_storage(uri: str, config: S3Config | None = None) -> Storage:
    """A Storage for a path, file:// URI or s3://bucket/prefix (config: S3 settings, default from env)."""
    parts = split_uri(uri)
    if parts[0] == "s3":
        return S3Storage(parts[1], parts[2], config)
    return LocalStorage(parts[1])


def open_object(uri: str, config: S3Config | None = None) -> tuple[Storage, str]:
    """The storage that holds the object at ``uri``, and its key there.

    "/films/a.mp4" -> (LocalStorage("/films"), "a.mp4"); "s3://b/films/a.mp4" -> (S3Storage("b", "films"), "a.mp4").
    """
    parts = split_uri(uri)
    if parts[0] == "s3":
        prefix, _, name = parts[2].rpartition("/")
        if not name:
            raise StorageError(f"{uri}: names no object (use s3://bucket/path/name)")
        return S3Storage(parts[1], prefix, config), name
    path = os.path.abspath(parts[1])
    return LocalStorage(os.path.dirname(path)), os.path.basename(path)


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


def clear(storage: Storage) -> None:
    """Delete everything under ``storage`` (a local folder is removed with its subfolders)."""
    if isinstance(storage, LocalStorage):
        shutil.rmtree(storage.root, ignore_errors=True)
        return
    for key in storage.list():
        storage.delete(key)
