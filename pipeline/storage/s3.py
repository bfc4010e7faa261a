"""The S3 backend: ``S3Config``, the per-process boto3 clients and ``S3Storage``; registered for s3://.

The boto3 client is made lazily, once per process and config, so a storage object pickles to a
Ray worker as plain data (URI + config, never credentials: the worker finds its own). botocore
retries requests; a stream that breaks after the response headers (which botocore cannot retry)
is resumed by ``s3_stream._S3Reader`` with a ranged GET. Errors a user can act on become one
``StorageError`` line naming the URI.
"""
from __future__ import annotations

import io
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from .base import MiB, ObjectStat, StorageError, _check_key, _check_prefix, register_scheme
from .local import atomic_write
from .s3_stream import _S3Reader
from .uri import split_uri

_CHECKSUM_MODES = ("when_required", "when_supported")
_RETRY_MODES = ("standard", "adaptive")


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


def _open_s3(uri: str, config: S3Config | None = None) -> S3Storage:
    _, bucket, prefix = split_uri(uri)
    return S3Storage(bucket, prefix, config)


register_scheme("s3", _open_s3)
