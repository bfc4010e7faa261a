"""Storage: the same behaviour on a local folder and on S3 (moto server), atomic local writes,
multipart uploads, clear errors, and S3 traffic through a fault-injecting proxy."""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time

import pytest
from faulty_proxy import FaultyProxy

from pipeline import storage
from pipeline.errors import FilmstyleError
from pipeline.storage import (InvalidKeyError, LocalStorage, S3Config, S3Storage, Storage,
                              StorageError, is_remote, open_storage, split_uri)

MiB = 1 << 20


def s3_config(endpoint: str, **kw) -> S3Config:
    return S3Config(endpoint_url=endpoint, region="us-east-1", **kw)


def direct_client(s3_server):
    """A plain boto3 client to moto itself, to check what really landed there."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_server)


def secrets_in(text: str) -> list[str]:
    return [s for s in (os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_ACCESS_KEY_ID"))
            if s and s in text]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Storage:
    if request.param == "local":
        return open_storage(str(tmp_path / "root"))
    server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/root", s3_config(server))


# ----------------------------------------------------------------------------- both backends

def test_put_get_exists_delete(store):
    assert isinstance(store, Storage)
    store.put("a/b.bin", b"\x00first")
    store.put("a/b.bin", b"second")  # overwrite
    assert store.get("a/b.bin") == b"second"
    assert store.exists("a/b.bin") and not store.exists("a/missing") and not store.exists("a")
    with pytest.raises(KeyError):
        store.get("a/missing")
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # absent: no error
    assert not store.exists("a/b.bin")
    store.put("empty", b"")
    assert store.get("empty") == b""


def test_list_and_child(store):
    keys = ["report.json", "shots/0001/flow.npz", "shots/0002/flow.npz", "shots/0010/x", "shotsheet"]
    for k in reversed(keys):
        store.put(k, k.encode())
    assert store.list() == keys
    assert store.list("shots/") == keys[1:4]
    assert store.list("shots/000") == keys[1:3]  # a partial name, as on S3
    assert store.list("shots") == keys[1:]
    assert store.list("nope/") == []

    shots = store.child("shots/")
    assert shots.uri.endswith("/root/shots")
    assert shots.list() == ["0001/flow.npz", "0002/flow.npz", "0010/x"]
    assert shots.get("0001/flow.npz") == b"shots/0001/flow.npz"
    shots.child("0003").put("y", b"y")
    assert store.get("shots/0003/y") == b"y"


def test_open_streams(store):
    data = os.urandom(3 * MiB + 7)
    store.put("big", data)
    with store.open("big") as f:
        parts = iter(lambda: f.read(100_000), b"")
        assert b"".join(parts) == data
    with pytest.raises(KeyError):
        store.open("nothing")


def test_put_file_get_file(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(MiB + 3))
    store.put_file("seg/000.mp4", str(src))
    dst = tmp_path / "out" / "deeper" / "000.mp4"  # missing folders are made
    store.get_file("seg/000.mp4", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert os.listdir(dst.parent) == ["000.mp4"]  # no temp file left behind

    with pytest.raises(KeyError):
        store.get_file("seg/missing.mp4", str(tmp_path / "out" / "missing.mp4"))
    assert not (tmp_path / "out" / "missing.mp4").exists()
    assert os.listdir(dst.parent) == ["000.mp4"]


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", "a//b", "", "a/./b", "a/", "..",
                                 "a\\..\\b", "seg" + storage._TMP_SUFFIX])
def test_bad_keys_rejected(store, key):
    calls = [lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key),
             lambda: store.delete(key), lambda: store.open(key)]
    if key != "a/":  # child("a/") is child("a")
        calls.append(lambda: store.child(key))
    for call in calls:
        with pytest.raises(InvalidKeyError):
            call()
    with pytest.raises(InvalidKeyError):
        store.list("../")
    assert store.list() == []


def test_local_path(store):
    store.put("clip.mp4", b"x")
    path = store.local_path("clip.mp4")
    if isinstance(store, LocalStorage):
        assert open(path, "rb").read() == b"x"
    else:
        assert path is None


# ----------------------------------------------------------------------------- local atomicity

def test_local_put_that_fails_midway_leaves_old_content(tmp_path, monkeypatch):
    store = LocalStorage(tmp_path)
    store.put("seg.bin", b"old")

    def fail_after_writing(*args):
        raise OSError("disk died before fsync")

    monkeypatch.setattr(storage.os, "fsync", fail_after_writing)
    with pytest.raises(OSError, match="disk died"):
        store.put("seg.bin", b"new" * 1000)
    monkeypatch.undo()

    def copy_half_then_fail(src, dst, *args):
        dst.write(src.read(10))
        raise OSError("source vanished")

    (tmp_path / "src").write_bytes(b"new" * 1000)
    monkeypatch.setattr(storage.shutil, "copyfileobj", copy_half_then_fail)
    with pytest.raises(OSError, match="vanished"):
        store.put_file("seg.bin", str(tmp_path / "src"))

    assert store.get("seg.bin") == b"old"
    assert sorted(os.listdir(tmp_path)) == ["seg.bin", "src"]  # temp files cleaned up


def test_local_writer_killed_midway_is_invisible(tmp_path):
    store = LocalStorage(tmp_path)
    store.put("clip/seg.bin", b"old")
    # A writer process dies after writing its data but before the rename.
    code = ("import os, sys\nfrom pipeline import storage\n"
            "storage.os.fsync = lambda fd: os._exit(3)\n"
            "storage.LocalStorage(sys.argv[1]).put('clip/seg.bin', b'new' * 100000)\n")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 3
    assert len(os.listdir(tmp_path / "clip")) == 2  # its temp file is really there...
    assert store.get("clip/seg.bin") == b"old"       # ...but readers never see it
    assert store.list() == ["clip/seg.bin"]


# ----------------------------------------------------------------------------- URIs and config

def test_uris_and_config(tmp_path, monkeypatch):
    assert split_uri("s3://bkt/a/b/") == ("s3", "bkt", "a/b")
    assert split_uri("s3://bkt") == ("s3", "bkt", "")
    assert split_uri("file:///tmp/x%20y") == ("file", "/tmp/x y")
    assert split_uri("rel/dir") == ("file", "rel/dir")
    assert is_remote("s3://b/p") and not is_remote("/tmp") and not is_remote("file:///tmp")
    for bad in ("gs://b/p", "s3:///p", "file://otherhost/p"):
        with pytest.raises(StorageError):
            split_uri(bad)
    local = open_storage(f"file://{tmp_path}")
    assert isinstance(local, LocalStorage) and local.root == str(tmp_path)
    remote = open_storage("s3://bkt/pre/", S3Config())
    assert isinstance(remote, S3Storage) and remote.uri == "s3://bkt/pre"
    assert remote.child("x/y").uri == "s3://bkt/pre/x/y"

    env = {"AWS_ENDPOINT_URL": "http://fallback:1", "AWS_DEFAULT_REGION": "eu-west-1",
           "AWS_PROFILE": "studio", "FILMSTYLE_S3_CHECKSUM": "when_supported",
           "FILMSTYLE_S3_MAX_ATTEMPTS": "3"}
    assert S3Config.from_env(env) == S3Config("http://fallback:1", "eu-west-1", "studio",
                                              "when_supported", 3)
    assert S3Config.from_env({**env, "FILMSTYLE_S3_ENDPOINT_URL": "http://ours:2"}).endpoint_url \
        == "http://ours:2"
    assert S3Config.from_env({}).checksum == "when_required"
    for bad in ({"FILMSTYLE_S3_CHECKSUM": "always"}, {"FILMSTYLE_S3_MAX_ATTEMPTS": "many"}):
        with pytest.raises(StorageError):
            S3Config.from_env(bad)


def test_registered_scheme_is_used_by_open_storage(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.base, "_SCHEMES", dict(storage.base._SCHEMES))  # undone after the test
    opened = []

    def open_mem(uri, config):  # a stand-in backend: "mem://name/prefix" is a folder under tmp_path
        opened.append((uri, config))
        _, name, prefix = split_uri(uri)
        return LocalStorage(tmp_path / name / prefix)

    storage.register_scheme("mem", open_mem)
    cfg = S3Config()
    store = open_storage("mem://box/a/b/", cfg)
    assert isinstance(store, LocalStorage) and store.root == str(tmp_path / "box" / "a" / "b")
    assert opened == [("mem://box/a/b/", cfg)]
    assert split_uri("mem://box/a/b/") == ("mem", "box", "a/b") and is_remote("mem://box/a")
    parent, key = storage.open_object("mem://box/a/clip.mp4")
    assert key == "clip.mp4" and parent.root == str(tmp_path / "box" / "a")
    with pytest.raises(StorageError, match="names no object"):
        storage.open_object("mem://box")
    with pytest.raises(StorageError, match=r"unsupported storage scheme 'gs' \(use a path, file://, mem:// or s3://\)"):
        open_storage("gs://b/p")


def test_unknown_scheme_is_one_clear_error():
    for call in (open_storage, storage.open_object, split_uri):
        with pytest.raises(StorageError) as err:
            call("gs://bucket/films/a.mp4")
        assert isinstance(err.value, FilmstyleError)
        assert str(err.value) == ("gs://bucket/films/a.mp4: unsupported storage scheme 'gs' "
                                  "(use a path, file:// or s3://)")


# ----------------------------------------------------------------------------- S3 specifics

def test_s3_multipart_put_file(s3_server, s3_bucket, tmp_path):
    cfg = s3_config(s3_server, multipart_threshold_mb=1, multipart_chunksize_mb=5)
    store = open_storage(f"s3://{s3_bucket}/mezz", cfg)
    src = tmp_path / "film.mkv"
    src.write_bytes(os.urandom(11 * MiB))
    store.put_file("film.mkv", str(src))
    head = direct_client(s3_server).head_object(Bucket=s3_bucket, Key="mezz/film.mkv")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    store.get_file("film.mkv", str(tmp_path / "back.mkv"))
    assert (tmp_path / "back.mkv").read_bytes() == src.read_bytes()


def test_s3_pickles_without_client_or_credentials(s3_server, s3_bucket):
    store = open_storage(f"s3://{s3_bucket}/p", s3_config(s3_server))
    store.put("k", b"v")  # a client now exists in this process
    blob = pickle.dumps(store)
    assert not secrets_in(blob.decode("latin-1"))
    clone = pickle.loads(blob)
    assert clone.get("k") == b"v" and clone.uri == store.uri
    for text in (repr(store), str(store), repr(store.config)):
        assert not secrets_in(text)
    assert repr(store) == f"S3Storage('s3://{s3_bucket}/p')"


def test_s3_missing_bucket_is_one_clear_error(s3_server):
    store = open_storage("s3://no-such-bucket-fs/out", s3_config(s3_server))
    for call in (lambda: store.get("k"), lambda: store.put("k", b"x"), lambda: store.exists("k"),
                 lambda: store.list(), lambda: store.delete("k")):
        with pytest.raises(StorageError) as err:
            call()
        msg = str(err.value)
        assert isinstance(err.value, FilmstyleError)
        assert "s3://no-such-bucket-fs/out" in msg and "does not exist" in msg
        assert "\n" not in msg and not secrets_in(msg)


def test_s3_unreachable_endpoint_fails_fast_and_clearly(s3_server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = s3_config(f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout=0.5, read_timeout=0.5)
    store = open_storage("s3://bkt/x", cfg)
    start = time.monotonic()
    for call in (lambda: store.get("k"), lambda: store.put("k", b"x"), lambda: store.exists("k")):
        with pytest.raises(StorageError, match=r"s3://bkt/x: cannot reach .* after 2 attempts") as err:
            call()
        assert not secrets_in(str(err.value))
    assert time.monotonic() - start < 15


def test_s3_access_denied_is_one_clear_error(s3_server, s3_bucket):
    with FaultyProxy(s3_server, plan=["403"]) as proxy:
        store = open_storage(f"s3://{s3_bucket}/p", s3_config(proxy.url))
        with pytest.raises(StorageError, match=rf"s3://{s3_bucket}/p: access denied \(AccessDenied\)") as err:
            store.put("k", b"x")
        assert not secrets_in(str(err.value))
        assert len(proxy.log) == 1  # not retried: it cannot get better


# ----------------------------------------------------------------------------- faults

def test_s3_survives_a_faulty_network(s3_server, s3_bucket, tmp_path):
    """500s, SlowDowns, dropped connections and responses cut mid-body, on a fixed schedule:
    every operation still succeeds and every byte read back is identical."""
    sizes = [0, 1, 5000, 150_000, 400_000, 900_000, 1_300_000, 2_000_000]
    payloads = {f"obj/{i:02d}.bin": os.urandom(n) for i, n in enumerate(sizes)}
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MiB))
    with FaultyProxy(s3_server) as proxy:
        cfg = s3_config(proxy.url, multipart_threshold_mb=1, multipart_chunksize_mb=5)
        store = open_storage(f"s3://{s3_bucket}/flaky", cfg)
        for key, data in payloads.items():
            store.put(key, data)
        store.put_file("big.bin", str(big))  # multipart: create, 3 parts, complete
        assert store.list("obj/") == sorted(payloads)
        for key, data in payloads.items():
            assert store.exists(key)
            assert store.get(key) == data
            with store.open(key) as f:
                assert f.read() == data
            store.get_file(key, str(tmp_path / "back.bin"))
            assert (tmp_path / "back.bin").read_bytes() == data
        assert store.get("big.bin") == big.read_bytes()
        for key in list(payloads)[::2]:
            store.delete(key)
        assert store.list("obj/") == sorted(payloads)[1::2]

    counts = proxy.counts()
    assert all(counts[f] >= 2 for f in ("500", "503", "drop", "cut")), counts
    # at least one break mid-body was resumed with a ranged GET rather than started over
    assert any(r.range and r.range != "bytes=0-" for r in proxy.log), proxy.log
    # what is in the bucket is exactly what was written
    moto = direct_client(s3_server)
    for key in sorted(payloads)[1::2]:
        assert moto.get_object(Bucket=s3_bucket, Key=f"flaky/{key}")["Body"].read() == payloads[key]
    assert moto.get_object(Bucket=s3_bucket, Key="flaky/big.bin")["Body"].read() == big.read_bytes()


def test_s3_read_resumes_where_the_stream_broke(s3_server, s3_bucket):
    data = os.urandom(3 * MiB)
    # Cut the first two GETs mid-body; the third finishes the object.
    cut_gets = lambda n, method, path: "cut" if method == "GET" and n <= 2 else None  # noqa: E731
    with FaultyProxy(s3_server, plan=cut_gets) as proxy:
        store = open_storage(f"s3://{s3_bucket}", s3_config(proxy.url))
        store.put("clip.bin", data)
        assert store.get("clip.bin") == data
    gets = [r for r in proxy.log if r.method == "GET"]
    offsets = [int(r.range[len("bytes="):-1]) for r in gets[1:]]
    assert [r.fault for r in gets] == ["cut", "cut", None] and gets[0].range is None
    assert 0 < offsets[0] < offsets[1] < len(data)  # each retry asks only for what is missing


def test_s3_read_gives_up_after_max_attempts(s3_server, s3_bucket):
    """A stream that keeps breaking with no progress ends in one clear error, not a loop."""
    data = os.urandom(MiB)
    no_body = lambda n, method, path: "cut0" if method == "GET" else None  # noqa: E731
    with FaultyProxy(s3_server, plan=no_body) as proxy:
        store = open_storage(f"s3://{s3_bucket}", s3_config(proxy.url, max_attempts=3))
        store.put("clip.bin", data)
        with pytest.raises(StorageError, match=r"reading 'clip.bin' broke off at byte \d+ of 1048576"):
            store.get("clip.bin")
    assert [r.fault for r in proxy.log if r.method == "GET"] == ["cut0"] * 3
