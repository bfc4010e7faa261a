"""The render, written once: check -> probe -> shots -> plan -> flow -> stylize chains -> assemble
-> report -> finish, run by an ``Executor`` that decides only *how* each stage's units run.

* ``engine.local.LocalExecutor`` runs everything in this process (``--engine local``).
* ``flows.executor.PrefectRayExecutor`` runs the head stages as Prefect tasks and the units
  (one chunk's flow, one chunk's stylization) on Ray workers (``--engine prefect``).

Resume, checks, progress lines and the report are this module's, so both executors produce the
same frames and the same report fields. Resume: chunks whose done markers are in the work
storage are left out before anything is submitted; a chain (the chunks of one shot, for methods
that carry state) that starts after a committed chunk loads its carry state from storage.
"""
from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from pipeline import media
from pipeline.device import check_device, check_precision, defaults_for
from pipeline.hw_encode import resolve_encoder
from pipeline.errors import InputError
from pipeline.plan import Chunk
from pipeline.storage import is_remote, open_object, split_uri

from .chunks import chunk_store
from .config import RenderConfig
from .flow_stage import flow_report
from .job import RenderJob, plan_job, run_settings
from .output import assemble_output, finish_work
from .progress import RenderProgress, StageTimer, Ticker
from .report import RenderReport, describe, make_report, write_report
from .source import Source, check_output, find_shots, prepare_source

ChunkDone = Callable[[Chunk, dict], None]


class Executor(ABC):
    """How the units of a render run. ``log`` receives progress lines."""

    name = "local"

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def start(self, cfg: RenderConfig) -> int:
        """Acquire what the render runs on; returns the number of nodes (1 for this process)."""
        return 1

    @abstractmethod
    def device(self, cfg: RenderConfig) -> str:
        """The device the methods will run on (``cfg.device`` resolved for the workers)."""

    def stage(self, name: str, fn, *args, **kwargs):
        """Run one head stage (check, probe, shots, plan, assemble, report)."""
        return fn(*args, **kwargs)

    def open_job(self, job: RenderJob) -> None:
        """Make the planned job known to the workers."""

    def close_job(self, job: RenderJob) -> None:
        """Release the job's workers (called on success and failure)."""

    @abstractmethod
    def flow(self, job: RenderJob, chunks: list[Chunk], done: ChunkDone) -> None:
        """Fill the flow cache for ``chunks`` (``engine.flow_stage.flow_for_chunk`` per chunk), calling
        ``done(chunk, counts)`` for each, where counts has pairs, computed, cached and maybe node."""

    @abstractmethod
    def stylize(self, job: RenderJob, chains: list[list[Chunk]], done: ChunkDone) -> dict:
        """Render every chain (chunk after chunk, carrying the state; chains are independent),
        calling ``done(chunk, info)`` with info's ``stages`` (seconds) and ``node``; returns the
        workers' description for the report."""

    def publish(self, job: RenderJob, report: RenderReport) -> str:
        """Write the report where the job says; returns its URI."""
        return write_report(job, report)

    def progress(self, progress: RenderProgress) -> None:
        """Where the render stands (after each chunk and stage), for watchers other than ``log``."""


# ---------------------------------------------------------------- the head stages


def check(cfg: RenderConfig, *, output: bool = True, style: bool = True) -> Path | None:
    """Every check that needs no worker, before any work: settings, output writable, the style's
    file found and loadable by the method, input readable. Returns the style's file."""
    from methods import make_method, resolve_style, validate_options

    check_device(cfg.device)
    resolve_encoder(cfg.encoder, cfg.codec, cfg.delivery().depth, cfg.device)  # nvenc: does it run here?
    if cfg.precision is not None:
        check_precision(cfg.precision, "cuda")  # the form; the device is checked once resolved
    s3 = cfg.s3_config()
    style_path = None
    if style:
        validate_options(cfg.method, cfg.options)
    if output:
        check_output(cfg.output, cfg.input, s3, cfg.delivery())
    if style:  # builds the method on the CPU: a corrupt or foreign checkpoint fails here
        style_path = resolve_style(cfg.style, cfg.method)
        make_method(cfg.method, style_path, dataclasses.replace(run_settings(cfg, "cpu"), precision="fp32"),
                    cfg.options)
    if is_remote(cfg.input):
        store, key = open_object(cfg.input, s3)
        if not store.exists(key):
            raise InputError(f"{cfg.input}: file not found")
    else:
        media.probe(split_uri(cfg.input)[1])
    return style_path


def probe(cfg: RenderConfig) -> Source:
    return prepare_source(cfg.input, cfg.cache_dir, s3=cfg.s3_config())


def shots(cfg: RenderConfig, source: Source):
    return find_shots(source, cfg.shot_params(), cfg.cache_dir)


def resolve_config(cfg: RenderConfig, device: str) -> RenderConfig:
    """``cfg`` with the device resolved, the device's precision and batch where none is given, and
    the segment encoder (NVENC on CUDA where it runs, the head's check standing for its workers')."""
    d = defaults_for(device)
    return dataclasses.replace(cfg, device=device, precision=check_precision(cfg.precision or d.precision, device),
                               batch=cfg.batch or d.batch,
                               encoder=resolve_encoder(cfg.encoder, cfg.codec, cfg.delivery().depth, device))


def chains_of(job: RenderJob, chunks: list[Chunk]) -> list[list[Chunk]]:
    """The chunks as chains: one per shot for methods that carry state, else one per chunk."""
    by_key: dict[object, list[Chunk]] = {}
    for c in chunks:
        by_key.setdefault(c.shot if job.chained else c.id, []).append(c)
    return list(by_key.values())


def _open(cfg: RenderConfig, ex: Executor, timer: StageTimer, *, with_style: bool, checked: bool):
    nodes = ex.start(cfg)
    with timer("probe"):
        if not with_style:
            style_path = None
            if not checked:
                ex.stage("check", check, cfg, output=False, style=False)
        elif checked:
            from methods import resolve_style

            style_path = resolve_style(cfg.style, cfg.method)
        else:
            style_path = ex.stage("check", check, cfg)
        source = ex.stage("probe", probe, cfg)
    with timer("shots"):
        found = ex.stage("shots", shots, cfg, source)
    cfg = resolve_config(cfg, ex.device(cfg)) if with_style else cfg
    job = ex.stage("plan", plan_job, cfg, source, found, style_path=style_path, s3=cfg.s3_config(),
                   share_files=nodes > 1)
    ex.log(describe(job))
    ex.open_job(job)
    return job


def _flow(job: RenderJob, ex: Executor, progress: RenderProgress) -> tuple[dict, dict]:
    totals = {"pairs": 0, "computed": 0, "cached": 0}
    nodes: dict[str, str | None] = {}
    rerun: list[str] = []  # chunks whose flow task ran again after its worker or node was lost
    ticker = Ticker(ex.log, "flow", len(job.plan.chunks), "chunks")
    progress.flow(0, len(job.plan.chunks))

    def done(chunk: Chunk, counts: dict) -> None:
        for k in totals:
            totals[k] += counts[k]
        nodes[chunk.id] = counts.get("node")
        if counts.get("attempts", 1) > 1:
            rerun.append(chunk.id)
        ticker.add(1)
        progress.flow(ticker.done, ticker.total)

    ex.flow(job, list(job.plan.chunks), done)
    report = flow_report(job, totals)
    if rerun:
        report["chunks_rerun"] = sorted(rerun)
    ex.log(f"flow: {report['pairs']} pairs, {report['computed']} computed, {report['cache_hits']} from the cache")
    return report, nodes


def render(cfg: RenderConfig, ex: Executor, *, restyle: bool = False, checked: bool = False) -> RenderReport:
    """Render ``cfg.input`` to ``cfg.output`` with ``ex``. ``checked``: ``check`` already passed
    (the CLI runs it before starting an engine, so bad input fails in a second)."""
    t0 = time.perf_counter()
    timer = StageTimer()
    job = _open(cfg, ex, timer, with_style=True, checked=checked)
    progress = RenderProgress(ex.progress)
    try:
        flow, flow_nodes = {}, {}
        if job.needs_flow:
            with timer("flow"):
                flow, flow_nodes = _flow(job, ex, progress)
            if restyle and flow["computed"]:
                ex.log(f"restyle: the flow cache lacked {flow['computed']} of {flow['pairs']} pairs (now computed)")
        done = chunk_store(job).committed(job.plan.chunks)
        todo = [c for c in job.plan.chunks if c.id not in done]
        chunk_nodes: dict[str, str | None] = {}
        workers: dict = {}
        n_chunks, n_frames = len(job.plan.chunks), job.plan.frame_count
        resumed_frames = n_frames - sum(c.length for c in todo)
        progress.stylize(resumed_frames, n_frames, len(done), n_chunks)
        if todo:
            ticker = Ticker(ex.log, "stylize", sum(c.length for c in todo), "frames")

            def chunk_done(chunk: Chunk, info: dict) -> None:
                chunk_nodes[chunk.id] = info.get("node")
                timer.merge(info.get("stages", {}))
                ticker.add(chunk.length, f" ({len(chunk_nodes)}/{len(todo)} chunks)")
                progress.stylize(resumed_frames + ticker.done, n_frames, len(done) + len(chunk_nodes), n_chunks)

            ex.log(f"stylize: {len(todo)} chunks ({len(done)} already committed)")
            with timer("render"):
                workers = ex.stylize(job, chains_of(job, todo), chunk_done)
        else:
            ex.log(f"stylize: all {len(done)} chunks already committed")
        progress.finish("assemble")
        with timer("assemble"):
            preview = ex.stage("assemble", assemble_output, job)
    finally:
        ex.close_job(job)
    report = make_report(job, resumed=len(done), flow=flow, stage_seconds=timer.seconds,
                         wall=time.perf_counter() - t0, engine=ex.name, workers=workers,
                         chunk_nodes=chunk_nodes if ex.name != "local" else {},
                         flow_nodes=flow_nodes if ex.name != "local" else {}, preview=preview)
    ex.stage("report", ex.publish, job, report)
    finish_work(job)
    progress.finish("done")
    return report


def precompute_flow(cfg: RenderConfig, ex: Executor, *, checked: bool = False) -> dict:
    """Fill the flow cache for ``cfg.input`` at ``cfg.width`` (every chunk's flow) with ``ex``."""
    t0 = time.perf_counter()
    timer = StageTimer()
    job = _open(cfg, ex, timer, with_style=False, checked=checked)
    progress = RenderProgress(ex.progress)
    try:
        with timer("flow"):
            report, nodes = _flow(job, ex, progress)
    finally:
        ex.close_job(job)
    finish_work(job)
    progress.finish("done")
    return {"input": cfg.input, "frames": job.plan.frame_count, "chunks": len(job.plan.chunks), "flow": report,
            "flow_nodes": nodes if ex.name != "local" else {},
            "stage_seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
            "wall_seconds": round(time.perf_counter() - t0, 3)}
