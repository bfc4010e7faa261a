"""One chunk, the unit of stylize work: decode, stylize, upscale, encode, commit; and where commits live.

* ``ChunkStore``: segments, carry states and done markers of one render in its work storage.
* ``render_chunk``: decode -> method -> upscaler -> encoder for one chunk.
* ``ChunkWorker``: loads the job's method once on this node and renders (and commits) chunks;
  the in-process executor runs one, each Ray stylizer actor holds one per job.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline import media
from pipeline.carry import CarryState
from pipeline.delivery import Delivery
from pipeline.depth import eight_bit
from pipeline.flow import CachedFlowSource, FlowCache
from pipeline.plan import Chunk, RenderPlan
from pipeline.storage import LocalStorage, Storage, StorageError
from pipeline.upscale import make_upscaler

from .job import RenderJob, node_source, run_settings
from .overlap import Behind, prefetch
from .progress import StageTimer
from .source import Source, node_file


def chunk_flow_source(cache: FlowCache, backend, lookup: dict, chunk: Chunk,
                      state: CarryState | None) -> CachedFlowSource:
    """Flow for the chunk's pairs from the cache; a missing or corrupt entry is recomputed from
    ``lookup`` (absolute index -> frame, filled as the chunk's frames are decoded) and the previous
    chunk's last frame, carried in the state."""
    if state is not None and state.last_source is not None:
        lookup[chunk.start - 1] = eight_bit(state.last_source)
    return CachedFlowSource(cache, backend, lookup)


def deep_frames(info, delivery: Delivery, stylizer) -> bool:
    """Frames travel as 16-bit when the film has more than 8 bits, the delivery keeps more than 8
    and the method runs on such frames (every shipped method does; a plug-in says so with
    ``deep_frames``). Optical flow is computed from 8-bit frames either way."""
    return info.bit_depth > 8 and delivery.depth > 8 and getattr(stylizer, "deep_frames", False)


# Frames per slice of a chunk: the net works on one slice while the next is decoded and the last
# one is upscaled and encoded. A slice is stylized with the state the previous one carried out, as a
# chunk is after the chunk before it, so the frames are those of one pass over the chunk.
SLICE_FRAMES = 16


def _slices(source: Source, chunk: Chunk, size, deep: bool, guide_size, timer: StageTimer, n: int):
    """(first index, frames, guide frames or None) for the chunk, ``n`` frames at a time."""
    def frames(at):
        return media.decode_frames(source.info, chunk.start, chunk.end, at, chunk_hint=n, deep=deep)

    main = frames(size)
    guide = frames(guide_size) if guide_size else None
    try:
        for start in range(chunk.start, chunk.end, n):
            k = min(n, chunk.end - start)
            with timer("decode"):
                part = np.stack([next(main) for _ in range(k)])
                g = np.stack([next(guide) for _ in range(k)]) if guide is not None else None
            yield start, part, g
    finally:
        main.close()
        if guide is not None:
            guide.close()


class Unfinished:
    """A chunk stylized to its last frame whose segment is still being written: the last slice's
    upscale and encode may be running, and x264 has frames in its look-ahead. ``finish`` waits for
    both and moves the segment into place; ``abort`` stops the encoder and leaves nothing behind.
    The in-process engine finishes one chunk while the net runs the next (``ChunkWorker.start``):
    at preset medium x264 took 1.3 s per 48-frame chunk at 1280x720 to flush, time the net had
    waited for at the end of every chunk."""

    def __init__(self, writer: media.SegmentWriter, behind: Behind):
        self.writer, self.behind = writer, behind

    def finish(self) -> None:
        try:
            self.behind.finish()
        except BaseException:
            self.writer.abort()
            raise
        self.writer.close()

    def abort(self) -> None:
        self.behind.abort()
        self.writer.abort()


def render_chunk(plan: RenderPlan, chunk: Chunk, source: Source, stylizer, state: CarryState | None,
                 segment: Path, *, out_size: tuple[int, int], upscaler, delivery: Delivery,
                 timer: StageTimer, flow: tuple[FlowCache, object] | None = None,
                 on_frames=None) -> tuple[CarryState, Unfinished]:
    """Decode, stylize, upscale and encode one chunk to ``segment``; return the carry-out state and
    the segment still to finish (``Unfinished.finish`` puts it at ``segment``).

    ``flow`` is (cache, backend) for methods that need optical flow. The stages overlap
    (``engine.overlap``): a thread decodes the next slice while the net runs, and the previous
    slice is upscaled and written to the encoder (an ffmpeg process) behind it.
    """
    deep = deep_frames(source.info, delivery, stylizer)
    lookup: dict = {}
    flow_source = chunk_flow_source(*flow, lookup, chunk, state) if flow else None
    guided = upscaler.needs_guide and tuple(out_size) != tuple(plan.working_size)

    def finish(out, guide):
        with timer("upscale"):
            out = upscaler(out, out_size, guide=guide)
        with timer("encode"):
            writer.write(out)
        if on_frames:
            on_frames(len(out))

    writer = media.SegmentWriter(segment, plan.fps, out_size, delivery=delivery, source=source.info)
    behind = Behind()
    unfinished = Unfinished(writer, behind)
    try:
        for start, frames, guide in prefetch(_slices(source, chunk, plan.working_size, deep,
                                                     out_size if guided else None, timer, SLICE_FRAMES)):
            if flow_source is not None:  # frames to compute a missing flow pair from
                lookup.update((start + i, eight_bit(f)) for i, f in enumerate(frames))
            with timer("stylize"):
                out, state = stylizer.stylize(frames, start, state, flow=flow_source)
            for t in [t for t in lookup if t < start - 1]:  # flow only ever needs (t - 1, t)
                del lookup[t]
            behind.submit(finish, out, guide)
    except BaseException:
        unfinished.abort()
        raise
    return state, unfinished


class ChunkStore:
    """Segments, carry states and done markers of one render, in a work storage (folder or s3://).

    A chunk is committed once: segment, then state (each written atomically), then the marker.
    A chunk counts as done only when its marker reads back and the segment has the size the
    marker records, so a render killed at any point resumes without recomputing committed chunks.
    """

    def __init__(self, storage: Storage | str | os.PathLike, suffix: str = ".mp4"):
        self.storage = storage if isinstance(storage, Storage) else LocalStorage(os.fspath(storage))
        self.suffix = suffix  # the segments' container (pipeline.delivery)

    def segment_key(self, chunk: Chunk) -> str:
        return f"segments/{chunk.id}{self.suffix}"

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
                local = os.path.join(folder, f"{chunk.id}{self.suffix}")
                try:
                    self.storage.get_file(key, local)
                except KeyError:
                    raise StorageError(f"{self.storage.uri}: segment {key} is missing") from None
            paths.append(local)
        return paths


def chunk_store(job: RenderJob) -> ChunkStore:
    return ChunkStore(job.work(), job.cfg.delivery().segment_suffix)


class ChunkWorker:
    """Renders chunks of one job on this node: loads the model once, reads the source locally.

    The in-process engine runs one; each Ray stylizer actor holds one per job.
    """

    def __init__(self, job: RenderJob, *, device: str | None = None, cache_dir: str | None = None):
        from methods import make_method

        self.job = job
        cfg = job.cfg
        self.source = node_source(job, cache_dir)
        style = node_file(job.style_uri, job.style_hash, job.s3, cache_dir or cfg.cache_dir, known=job.style_path)
        import models.upscalers  # noqa: F401  (registers the learned upscalers)

        settings = run_settings(cfg, device)
        self.stylizer = make_method(cfg.method, style, settings, cfg.options, module=job.method_module)
        self.upscaler = make_upscaler(cfg.upscaler, device=settings.device)
        self.store = chunk_store(job)
        self.flow = job.flow_cache() if job.needs_flow else None

    def needs_stored_state(self, chunk: Chunk, state: CarryState | None) -> bool:
        """Whether ``start`` loads the chunk's carry-in from storage (the previous chunk's commit
        must have landed by then)."""
        return state is None and not chunk.first_in_shot and self.job.chained

    def start(self, chunk: Chunk, state: CarryState | None = None, *, timer: StageTimer | None = None,
              on_frames=None, meta: dict | None = None) -> tuple[CarryState | None, "ChunkCommit"]:
        """Render ``chunk`` to its last frame; returns (carry-out state, its commit). Calling the
        commit finishes the segment and commits the chunk (it may run in another thread while the
        next chunk renders). ``state`` is the previous chunk's carry-out; None for a chunk inside a
        shot loads it from storage. A chunk committed already is not recomputed: (None, a commit
        that only reports it)."""
        if self.store.is_done(chunk):
            return None, ChunkCommit.resumed(chunk, self.store.marker(chunk))
        if self.needs_stored_state(chunk, state):
            state = self.store.load_state(self.job.previous(chunk))
        timer = timer if timer is not None else StageTimer()
        t0 = time.perf_counter()
        target = self.store.segment_target(chunk)
        tmp = None if target else tempfile.mkdtemp(prefix="filmstyle-seg-")
        segment = target or Path(tmp) / f"{chunk.id}{self.store.suffix}"
        job = self.job
        try:
            state, unfinished = render_chunk(job.plan, chunk, self.source, self.stylizer, state, segment,
                                             out_size=job.out_size, upscaler=self.upscaler,
                                             delivery=job.cfg.delivery(), timer=timer, flow=self.flow,
                                             on_frames=on_frames)
        except BaseException:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return state, ChunkCommit(chunk, self.store, segment, state, unfinished, tmp=tmp, timer=timer, t0=t0,
                                  meta=meta)

    def run(self, chunk: Chunk, state: CarryState | None = None, *, timer: StageTimer | None = None,
            on_frames=None, meta: dict | None = None) -> tuple[CarryState | None, dict]:
        """Render and commit ``chunk``; returns (carry-out state, info). A chunk committed already:
        (None, {"resumed": True, ...})."""
        state, commit = self.start(chunk, state, timer=timer, on_frames=on_frames, meta=meta)
        return state, commit()


class ChunkCommit:
    """The rest of a chunk after its last frame went through the net: finish the segment, then
    commit segment, state and marker (``ChunkStore.commit``). Called once; returns the chunk's
    info. ``abort`` drops the segment instead (nothing is committed)."""

    def __init__(self, chunk: Chunk, store: ChunkStore | None, segment: Path | None, state: CarryState | None,
                 unfinished: Unfinished | None, *, tmp: str | None = None, timer: StageTimer | None = None,
                 t0: float = 0.0, meta: dict | None = None, info: dict | None = None):
        self.chunk, self.store, self.segment, self.state = chunk, store, segment, state
        self.unfinished, self.tmp, self.timer, self.t0 = unfinished, tmp, timer, t0
        self.meta, self.info = meta or {}, info

    @classmethod
    def resumed(cls, chunk: Chunk, marker: dict | None) -> "ChunkCommit":
        return cls(chunk, None, None, None, None, info={**(marker or {}), "chunk": chunk.id, "resumed": True})

    def __call__(self) -> dict:
        if self.info is not None:
            return self.info
        try:
            self.unfinished.finish()
            info = {"seconds": round(time.perf_counter() - self.t0, 3), **self.meta}
            with self.timer("commit"):
                self.store.commit(self.chunk, self.segment, self.state, info)
            self.info = {**info, "chunk": self.chunk.id, "resumed": False}
            return self.info
        finally:
            self._clean()

    def abort(self) -> None:
        if self.info is None and self.unfinished is not None:
            self.unfinished.abort()
        self._clean()

    def _clean(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
