"""The render stages as plain functions, and the in-process engine that chains them.

probe -> shots -> plan -> per chunk (decode, stylize, upscale, encode) -> assemble.

Every stage is a function of value types and paths, so an orchestrator
(flows/, Prefect + Ray) can call the same functions on other machines. Chunk
results are committed idempotently: the encoded segment and the carry state
are written, then a ``.done`` marker; a killed render that is run again skips
every committed chunk.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from . import media
from .errors import InputError, OutputError
from .flow import CachedFlowSource, FlowCache, compute_flows, make_flow_backend
from .plan import Chunk, RenderPlan, flow_pairs, make_plan
from .shots import ShotParams, detect_shots
from .storage import open_storage
from .stylize import CarryState, Stylizer, configure_threads, make_stylizer
from .upscale import make_upscaler

DEFAULT_STYLE = "starry_night"
OUTPUT_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")


@dataclass
class RenderConfig:
    input: str
    output: str
    style: str = DEFAULT_STYLE
    method: str = "per-frame"
    width: int = 640  # working width: the net runs at this size
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
    flow_cache: str | None = None  # URI (folder or s3://); default: CACHE/flow
    soft_mask: bool = False
    strength: float = 0.7  # flow-blend
    refine: bool = False  # flow-blend
    workdir: str | None = None
    cache_dir: str | None = None
    keep_work: bool = False
    threads: int | None = None
    report: str | None = None  # default: OUTPUT.report.json

    def shot_params(self) -> ShotParams:
        return ShotParams(detector=self.detector, threshold=self.threshold, min_shot_frames=self.min_shot_frames)

    def method_options(self) -> dict:
        return {"strength": self.strength, "refine": self.refine}

    def flow_backend_params(self) -> dict:
        return {"preset": self.flow_preset} if self.flow_backend == "dis" else {}


@dataclass
class Source:
    """The input as the pipeline reads it (a CFR mezzanine when the original is VFR)."""

    original: str
    path: str
    info: media.VideoInfo
    hash: str


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
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t


def cache_root(cfg_cache: str | None = None) -> Path:
    root = cfg_cache or os.environ.get("FILMSTYLE_CACHE") or Path.home() / ".cache" / "filmstyle"
    return Path(root)


# ---------------------------------------------------------------- stages


def check_output(output: str, input_path: str) -> Path:
    """Fail before any work if the output cannot be written."""
    out = Path(output)
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
    if Path(input_path).exists() and out.exists() and out.resolve() == Path(input_path).resolve():
        raise OutputError(f"{out}: output would overwrite the input")
    return out


def prepare_source(path: str, cache_dir: str | None = None) -> Source:
    info = media.probe(path)
    readable = media.normalize_vfr(path, cache_root(cache_dir) / "mezzanine") if info.is_vfr else str(path)
    if readable != str(path):
        info = media.probe(readable)
    return Source(original=str(path), path=readable, info=info, hash=media.content_hash(path))


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


def compute_flow_stage(source: Source, plan: RenderPlan, cfg: RenderConfig, timer: StageTimer,
                       progress: bool) -> tuple[tuple[FlowCache, object], dict]:
    """Fill the flow cache for every pair inside a shot; a restyle of the same film computes none."""
    from tqdm import tqdm

    backend = make_flow_backend(cfg.flow_backend, **cfg.flow_backend_params())
    cache_uri = cfg.flow_cache or str(cache_root(cfg.cache_dir) / "flow")
    cache = FlowCache(open_storage(cache_uri), source.hash, plan.working_size, backend, soft=cfg.soft_mask)
    pairs = flow_pairs(plan)
    with timer("flow"):
        bar = tqdm(total=len(pairs), desc="flow", unit="pair", disable=not progress, leave=False)
        counts = compute_flows(source.info, plan, pairs, backend, cache, progress=lambda done, total: bar.update(1))
        bar.close()
    report = {"backend": cfg.flow_backend, **cfg.flow_backend_params(), "cache": cache_uri,
              "pairs": counts["pairs"], "computed": counts["computed"], "cache_hits": counts["cached"]}
    return (cache, backend), report


# ---------------------------------------------------------------- chunk commits


class ChunkStore:
    """Segments, carry states and done-markers of one render, in a work folder."""

    def __init__(self, root: Path):
        self.root = root
        (root / "segments").mkdir(parents=True, exist_ok=True)
        (root / "state").mkdir(parents=True, exist_ok=True)

    def segment(self, chunk: Chunk) -> Path:
        return self.root / "segments" / f"{chunk.id}.mp4"

    def _state(self, chunk: Chunk) -> Path:
        return self.root / "state" / f"{chunk.id}.npz"

    def _done(self, chunk: Chunk) -> Path:
        return self.root / "state" / f"{chunk.id}.done"

    def is_done(self, chunk: Chunk) -> bool:
        marker = self._done(chunk)
        if not marker.exists():
            return False
        try:
            done = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        seg = self.segment(chunk)
        return seg.exists() and seg.stat().st_size == done.get("segment_bytes") and self._state(chunk).exists()

    def commit(self, chunk: Chunk, state: CarryState) -> None:
        tmp = self._state(chunk).with_suffix(".npz.part")
        tmp.write_bytes(state.to_bytes())
        os.replace(tmp, self._state(chunk))
        marker = {"chunk": chunk.id, "frames": chunk.length, "segment_bytes": self.segment(chunk).stat().st_size}
        tmp = self._done(chunk).with_suffix(".done.part")
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, self._done(chunk))

    def load_state(self, chunk: Chunk) -> CarryState:
        return CarryState.from_bytes(self._state(chunk).read_bytes())


def work_key(source: Source, stylizer: Stylizer, cfg: RenderConfig, out_size: tuple[int, int]) -> str:
    spec = {"source": source.hash, "stylizer": stylizer.params(), "width": cfg.width,
            "out": list(out_size), "chunk": cfg.chunk_frames, "crf": cfg.crf, "preset": cfg.preset,
            "upscaler": cfg.upscaler, "shots": asdict(cfg.shot_params())}
    if stylizer.needs_flow:
        spec["flow"] = {"backend": cfg.flow_backend, **cfg.flow_backend_params(), "soft": cfg.soft_mask}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------- the engine


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
    stage_seconds: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    model_card: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def render(cfg: RenderConfig, *, progress: bool = True, log=print) -> RenderReport:
    """Render ``cfg.input`` to ``cfg.output`` in this process. Raises FilmstyleError on bad input."""
    from tqdm import tqdm

    from models.checkpoint import resolve_style

    t0 = time.perf_counter()
    timer = StageTimer()
    out = check_output(cfg.output, cfg.input)
    style_path = resolve_style(cfg.style)
    configure_threads(cfg.threads)
    with timer("probe"):
        source = prepare_source(cfg.input, cfg.cache_dir)
    stylizer = make_stylizer(cfg.method, style_path, precision=cfg.precision, batch=cfg.batch,
                             **cfg.method_options())
    upscaler = make_upscaler(cfg.upscaler)
    # Never run the net above the source's resolution: it costs time and adds nothing.
    working = media.working_size(source.info, min(cfg.width, source.info.display_size[0]))
    out_size = delivery_size(source.info, cfg.out_width)

    with timer("shots"):
        bar = tqdm(total=source.info.frame_count, desc="shots", unit="f", disable=not progress, leave=False)
        shots = find_shots(source, cfg.shot_params(), cfg.cache_dir, progress=bar.update)
        bar.close()
    plan = make_plan(source.hash, source.info.frame_count, source.info.fps, working, shots,
                     max_chunk_frames=cfg.chunk_frames)
    log(f"{Path(cfg.input).name}: {source.info.frame_count} frames at {source.info.fps} fps, "
        f"{len(plan.shots)} shots, {len(plan.chunks)} chunks; working {working[0]}x{working[1]}, "
        f"delivery {out_size[0]}x{out_size[1]}")

    flow, flow_report = None, {}
    if stylizer.needs_flow:
        flow, flow_report = compute_flow_stage(source, plan, cfg, timer, progress)

    workdir = Path(cfg.workdir) if cfg.workdir else cache_root(cfg.cache_dir) / "work" / work_key(
        source, stylizer, cfg, out_size)
    store = ChunkStore(workdir)
    resumed = 0
    bar = tqdm(total=plan.frame_count, desc="render", unit="f", disable=not progress)
    for shot in plan.shots:
        state = None  # a cut resets the temporal state
        for chunk in plan.chunks_of_shot(shot.index):
            if store.is_done(chunk):
                state = store.load_state(chunk)
                resumed += 1
                bar.update(chunk.length)
                continue
            state = render_chunk(plan, chunk, source, stylizer, state, store.segment(chunk), out_size=out_size,
                                 upscaler=upscaler, crf=cfg.crf, preset=cfg.preset, timer=timer,
                                 flow=flow, on_frames=bar.update)
            store.commit(chunk, state)
    bar.close()

    with timer("assemble"):
        media.assemble([str(store.segment(c)) for c in plan.chunks], str(out), source=source.info,
                       fps=source.info.fps)
    if not cfg.keep_work:
        shutil.rmtree(workdir, ignore_errors=True)

    report = RenderReport(
        input=cfg.input, output=str(out), style=cfg.style, method=cfg.method, frames=plan.frame_count,
        fps=str(plan.fps), duration_s=round(float(Fraction(plan.frame_count) / plan.fps), 3),
        working_size=working, delivery_size=out_size, shots=len(plan.shots), chunks=len(plan.chunks),
        chunks_resumed=resumed, flow=flow_report, stage_seconds={k: round(v, 3) for k, v in timer.seconds.items()},
        wall_seconds=round(time.perf_counter() - t0, 3), model_card=stylizer.run.card if hasattr(stylizer, "run") else {},
    )
    report_path = Path(cfg.report) if cfg.report else out.with_name(out.name + ".report.json")
    tmp = report_path.with_name(report_path.name + ".part")
    tmp.write_text(report.to_json())
    os.replace(tmp, report_path)
    return report
