"""The render stages as plain functions, the units of work both engines run, and the in-process engine.

probe -> shots -> plan -> flow -> per chunk (decode, stylize, upscale, encode, commit) -> assemble.

Both engines call the same functions: this module's ``render`` (``--engine local``) chains them in
one process; the Prefect + Ray engine (flows/, tasks/) runs them as tasks and on Ray workers.

* ``prepare_source``, ``find_shots`` and ``plan_job`` make a ``RenderJob``: plain, picklable data
  (config, source, plan, sizes, where the work, the flow cache and the output live), saved as
  ``job.json`` in the work storage so any process can load it by URI.
* ``flow_for_chunk`` (the flow of one chunk's pairs, bridging pair included) and
  ``ChunkWorker.run`` (one chunk: decode, stylize, upscale, encode, commit) are the units of
  parallel work. A worker reads the source from a local path when the storage gives one, else
  downloads it once per node into a cache keyed by its content hash (``node_file``).
* ``assemble_output`` concatenates the committed segments, muxes the audio and writes the output
  (and a PNG contact strip beside it); ``write_report`` writes the JSON report.

Every artifact goes through pipeline.storage, so input, output, work folder and flow cache may each
be a local path or an s3:// URI. Chunk results are committed idempotently and once: the encoded
segment and the carry state are written (each atomically), then a done marker; a killed render that
is run again skips every committed chunk.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import media
from .jsonfile import read_json_dict, write_json_atomic
from .errors import InputError, OutputError
from .flow import CachedFlowSource, FlowCache, compute_flows, make_flow_backend
from .plan import Chunk, RenderPlan, flow_pairs, make_plan
from .shots import ShotParams, detect_shots
from .storage import (LocalStorage, S3Config, Storage, StorageError, clear, is_remote, join_uri, open_object,
                      open_storage, parent_uri, split_uri)
from .stylize import CarryState, Stylizer, configure_threads, make_stylizer
from .upscale import make_upscaler

DEFAULT_STYLE = "starry_night"
OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")
JOB_KEY = "job.json"


@dataclass
class RenderConfig:
    input: str
    output: str
    style: str = DEFAULT_STYLE
    method: str = "per-frame"
    width: int = 640  # working width: the net runs at this size
    style_scale: float = 1.0  # stroke size: the net runs at width / style_scale, resized back (NetRunner)
    out_width: int | None = None  # delivery width; None keeps the source's display width
    chunk_frames: int = 48
    upscaler: str = "lanczos"
    crf: int = 18
    preset: str = "medium"
    precision: str = "fp32"
    batch: int = 1
    detector: str = "adaptive"
    threshold: float | None = None
    min_shot_frames: int = 15
    flow_backend: str = "dis"
    flow_preset: str = "medium"  # DIS preset
    flow_cache: str | None = None  # URI (folder or s3://); default: CACHE/flow, or beside an s3:// output
    soft_mask: bool = False
    strength: float = 0.6  # flow-blend: see FlowBlendStylizer for the trade-off
    refine: bool = False  # flow-blend
    blend_mask: str = "photometric"  # flow-blend: photometric | consistency
    keep_detail: bool = True  # flow-blend
    workdir: str | None = None  # URI; default: CACHE/work/KEY, or beside an s3:// output
    cache_dir: str | None = None  # node-local cache root (downloads, shots, mezzanines)
    keep_work: bool = False
    threads: int | None = None  # torch threads (local engine) or per stylizer actor (Ray engine)
    report: str | None = None  # default: OUTPUT.report.json
    # S3 settings over the environment's (FILMSTYLE_S3_*, AWS_*); None keeps the environment's.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_profile: str | None = None
    s3_checksum: str | None = None  # when_required | when_supported

    def shot_params(self) -> ShotParams:
        return ShotParams(detector=self.detector, threshold=self.threshold, min_shot_frames=self.min_shot_frames)

    def method_options(self) -> dict:
        return {"strength": self.strength, "refine": self.refine, "blend_mask": self.blend_mask,
                "keep_detail": self.keep_detail}

    def flow_backend_params(self) -> dict:
        return {"preset": self.flow_preset} if self.flow_backend == "dis" else {}

    def s3_config(self) -> S3Config:
        """The environment's S3 settings with this config's overrides (resolved once, on the head)."""
        over = {"endpoint_url": self.s3_endpoint_url, "region": self.s3_region, "profile": self.s3_profile,
                "checksum": self.s3_checksum}
        return dataclasses.replace(S3Config.from_env(), **{k: v for k, v in over.items() if v})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RenderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown render option(s): {', '.join(unknown)}")
        return cls(**d)


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


class StageTimer:
    """Seconds spent per stage; stages may be entered many times (once per chunk)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def merge(self, seconds: dict[str, float]) -> None:
        for stage, s in seconds.items():
            self.add(stage, s)


def cache_root(cfg_cache: str | None = None) -> Path:
    root = cfg_cache or os.environ.get("FILMSTYLE_CACHE") or Path.home() / ".cache" / "filmstyle"
    return Path(root)


# ---------------------------------------------------------------- files on this node


def _file_hash(path: str) -> str:
    """BLAKE2b-256 of a file's bytes: the same digest as media.content_hash, without its memo."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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
            digest = _file_hash(str(tmp))
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
    if known and os.path.isfile(known) and media.content_hash(known) == content_hash:
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
            got = _file_hash(str(tmp))
            if got != content_hash:
                raise StorageError(f"{uri}: content changed since the render was planned "
                                   f"(hash {got[:12]}, expected {content_hash[:12]})")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return str(final)


# ---------------------------------------------------------------- stages


def check_output(output: str, input_path: str, s3: S3Config | None = None) -> str:
    """Fail before any work if the output cannot be written. Returns the output path or URI."""
    if is_remote(output):
        store, key = open_object(output, s3)
        if Path(key).suffix.lower() not in OUTPUT_SUFFIXES:
            raise OutputError(f"{output}: unsupported output type {Path(key).suffix or '(none)'}; "
                              f"use {', '.join(OUTPUT_SUFFIXES)}")
        if output.rstrip("/") == str(input_path).rstrip("/"):
            raise OutputError(f"{output}: output would overwrite the input")
        store.exists(key)  # a missing bucket or refused credentials fail here, in one line
        return output
    out = Path(split_uri(output)[1])
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"{out}: unsupported output type {out.suffix or '(none)'}; use {', '.join(OUTPUT_SUFFIXES)}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{out}: output directory {parent} does not exist")
    try:  # a real write: permissions alone miss read-only mounts and root's rights
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise OutputError(f"{out}: output directory {parent} is not writable ({e.strerror})") from None
    if out.exists() and out.is_dir():
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
    digest = media.content_hash(local)
    if readable == str(local):
        uri, uri_hash = (str(path) if is_remote(str(path)) else os.path.abspath(local)), digest
    else:
        uri, uri_hash = readable, media.content_hash(readable)
    return Source(original=str(path), path=readable, info=info, hash=digest, uri=uri, uri_hash=uri_hash)


def find_shots(source: Source, params: ShotParams, cache_dir: str | None = None, progress=None):
    return detect_shots(source.path, params, frame_count=source.info.frame_count,
                        cache_dir=cache_root(cache_dir) / "shots", source_hash=source.hash, progress=progress)


def delivery_size(info: media.VideoInfo, out_width: int | None) -> tuple[int, int]:
    width = out_width or info.display_size[0]
    return media.working_size(info, width)


def chunk_flow_source(cache: FlowCache, backend, frames: np.ndarray, chunk: Chunk,
                      state: CarryState | None) -> CachedFlowSource:
    """Flow for the chunk's pairs from the cache; a missing or corrupt entry is recomputed from
    the chunk's frames (and the previous chunk's last frame, carried in the state)."""
    lookup = {chunk.start + i: f for i, f in enumerate(frames)}
    if state is not None and state.last_source is not None:
        lookup[chunk.start - 1] = state.last_source
    return CachedFlowSource(cache, backend, lookup)


def render_chunk(plan: RenderPlan, chunk: Chunk, source: Source, stylizer: Stylizer, state: CarryState | None,
                 segment: Path, *, out_size: tuple[int, int], upscaler, crf: int, preset: str,
                 timer: StageTimer, flow: tuple[FlowCache, object] | None = None, on_frames=None) -> CarryState:
    """Decode, stylize, upscale and encode one chunk to ``segment``; return the carry-out state.

    ``flow`` is (cache, backend) for methods that need optical flow.
    """
    with timer("decode"):
        frames = np.stack(list(media.decode_frames(source.info, chunk.start, chunk.end, plan.working_size,
                                                   chunk_hint=chunk.length)))
    flow_source = chunk_flow_source(*flow, frames, chunk, state) if flow else None
    with timer("stylize"):
        out, state = stylizer.stylize(frames, chunk.start, state, flow=flow_source)
    with timer("upscale"):
        out = upscaler(out, out_size)
    with timer("encode"):
        with media.SegmentWriter(segment, plan.fps, out_size, crf=crf, preset=preset) as writer:
            writer.write(out)
    if on_frames:
        on_frames(chunk.length)
    return state


# ---------------------------------------------------------------- the job


def work_key(source: Source, stylizer: Stylizer, cfg: RenderConfig, out_size: tuple[int, int]) -> str:
    spec = {"source": source.hash, "stylizer": stylizer.params(), "width": cfg.width,
            "out": list(out_size), "chunk": cfg.chunk_frames, "crf": cfg.crf, "preset": cfg.preset,
            "upscaler": cfg.upscaler, "shots": asdict(cfg.shot_params())}
    if stylizer.needs_flow:
        spec["flow"] = {"backend": cfg.flow_backend, **cfg.flow_backend_params(), "soft": cfg.soft_mask}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def flow_only_key(source: Source, cfg: RenderConfig) -> str:
    spec = {"source": source.hash, "width": cfg.width, "chunk": cfg.chunk_frames, "shots": asdict(cfg.shot_params()),
            "flow": {"backend": cfg.flow_backend, **cfg.flow_backend_params(), "soft": cfg.soft_mask}}
    return "flow-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def default_work_uri(cfg: RenderConfig, key: str) -> str:
    """--workdir as given; else beside an s3:// output, or in an s3:// flow cache (so every node
    sees it); else CACHE/work/KEY."""
    if cfg.workdir:
        return cfg.workdir
    if is_remote(cfg.output):
        return join_uri(parent_uri(cfg.output), ".filmstyle", "work", key)
    if cfg.flow_cache and is_remote(cfg.flow_cache):
        return join_uri(cfg.flow_cache, "work", key)
    return str(cache_root(cfg.cache_dir) / "work" / key)


def default_flow_cache_uri(cfg: RenderConfig) -> str:
    if cfg.flow_cache:
        return cfg.flow_cache
    if is_remote(cfg.output):
        return join_uri(parent_uri(cfg.output), ".filmstyle", "flow-cache")
    return str(cache_root(cfg.cache_dir) / "flow")


@dataclass
class RenderJob:
    """Everything a worker needs to compute flow for, or render, any chunk of one render."""

    cfg: RenderConfig
    source: Source
    plan: RenderPlan
    key: str
    work_uri: str
    s3: S3Config
    out_size: tuple[int, int] = (0, 0)
    style_uri: str | None = None  # None: a flow-only job (precompute-flow)
    style_hash: str = ""
    style_path: str | None = None  # the path on the planning node
    stylizer: dict = field(default_factory=dict)  # the stylizer's params (method, model hash, ...)
    model_card: dict = field(default_factory=dict)
    needs_flow: bool = False
    flow_cache_uri: str | None = None
    chained: bool = True  # chunk j of a shot needs chunk j-1's carry state (False: per-frame methods)

    @property
    def working_size(self) -> tuple[int, int]:
        return self.plan.working_size

    @property
    def output_uri(self) -> str:
        return self.cfg.output

    @property
    def report_uri(self) -> str:
        return self.cfg.report or f"{self.cfg.output}.report.json"

    def _index(self) -> dict[str, int]:
        index = self.__dict__.get("_chunk_index")
        if index is None:
            index = self.__dict__["_chunk_index"] = {c.id: i for i, c in enumerate(self.plan.chunks)}
        return index

    def chunk(self, chunk_id: str) -> Chunk:
        try:
            return self.plan.chunks[self._index()[chunk_id]]
        except KeyError:
            raise ValueError(f"chunk {chunk_id!r} is not in the plan of {self.work_uri}") from None

    def previous(self, chunk: Chunk) -> Chunk | None:
        if chunk.first_in_shot:
            return None
        return self.plan.chunks[self._index()[chunk.id] - 1]

    def work(self) -> Storage:
        return open_storage(self.work_uri, self.s3)

    def chunk_store(self) -> ChunkStore:
        return ChunkStore(self.work())

    def flow_cache(self) -> tuple[FlowCache, object]:
        backend = make_flow_backend(self.cfg.flow_backend, **self.cfg.flow_backend_params())
        cache = FlowCache(open_storage(self.flow_cache_uri, self.s3), self.source.hash, self.working_size, backend,
                          soft=self.cfg.soft_mask)
        return cache, backend

    def to_json(self) -> str:
        d = {"cfg": self.cfg.to_dict(), "source": self.source.to_dict(), "plan": self.plan.to_dict(),
             "s3": asdict(self.s3)}
        for f in dataclasses.fields(self):
            if f.name not in d:
                d[f.name] = getattr(self, f.name)
        return json.dumps(d, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> RenderJob:
        d = json.loads(text)
        d["cfg"] = RenderConfig.from_dict(d["cfg"])
        d["source"] = Source.from_dict(d["source"])
        d["plan"] = RenderPlan.from_dict(d["plan"])
        d["s3"] = S3Config(**d["s3"])
        d["out_size"] = tuple(d["out_size"])
        return cls(**d)


def save_job(job: RenderJob) -> None:
    job.work().put(JOB_KEY, job.to_json().encode())


def load_job(work_uri: str, s3: S3Config | None = None) -> RenderJob:
    try:
        return RenderJob.from_json(open_storage(work_uri, s3).get(JOB_KEY).decode())
    except KeyError:
        raise InputError(f"{work_uri}: no {JOB_KEY} here (not a filmstyle work folder)") from None


def _share(store: Storage, key: str, path: str) -> None:
    """Upload ``path`` to ``key`` unless an object of that size is there already."""
    try:
        if store.stat(key).size == os.path.getsize(path):
            return
    except KeyError:
        pass
    store.put_file(key, path)


def plan_job(cfg: RenderConfig, source: Source, shots, *, style_path: str | os.PathLike | None,
             s3: S3Config | None = None, share_files: bool = False, stylizer: Stylizer | None = None) -> RenderJob:
    """Plan the chunks, key the work, pick the storages, write job.json; return the job.

    ``share_files``: copy the decodable source and the style checkpoint into the work storage
    when they are local files, so workers on other nodes can fetch them (multi-node renders
    with s3:// work storage).
    """
    s3 = s3 or cfg.s3_config()
    info = source.info
    # Never run the net above the source's resolution: it costs time and adds nothing.
    working = media.working_size(info, min(cfg.width, info.display_size[0]))
    out_size = delivery_size(info, cfg.out_width)
    plan = make_plan(source.hash, info.frame_count, info.fps, working, shots, max_chunk_frames=cfg.chunk_frames)
    style_uri = style_hash = None
    params, card, needs_flow, chained = {}, {}, True, True
    if style_path is not None:
        if stylizer is None:
            stylizer = make_stylizer(cfg.method, style_path, precision=cfg.precision, batch=cfg.batch,
                                     style_scale=cfg.style_scale,
                                     **cfg.method_options())
        params = dict(stylizer.params())
        card = getattr(getattr(stylizer, "run", None), "card", {}) or {}
        needs_flow = bool(stylizer.needs_flow)
        chained = bool(getattr(stylizer, "carries_state", True))
        key = work_key(source, stylizer, cfg, out_size)
        style_uri, style_hash = os.path.abspath(style_path), media.content_hash(style_path)
    else:
        key = flow_only_key(source, cfg)
    job = RenderJob(cfg=cfg, source=source, plan=plan, key=key, work_uri=default_work_uri(cfg, key), s3=s3,
                    out_size=out_size, style_uri=style_uri, style_hash=style_hash or "",
                    style_path=str(style_path) if style_path else None, stylizer=params, model_card=card,
                    needs_flow=needs_flow, flow_cache_uri=default_flow_cache_uri(cfg) if needs_flow else None,
                    chained=chained)
    work = job.work()
    try:  # a --workdir holding another render's chunks must not pass them off as this one's
        other = json.loads(work.get(JOB_KEY)).get("key")
    except (KeyError, ValueError):
        other = None
    if other not in (None, key):
        raise OutputError(f"{job.work_uri}: this work folder holds another render's chunks (job {other}); "
                          "use another --workdir or remove it")
    if share_files and is_remote(job.work_uri):
        if not is_remote(source.uri or source.path):
            key_src = f"inputs/{source.uri_hash or source.hash}{_suffix(source.path)}"
            _share(work, key_src, source.path)
            job.source = dataclasses.replace(source, uri=join_uri(job.work_uri, key_src))
        if style_uri and not is_remote(style_uri):
            key_style = f"inputs/style-{style_hash}.safetensors"
            _share(work, key_style, style_uri)
            job.style_uri = join_uri(job.work_uri, key_style)
    save_job(job)
    return job


def node_source(job: RenderJob, cache_dir: str | None = None) -> Source:
    """The job's source as this node reads it (see ``node_file``)."""
    src = job.source
    path = node_file(src.uri or src.path, src.uri_hash or src.hash, job.s3, cache_dir or job.cfg.cache_dir,
                     known=src.path)
    if path == src.path:
        return src
    return dataclasses.replace(src, path=path, info=dataclasses.replace(src.info, path=path))


# ---------------------------------------------------------------- flow (the parallel unit)


def flow_marker_key(cache: FlowCache, pairs) -> str:
    """Key of the marker saying every pair in ``pairs`` is stored (one read instead of one per pair)."""
    blob = "|".join(cache.key(b) for _, b in pairs)
    return f"flowdone/{cache.source_hash[:16]}/{hashlib.sha256(blob.encode()).hexdigest()}"


def flow_chunk_key(job: RenderJob, chunk: Chunk) -> str:
    """Content key of one chunk's flow (source, pairs, size, backend, mask options)."""
    cache, _ = job.flow_cache()
    return flow_marker_key(cache, flow_pairs(job.plan, chunk)).rpartition("/")[2]


def flow_chunk_done(job: RenderJob, chunk: Chunk) -> bool:
    cache, _ = job.flow_cache()
    return cache.storage.exists(flow_marker_key(cache, flow_pairs(job.plan, chunk)))


def flow_for_chunk(job: RenderJob, chunk: Chunk) -> dict:
    """Fill the flow cache with the pairs ending in ``chunk`` (the bridging pair from the previous
    chunk of the shot included); returns {"chunk", "pairs", "computed", "cached"}."""
    cache, backend = job.flow_cache()
    pairs = flow_pairs(job.plan, chunk)
    marker = flow_marker_key(cache, pairs)
    if cache.storage.exists(marker):
        return {"chunk": chunk.id, "pairs": len(pairs), "computed": 0, "cached": len(pairs)}
    if all(cache.has(b) for _, b in pairs):
        counts = {"pairs": len(pairs), "computed": 0, "cached": len(pairs)}
    else:
        counts = compute_flows(node_source(job).info, job.plan, pairs, backend, cache)
    cache.storage.put(marker, json.dumps({"chunk": chunk.id, "pairs": len(pairs)}).encode())
    return {"chunk": chunk.id, **counts}


def compute_flow_stage(job: RenderJob, timer: StageTimer, progress: bool) -> dict:
    """Fill the flow cache for every pair inside a shot, in this process (one decode pass over
    the film); a restyle of the same film computes none."""
    from tqdm import tqdm

    cache, backend = job.flow_cache()
    pairs = flow_pairs(job.plan)
    with timer("flow"):
        bar = tqdm(total=len(pairs), desc="flow", unit="pair", disable=not progress, leave=False)
        counts = compute_flows(node_source(job).info, job.plan, pairs, backend, cache,
                               progress=lambda done, total: bar.update(1))
        bar.close()
    return flow_report(job, counts)


def flow_report(job: RenderJob, counts: dict) -> dict:
    cfg = job.cfg
    return {"backend": cfg.flow_backend, **cfg.flow_backend_params(), "cache": job.flow_cache_uri,
            "pairs": counts["pairs"], "computed": counts["computed"], "cache_hits": counts["cached"]}


# ---------------------------------------------------------------- chunk commits


class ChunkStore:
    """Segments, carry states and done markers of one render, in a work storage (folder or s3://).

    A chunk is committed once: segment, then state (each written atomically), then the marker.
    A chunk counts as done only when its marker reads back and the segment has the size the
    marker records, so a render killed at any point resumes without recomputing committed chunks.
    """

    def __init__(self, storage: Storage | str | os.PathLike):
        self.storage = storage if isinstance(storage, Storage) else LocalStorage(os.fspath(storage))

    @staticmethod
    def segment_key(chunk: Chunk) -> str:
        return f"segments/{chunk.id}.mp4"

    @staticmethod
    def state_key(chunk: Chunk) -> str:
        return f"state/{chunk.id}.npz"

    @staticmethod
    def done_key(chunk: Chunk) -> str:
        return f"state/{chunk.id}.done"

    def segment(self, chunk: Chunk) -> Path:
        """The segment's local path (local storage only)."""
        path = self.storage.local_path(self.segment_key(chunk))
        if path is None:
            raise ValueError(f"{self.storage.uri} is not local")
        return Path(path)

    def segment_target(self, chunk: Chunk) -> Path | None:
        """Where to encode the segment directly (local storage), or None (encode to a temp, upload)."""
        path = self.storage.local_path(self.segment_key(chunk))
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return Path(path)
        return None

    def marker(self, chunk: Chunk) -> dict | None:
        try:
            done = json.loads(self.storage.get(self.done_key(chunk)))
        except (KeyError, ValueError):
            return None
        return done if isinstance(done, dict) else None

    def is_done(self, chunk: Chunk) -> bool:
        done = self.marker(chunk)
        if done is None:
            return False
        try:
            seg = self.storage.stat(self.segment_key(chunk))
            self.storage.stat(self.state_key(chunk))
        except KeyError:
            return False
        return seg.size == done.get("segment_bytes")

    def commit(self, chunk: Chunk, segment: str | os.PathLike, state: CarryState, meta: dict | None = None) -> bool:
        """Commit the chunk's result; False (and nothing written) when it was committed already."""
        if self.is_done(chunk):
            return False
        segment = os.fspath(segment)
        if self.storage.local_path(self.segment_key(chunk)) != os.path.abspath(segment):
            self.storage.put_file(self.segment_key(chunk), segment)
        data = state.to_bytes()
        self.storage.put(self.state_key(chunk), data)
        marker = {"chunk": chunk.id, "frames": chunk.length, "segment_bytes": os.path.getsize(segment),
                  "state_sha256": hashlib.sha256(data).hexdigest(), **(meta or {})}
        self.storage.put(self.done_key(chunk), json.dumps(marker).encode())
        return True

    def load_state(self, chunk: Chunk) -> CarryState:
        try:
            return CarryState.from_bytes(self.storage.get(self.state_key(chunk)))
        except KeyError:
            raise StorageError(f"{self.storage.uri}: carry state of {chunk.id} is missing") from None

    def committed(self, chunks, threads: int = 8) -> set[str]:
        """Ids of the committed chunks among ``chunks`` (one listing, then parallel checks)."""
        listed = {k[len("state/"):-len(".done")] for k in self.storage.list("state/") if k.endswith(".done")}
        todo = [c for c in chunks if c.id in listed]
        if not todo:
            return set()
        with ThreadPoolExecutor(max(1, min(threads, len(todo)))) as pool:
            ok = list(pool.map(self.is_done, todo))
        return {c.id for c, good in zip(todo, ok) if good}

    def fetch_segments(self, chunks, folder: str | os.PathLike) -> list[str]:
        """Local paths of the chunks' segments (downloaded into ``folder`` when remote)."""
        paths = []
        for chunk in chunks:
            key = self.segment_key(chunk)
            local = self.storage.local_path(key)
            if local is None:
                local = os.path.join(folder, f"{chunk.id}.mp4")
                try:
                    self.storage.get_file(key, local)
                except KeyError:
                    raise StorageError(f"{self.storage.uri}: segment {key} is missing") from None
            paths.append(local)
        return paths


class ChunkWorker:
    """Renders chunks of one job on this node: loads the model once, reads the source locally.

    The in-process engine runs one; each Ray stylizer actor holds one per job.
    """

    def __init__(self, job: RenderJob, *, device: str = "cpu", cache_dir: str | None = None):
        self.job = job
        cfg = job.cfg
        self.source = node_source(job, cache_dir)
        style = node_file(job.style_uri, job.style_hash, job.s3, cache_dir or cfg.cache_dir, known=job.style_path)
        self.stylizer = make_stylizer(cfg.method, style, device=device, precision=cfg.precision, batch=cfg.batch,
                                      style_scale=cfg.style_scale,
                                      **cfg.method_options())
        self.upscaler = make_upscaler(cfg.upscaler)
        self.store = job.chunk_store()
        self.flow = job.flow_cache() if job.needs_flow else None

    def run(self, chunk: Chunk, state: CarryState | None = None, *, timer: StageTimer | None = None,
            on_frames=None, meta: dict | None = None) -> tuple[CarryState | None, dict]:
        """Render and commit ``chunk``; returns (carry-out state, info).

        ``state`` is the previous chunk's carry-out; None for a chunk inside a shot loads it from
        storage. A chunk that is committed already is not recomputed: (None, {"resumed": True}).
        """
        if self.store.is_done(chunk):
            return None, {**(self.store.marker(chunk) or {}), "chunk": chunk.id, "resumed": True}
        if state is None and not chunk.first_in_shot and self.job.chained:
            state = self.store.load_state(self.job.previous(chunk))
        timer = timer if timer is not None else StageTimer()
        t0 = time.perf_counter()
        target = self.store.segment_target(chunk)
        with (nullcontext(None) if target else tempfile.TemporaryDirectory(prefix="filmstyle-seg-")) as tmp:
            segment = target or Path(tmp) / f"{chunk.id}.mp4"
            job = self.job
            state = render_chunk(job.plan, chunk, self.source, self.stylizer, state, segment,
                                 out_size=job.out_size, upscaler=self.upscaler, crf=job.cfg.crf,
                                 preset=job.cfg.preset, timer=timer, flow=self.flow, on_frames=on_frames)
            info = {"seconds": round(time.perf_counter() - t0, 3), **(meta or {})}
            with timer("commit"):
                self.store.commit(chunk, segment, state, info)
        return state, {**info, "chunk": chunk.id, "resumed": False}


# ---------------------------------------------------------------- closing the render


def contact_strip(video: str, count: int = 4, height: int = 120) -> bytes:
    """A PNG of ``count`` frames of ``video`` side by side, evenly spaced (a preview)."""
    import cv2

    info = media.probe(video)
    w, h = info.display_size
    size = media.working_size(info, max(2, round(height * w / h)))
    picks = sorted({round(i * (info.frame_count - 1) / max(1, count - 1)) for i in range(count)})
    frames = [next(iter(media.decode_frames(info, i, i + 1, size))) for i in picks]
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.hstack(frames), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"{video}: could not encode the preview")
    return png.tobytes()


def assemble_output(job: RenderJob, *, preview: bool = True) -> str | None:
    """Concatenate the segments, mux the source's audio and subtitles, write the output (atomically,
    local or s3://) and its preview PNG beside it. Returns the preview's URI (or None)."""
    src = node_source(job)
    store = job.chunk_store()
    out_store, out_key = open_object(job.output_uri, job.s3)
    local_out = out_store.local_path(out_key)
    with tempfile.TemporaryDirectory(prefix="filmstyle-assemble-") as tmp:
        segments = store.fetch_segments(job.plan.chunks, tmp)
        target = local_out or os.path.join(tmp, f"output{Path(out_key).suffix}")
        media.assemble(segments, target, source=src.info, fps=src.info.fps)
        png = contact_strip(target) if preview else None
        if local_out is None:
            out_store.put_file(out_key, target)
    if png is None:
        return None
    out_store.put(f"{out_key}.preview.png", png)
    return f"{job.output_uri}.preview.png"


@dataclass
class RenderReport:
    input: str
    output: str
    style: str
    method: str
    frames: int
    fps: str
    duration_s: float
    working_size: tuple[int, int]
    delivery_size: tuple[int, int]
    shots: int
    chunks: int
    chunks_resumed: int
    flow: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)  # Ray engine: summed over workers
    wall_seconds: float = 0.0
    model_card: dict = field(default_factory=dict)
    engine: str = "local"
    workers: dict = field(default_factory=dict)  # Ray engine: actors, threads, nodes
    shot_starts: list = field(default_factory=list)  # first frame of each shot (for `filmstyle eval`)
    chunk_starts: list = field(default_factory=list)  # first frame of each chunk (seams)
    chunk_nodes: dict = field(default_factory=dict)  # chunk id -> node that rendered it
    flow_nodes: dict = field(default_factory=dict)  # chunk id -> node that computed its flow
    preview: str | None = None
    work: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> RenderReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_report(job: RenderJob, *, resumed: int, flow: dict, stage_seconds: dict, wall: float,
                engine: str = "local", **extra) -> RenderReport:
    plan, cfg = job.plan, job.cfg
    return RenderReport(
        input=cfg.input, output=cfg.output, style=cfg.style, method=cfg.method, frames=plan.frame_count,
        fps=str(plan.fps), duration_s=round(float(Fraction(plan.frame_count) / plan.fps), 3),
        working_size=plan.working_size, delivery_size=job.out_size, shots=len(plan.shots), chunks=len(plan.chunks),
        chunks_resumed=resumed, flow=flow, stage_seconds={k: round(v, 3) for k, v in stage_seconds.items()},
        wall_seconds=round(wall, 3), model_card=job.model_card, engine=engine, work=job.work_uri,
        shot_starts=[s.start for s in plan.shots], chunk_starts=[c.start for c in plan.chunks], **extra)


def write_report(job: RenderJob, report: RenderReport) -> str:
    store, key = open_object(job.report_uri, job.s3)
    store.put(key, report.to_json().encode())
    return job.report_uri


def finish_work(job: RenderJob) -> None:
    """Remove the work folder (segments, states, markers) unless --keep-work."""
    if not job.cfg.keep_work:
        clear(job.work())


def describe(job: RenderJob) -> str:
    info, plan = job.source.info, job.plan
    (ww, wh), (dw, dh) = plan.working_size, job.out_size
    return (f"{Path(job.cfg.input).name}: {info.frame_count} frames at {info.fps} fps, {len(plan.shots)} shots, "
            f"{len(plan.chunks)} chunks; working {ww}x{wh}, delivery {dw}x{dh}")


# ---------------------------------------------------------------- the in-process engine


def render(cfg: RenderConfig, *, progress: bool = True, log=print) -> RenderReport:
    """Render ``cfg.input`` to ``cfg.output`` in this process. Raises FilmstyleError on bad input."""
    from tqdm import tqdm

    from models.checkpoint import resolve_style

    t0 = time.perf_counter()
    timer = StageTimer()
    s3 = cfg.s3_config()
    check_output(cfg.output, cfg.input, s3)
    style_path = resolve_style(cfg.style, cfg.method)
    configure_threads(cfg.threads)
    with timer("probe"):
        source = prepare_source(cfg.input, cfg.cache_dir, s3=s3)
    with timer("shots"):
        bar = tqdm(total=source.info.frame_count, desc="shots", unit="f", disable=not progress, leave=False)
        shots = find_shots(source, cfg.shot_params(), cfg.cache_dir, progress=bar.update)
        bar.close()
    job = plan_job(cfg, source, shots, style_path=style_path, s3=s3)
    log(describe(job))

    flow = compute_flow_stage(job, timer, progress) if job.needs_flow else {}

    worker = ChunkWorker(job)
    resumed = 0
    bar = tqdm(total=job.plan.frame_count, desc="render", unit="f", disable=not progress)
    for shot in job.plan.shots:
        state = None  # a cut resets the temporal state
        for chunk in job.plan.chunks_of_shot(shot.index):
            state, info = worker.run(chunk, state, timer=timer, on_frames=bar.update)
            if info["resumed"]:
                resumed += 1
                bar.update(chunk.length)
    bar.close()

    with timer("assemble"):
        preview = assemble_output(job)
    finish_work(job)
    report = make_report(job, resumed=resumed, flow=flow, stage_seconds=timer.seconds,
                         wall=time.perf_counter() - t0, preview=preview)
    write_report(job, report)
    return report


def preflight(cfg: RenderConfig, *, output: bool = True, style: bool = True) -> None:
    """The cheap checks, before an engine starts: output writable, style found, input readable.

    A local input is probed (bad files fail here, in one line); an s3:// input must exist.
    """
    from models.checkpoint import resolve_style

    s3 = cfg.s3_config()
    if output:
        check_output(cfg.output, cfg.input, s3)
    if style:  # loads the checkpoint: a corrupt or foreign one fails here
        make_stylizer(cfg.method, resolve_style(cfg.style, cfg.method), precision=cfg.precision,
                      style_scale=cfg.style_scale,
                      batch=cfg.batch, **cfg.method_options())
    if is_remote(cfg.input):
        store, key = open_object(cfg.input, s3)
        if not store.exists(key):
            raise InputError(f"{cfg.input}: file not found")
    else:
        media.probe(split_uri(cfg.input)[1])


def precompute_flow(cfg: RenderConfig, *, progress: bool = True, log=print) -> dict:
    """Fill the flow cache for ``cfg.input`` at ``cfg.width`` in this process (the local engine)."""
    t0 = time.perf_counter()
    timer = StageTimer()
    s3 = cfg.s3_config()
    with timer("probe"):
        source = prepare_source(cfg.input, cfg.cache_dir, s3=s3)
    with timer("shots"):
        shots = find_shots(source, cfg.shot_params(), cfg.cache_dir)
    job = plan_job(cfg, source, shots, style_path=None, s3=s3)
    log(describe(job))
    report = compute_flow_stage(job, timer, progress)
    finish_work(job)
    return {"input": cfg.input, "frames": job.plan.frame_count, "chunks": len(job.plan.chunks), "flow": report,
            "stage_seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
            "wall_seconds": round(time.perf_counter() - t0, 3)}
