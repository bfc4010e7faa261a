"""``RenderJob``: one planned render as plain, picklable data, saved as job.json in its work storage.

``plan_job`` sizes the frames, cuts the shots into chunks (``pipeline.plan``), builds the method
once to key the work by everything that changes the output, picks the work folder and the flow
cache, and writes job.json, so any process on any node can load the job by its work URI and
render any chunk of it (``engine.chunks``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field

from pipeline import media
from pipeline.errors import InputError, OutputError
from pipeline.flow import FlowCache, make_flow_backend
from pipeline.paths import cache_root
from pipeline.plan import Chunk, RenderPlan, make_plan
from pipeline.storage import S3Config, Storage, is_remote, join_uri, open_storage, parent_uri, split_uri

from .config import RenderConfig
from .source import Source, _suffix, delivery_size, node_file

JOB_KEY = "job.json"


def work_key(source: Source, params: dict, needs_flow: bool, cfg: RenderConfig, out_size: tuple[int, int]) -> str:
    """Key of a render's work: everything that changes its frames (``params``: the method's), and the
    output it is for: two renders of the same film with the same settings into two outputs, at the
    same time (two queued runs), must not share a folder that the first to finish removes."""
    output = cfg.output if is_remote(cfg.output) else os.path.abspath(split_uri(cfg.output)[1])
    spec = {"source": source.hash, "output": output, "stylizer": params, "width": cfg.width,
            "out": list(out_size), "chunk": cfg.chunk_frames, "crf": cfg.crf, "preset": cfg.preset,
            "delivery": cfg.delivery().to_dict(),
            "upscaler": cfg.upscaler, "shots": asdict(cfg.shot_params())}
    if needs_flow:
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
    method_module: str | None = None  # where a plug-in method is defined, for workers that lack it

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


def _check_upscale(name: str, working: tuple[int, int], out_size: tuple[int, int]) -> None:
    import models.upscalers  # noqa: F401  (registers the learned upscalers)
    from pipeline.upscale import upscaler_class

    if getattr(upscaler_class(name), "enlarges_only", False) and (out_size[0] < working[0] or out_size[1] < working[1]):
        raise InputError(f"upscaler {name} enlarges: the delivery size {out_size[0]}x{out_size[1]} is smaller than "
                         f"the working size {working[0]}x{working[1]} (lower --width, or use --upscaler area)")


def plan_job(cfg: RenderConfig, source: Source, shots, *, style_path: str | os.PathLike | None,
             s3: S3Config | None = None, share_files: bool = False, method=None) -> RenderJob:
    """Plan the chunks, key the work, pick the storages, write job.json; return the job.

    ``cfg`` has its device, precision and batch resolved (``engine.sequence``). ``style_path``
    None plans a flow-only job (precompute-flow). ``share_files``: copy the decodable source and
    the style file into the work storage when they are local files, so workers on other nodes can
    fetch them (multi-node renders with s3:// work storage).
    """
    from methods import METHODS, make_method

    s3 = s3 or cfg.s3_config()
    info = source.info
    # Never run the net above the source's resolution: it costs time and adds nothing.
    working = media.working_size(info, min(cfg.width, info.display_size[0]))
    out_size = delivery_size(info, cfg.out_width)
    _check_upscale(cfg.upscaler, working, out_size)
    plan = make_plan(source.hash, info.frame_count, info.fps, working, shots, max_chunk_frames=cfg.chunk_frames)
    style_uri = style_hash = None
    params, card, needs_flow, chained, module = {}, {}, True, True, None
    if style_path is not None:
        if method is None:  # built on the planning node's CPU: only its params and card are used
            method = make_method(cfg.method, style_path, run_settings(cfg, device="cpu"), cfg.options)
        params, card = dict(method.params()), dict(method.card or {})
        needs_flow, chained = bool(method.needs_flow), bool(method.carries_state)
        cls = type(getattr(method, "inner", method))  # methods.base.FollowExposure wraps the method
        module = cls.__module__ if METHODS.get(cfg.method) is cls else None
        key = work_key(source, params, needs_flow, cfg, out_size)
        style_uri, style_hash = os.path.abspath(style_path), media.content_hash(style_path, cache_dir=cfg.cache_dir)
    else:
        key = flow_only_key(source, cfg)
    job = RenderJob(cfg=cfg, source=source, plan=plan, key=key, work_uri=default_work_uri(cfg, key), s3=s3,
                    out_size=out_size, style_uri=style_uri, style_hash=style_hash or "",
                    style_path=str(style_path) if style_path else None, stylizer=params, model_card=card,
                    needs_flow=needs_flow, flow_cache_uri=default_flow_cache_uri(cfg) if needs_flow else None,
                    chained=chained, method_module=module)
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
            key_style = f"inputs/style-{style_hash}{_suffix(str(style_path))}"
            _share(work, key_style, style_uri)
            job.style_uri = join_uri(job.work_uri, key_style)
    save_job(job)
    return job


def run_settings(cfg: RenderConfig, device: str | None = None):
    """The method's RunSettings from a config whose precision and batch are resolved."""
    from methods import RunSettings

    return RunSettings(device=device or cfg.device, precision=cfg.precision or "fp32", batch=cfg.batch or 1,
                       style_scale=cfg.style_scale, exposure=cfg.exposure)


def node_source(job: RenderJob, cache_dir: str | None = None) -> Source:
    """The job's source as this node reads it (see ``node_file``)."""
    src = job.source
    path = node_file(src.uri or src.path, src.uri_hash or src.hash, job.s3, cache_dir or job.cfg.cache_dir,
                     known=src.path)
    if path == src.path:
        return src
    return dataclasses.replace(src, path=path, info=dataclasses.replace(src.info, path=path))
