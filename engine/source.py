"""The input: fetched to this node, probed, VFR normalised, its shots; the output checked before any work.

* ``check_output`` fails before any work when the output cannot be written.
* ``prepare_source`` probes the input (an s3:// input is downloaded once per node, into
  CACHE/sources named by its content hash) and normalises a VFR one to a CFR mezzanine.
* ``node_file`` gives any node its local copy of a file the planning node named (a path on a
  shared filesystem, or an s3:// object downloaded once per node under a node lock and verified
  against its hash): how workers read the source and the style.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline import media
from pipeline.delivery import SEQUENCE_MANIFEST, Delivery
from pipeline.errors import InputError, OutputError
from pipeline.hashing import file_hash
from pipeline.jsonfile import read_json_dict, write_json_atomic
from pipeline.paths import cache_root
from pipeline.shots import ShotParams, detect_shots
from pipeline.storage import S3Config, StorageError, is_remote, open_object, split_uri



@dataclass
class Source:
    """The input as the pipeline reads it (a CFR mezzanine when the original is VFR).

    ``path`` is a local file on the node that made this object; ``uri`` is where other nodes
    read the same bytes (a path, or s3://...), ``uri_hash`` their content hash.
    """

    original: str
    path: str
    info: media.VideoInfo
    hash: str
    uri: str = ""  # '' = path
    uri_hash: str = ""  # '' = hash

    def to_dict(self) -> dict:
        return {"original": self.original, "path": self.path, "info": self.info.to_dict(), "hash": self.hash,
                "uri": self.uri, "uri_hash": self.uri_hash}

    @classmethod
    def from_dict(cls, d: dict) -> Source:
        return cls(original=d["original"], path=d["path"], info=media.VideoInfo.from_dict(d["info"]),
                   hash=d["hash"], uri=d.get("uri", ""), uri_hash=d.get("uri_hash", ""))


@contextmanager
def _node_lock(folder: Path, name: str):
    """An exclusive lock among the processes of this node (flock), so a file downloads once."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / f".lock-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _suffix(key: str) -> str:
    suffix = Path(key).suffix
    return suffix if suffix.isascii() and len(suffix) <= 16 else ""


def fetch_input(uri: str, s3: S3Config | None = None, cache_dir: str | None = None) -> str:
    """A local file holding the object at ``uri``: the path itself for local storage; for s3://
    a copy in CACHE/sources named by its content hash, downloaded once per node (a memo keyed by
    URI, size and ETag finds it again without reading the bucket)."""
    store, key = open_object(uri, s3)
    local = store.local_path(key)
    if local is not None:
        return local
    try:
        stat = store.stat(key)
    except KeyError:
        raise InputError(f"{uri}: file not found") from None
    folder = cache_root(cache_dir) / "sources"
    ident = f"{uri}|{stat.size}|{stat.version}"
    with _node_lock(folder, uri):
        index = read_json_dict(folder / "index.json")
        digest = index.get(ident)
        if digest and (folder / f"{digest}{_suffix(key)}").is_file():
            return str(folder / f"{digest}{_suffix(key)}")
        tmp = folder / f".download-{uuid.uuid4().hex[:8]}{_suffix(key)}"
        try:
            store.get_file(key, str(tmp))
            digest = file_hash(str(tmp))
            final = folder / f"{digest}{_suffix(key)}"
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        index[ident] = digest
        write_json_atomic(folder / "index.json", dict(list(index.items())[-2000:]))
    return str(final)


def node_file(uri: str, content_hash: str, s3: S3Config | None = None, cache_dir: str | None = None, *,
              known: str | None = None) -> str:
    """This node's local copy of the file at ``uri`` whose content hash is ``content_hash``.

    ``known`` is the path the planning node used: taken when it exists here with that content (one
    machine, or a shared filesystem). Local storage gives its own path; s3:// downloads once per
    node into CACHE/sources/HASH.ext (under a node lock, verified against the hash).
    """
    if known and os.path.isfile(known) and media.content_hash(known, cache_dir=cache_dir) == content_hash:
        return known
    store, key = open_object(uri, s3)
    local = store.local_path(key)
    if local is not None:
        if not os.path.isfile(local):
            raise InputError(f"{uri}: not visible on this node; use an s3:// URI or a path on a shared "
                             "filesystem for inputs and work folders of a multi-node render")
        return local
    folder = cache_root(cache_dir) / "sources"
    final = folder / f"{content_hash}{_suffix(key)}"
    if final.is_file():
        return str(final)
    with _node_lock(folder, content_hash):
        if final.is_file():
            return str(final)
        tmp = folder / f".download-{uuid.uuid4().hex[:8]}{_suffix(key)}"
        try:
            try:
                store.get_file(key, str(tmp))
            except KeyError:
                raise InputError(f"{uri}: file not found") from None
            got = file_hash(str(tmp))
            if got != content_hash:
                raise StorageError(f"{uri}: content changed since the render was planned "
                                   f"(hash {got[:12]}, expected {content_hash[:12]})")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return str(final)


def check_output(output: str, input_path: str, s3: S3Config | None = None,
                 delivery: Delivery | None = None) -> str:
    """Fail before any work if the output cannot be written. Returns the output path or URI.

    ``delivery``: the codec decides whether OUT is a video file (its suffix must fit) or a folder
    of images (which may exist only as an earlier image-sequence render of filmstyle's)."""
    delivery = delivery or Delivery()
    try:
        delivery.check_output(output)
    except InputError as e:
        raise OutputError(str(e)) from None
    if is_remote(output):
        store, key = open_object(output, s3)
        if output.rstrip("/") == str(input_path).rstrip("/"):
            raise OutputError(f"{output}: output would overwrite the input")
        store.exists(key)  # a missing bucket or refused credentials fail here, in one line
        return output
    out = Path(split_uri(output)[1])
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{out}: output directory {parent} does not exist")
    try:  # a real write: permissions alone miss read-only mounts and root's rights
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise OutputError(f"{out}: output directory {parent} is not writable ({e.strerror})") from None
    if delivery.sequence:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: is a file; --codec {delivery.codec} writes a folder")
        if out.is_dir() and any(out.iterdir()) and not (out / SEQUENCE_MANIFEST).is_file():
            raise OutputError(f"{out}: folder is not empty and holds no earlier filmstyle image sequence "
                              f"({SEQUENCE_MANIFEST}); give a new or empty folder")
    elif out.exists() and out.is_dir():
        raise OutputError(f"{out}: is a directory")
    if not is_remote(str(input_path)) and Path(input_path).exists() and out.exists() \
            and out.resolve() == Path(input_path).resolve():
        raise OutputError(f"{out}: output would overwrite the input")
    return str(out)


def prepare_source(path: str, cache_dir: str | None = None, *, s3: S3Config | None = None) -> Source:
    """Probe the input (downloading an s3:// input once per node) and normalise a VFR one."""
    local = fetch_input(path, s3, cache_dir)
    try:
        info = media.probe(local)
    except InputError as e:  # name the URI the user gave, not our cache file
        raise InputError(str(e).replace(local, str(path))) from None
    readable = media.normalize_vfr(local, cache_root(cache_dir) / "mezzanine") if info.is_vfr else str(local)
    if readable != str(local):
        info = media.probe(readable)
    digest = media.content_hash(local, cache_dir=cache_dir)
    if readable == str(local):
        uri, uri_hash = (str(path) if is_remote(str(path)) else os.path.abspath(local)), digest
    else:
        uri, uri_hash = readable, media.content_hash(readable, cache_dir=cache_dir)
    return Source(original=str(path), path=readable, info=info, hash=digest, uri=uri, uri_hash=uri_hash)


def find_shots(source: Source, params: ShotParams, cache_dir: str | None = None, progress=None):
    """The shot list (cached by the source's content hash and the detector's parameters)."""
    return detect_shots(source.path, params, frame_count=source.info.frame_count,
                        cache_dir=cache_root(cache_dir) / "shots", source_hash=source.hash, progress=progress)


def delivery_size(info: media.VideoInfo, out_width: int | None) -> tuple[int, int]:
    width = out_width or info.display_size[0]
    return media.working_size(info, width)
