"""Prefect flows: ``render``, ``restyle`` and ``precompute_flow`` (Prefect orchestrates, Ray executes).

render: check -> probe -> shots -> plan -> flow (one Ray task per chunk, all chunks in parallel)
        -> stylize + upscale (per chunk on the stylizer actors: chunks of a shot form a chain that
        carries the temporal state, shots run in parallel) -> assemble -> report (JSON + artifact).
restyle: the same render of the same film with another style; the flow comes from the cache.
precompute_flow: probe -> shots -> plan -> flow, to fill the flow cache ahead of styles.

The flows only sequence thin tasks (tasks/render.py) and keep the chains fed: they submit at
most a few tasks per actor / core at a time and submit chunk j+1 of a shot when chunk j is done,
so no thread sits waiting on an upstream chunk. Committed chunks (done markers in the work
storage) are skipped before anything is submitted: that is how a killed render resumes.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections import deque
from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import render as R
from tasks import ray_exec
from tasks import render as T

# Threads of the flow's task runner: tasks mostly wait on Ray, so this bounds the chunks in flight.
MAX_TASK_WORKERS = int(os.environ.get("FILMSTYLE_TASK_WORKERS", "64"))

progress_log = logging.getLogger("filmstyle.progress")


def say(message: str, level: int = logging.INFO) -> None:
    """A progress line: to the filmstyle.progress logger (the CLI prints it) and the run's log."""
    progress_log.log(level, message)
    try:
        get_run_logger().log(level, message)
    except MissingContextError:
        pass


class _Ticker:
    """Throttled progress lines for a stage."""

    def __init__(self, label: str, total: int, unit: str, every: float = 2.0):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.done, self.last = 0, 0.0

    def add(self, n: int, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            say(f"{self.label}: {self.done}/{self.total} {self.unit}{extra}")


def _run_bounded(items, submit, limit: int, on_done, follow=None) -> None:
    """Submit ``items`` as Prefect tasks with at most ``limit`` in flight; ``on_done(item, future)``
    for each finished one (its exceptions propagate); ``follow(item)`` may return the next item to
    submit (the next chunk of a shot), which goes first."""
    pending = deque(items)
    running: dict = {}
    while pending or running:
        while pending and len(running) < limit:
            item = pending.popleft()
            running[submit(item)] = item
        finished, _ = concurrent.futures.wait([f.wrapped_future for f in running],
                                              return_when=concurrent.futures.FIRST_COMPLETED)
        for fut in [f for f in running if f.wrapped_future in finished]:
            item = running.pop(fut)
            on_done(item, fut)
            nxt = follow(item) if follow else None
            if nxt is not None:
                pending.appendleft(nxt)


def _config(input: str, output: str, style: str | None, options: dict | None) -> R.RenderConfig:
    d = dict(options or {})
    d.update(input=input, output=output)
    if style is not None:
        d["style"] = style
    return R.RenderConfig.from_dict(d)


def _flow_stage(job: R.RenderJob) -> tuple[dict, dict]:
    """Every chunk's flow as a Ray task, all chunks in parallel; returns (flow report, chunk -> node)."""
    chunks = list(job.plan.chunks)
    cpus = int(sum(n["cpus"] for n in ray_exec.cluster_nodes())) or 1
    totals = {"pairs": 0, "computed": 0, "cached": 0}
    nodes: dict[str, str | None] = {}
    ticker = _Ticker("flow", len(chunks), "chunks")

    def done(chunk, fut):
        res = fut.result()
        if fut.state.name == "Cached":  # Prefect's cache (our key, marker checked): nothing computed
            res = {**res, "computed": 0, "cached": res["pairs"], "node": None}
        for k in totals:
            totals[k] += res[k]
        nodes[chunk.id] = res.get("node")
        ticker.add(1)

    _run_bounded(chunks, lambda c: T.flow_chunk.submit(job.work_uri, c.id),
                 min(MAX_TASK_WORKERS, 2 * cpus), done)
    return R.flow_report(job, totals), nodes


def _stylize_stage(job: R.RenderJob, todo: list, pool) -> tuple[dict, dict]:
    """Chunks as chains per shot, shots in parallel; returns (chunk -> node, summed stage seconds)."""
    by_shot: dict[object, list] = {}
    for c in todo:  # a chain per shot; every chunk on its own when the method carries no state
        by_shot.setdefault(c.shot if job.chained else c.id, []).append(c)
    following = {a.id: b for chain in by_shot.values() for a, b in zip(chain, chain[1:])}
    nodes: dict[str, str] = {}
    seconds = R.StageTimer()
    ticker = _Ticker("stylize", sum(c.length for c in todo), "frames")

    def done(chunk, fut):
        info = fut.result()
        nodes[chunk.id] = info.get("node")
        seconds.merge(info.get("stages", {}))
        ticker.add(chunk.length, f" ({len(nodes)}/{len(todo)} chunks)")

    _run_bounded([chain[0] for chain in by_shot.values()],
                 lambda c: T.stylize_chunk.submit(job.work_uri, c.id),
                 min(MAX_TASK_WORKERS, 2 * pool.size), done, follow=lambda c: following.get(c.id))
    return nodes, seconds.seconds


def _open_job(cfg: R.RenderConfig, ray_address: str | None, timer: R.StageTimer, *,
              with_style: bool) -> tuple[str, R.RenderJob]:
    """Join Ray, probe, detect shots, plan and register the job: the opening of every flow."""
    config = cfg.to_dict()
    cluster = ray_exec.connect(ray_address)
    with timer("probe"):
        style_path = T.check(config) if with_style else None
        source = T.probe(config)
    with timer("shots"):
        shot_list = T.shots(config, source)
    job_uri = T.plan(config, source, shot_list, style_path, share_files=cluster["nodes"] > 1)
    job = T.get_job(job_uri)
    say(R.describe(job))
    ray_exec.register_job(job)
    return job_uri, job


def run_render(cfg: R.RenderConfig, ray_address: str | None = None, *, restyle: bool = False) -> dict:
    """The body of the render and restyle flows (call it inside a flow)."""
    t0 = time.perf_counter()
    timer = R.StageTimer()
    job_uri, job = _open_job(cfg, ray_address, timer, with_style=True)
    try:
        flow, flow_nodes = {}, {}
        if job.needs_flow:
            with timer("flow"):
                flow, flow_nodes = _flow_stage(job)
            say(f"flow: {flow['pairs']} pairs, {flow['computed']} computed, {flow['cache_hits']} from the cache")
            if restyle and flow["computed"]:
                say(f"restyle: the flow cache lacked {flow['computed']} of {flow['pairs']} pairs (now computed)",
                    logging.WARNING)
        done = job.chunk_store().committed(job.plan.chunks)
        todo = [c for c in job.plan.chunks if c.id not in done]
        chunk_nodes, worker_seconds, workers = {}, {}, {}
        if todo:
            with timer("render"):
                pool = ray_exec.start_pool(job_uri, threads=cfg.threads)
                workers = ray_exec.pool_info(pool)
                say(f"stylize: {len(todo)} chunks ({len(done)} already committed) on {pool.size} "
                    f"{workers['device']} actor(s) x {workers['threads']} thread(s)")
                chunk_nodes, worker_seconds = _stylize_stage(job, todo, pool)
                workers = ray_exec.pool_info(pool)  # again: actors lost and chunks retried
        else:
            say(f"stylize: all {len(done)} chunks already committed")
        with timer("assemble"):
            preview = T.assemble(job_uri)
    finally:
        ray_exec.release(job_uri)
    workers["seconds"] = {k: round(v, 3) for k, v in worker_seconds.items()}
    report = R.make_report(job, resumed=len(done), flow=flow, stage_seconds=timer.seconds,
                           wall=time.perf_counter() - t0, engine="prefect+ray", workers=workers,
                           chunk_nodes=chunk_nodes, flow_nodes=flow_nodes, preview=preview)
    T.publish_report(job_uri, asdict(report))
    R.finish_work(job)
    T.forget_job(job_uri)
    return asdict(report)


@flow(name="render", task_runner=ThreadPoolTaskRunner(max_workers=MAX_TASK_WORKERS), persist_result=False)
def render_flow(input: str, output: str, style: str = R.DEFAULT_STYLE, options: dict | None = None,
                ray_address: str | None = None) -> dict:
    """Stylize INPUT into OUTPUT (paths or s3:// URIs). ``options``: any RenderConfig field
    (method, width, chunk_frames, crf, flow_cache, workdir, s3_endpoint_url, ...)."""
    return run_render(_config(input, output, style, options), ray_address)


@flow(name="restyle", task_runner=ThreadPoolTaskRunner(max_workers=MAX_TASK_WORKERS), persist_result=False)
def restyle_flow(input: str, output: str, style: str, options: dict | None = None,
                 ray_address: str | None = None) -> dict:
    """Render the same film with a new style, reading every flow pair from the cache (a flow
    method is used: flow-blend unless ``options['method']`` names another)."""
    options = {"method": "flow-blend", **(options or {})}
    return run_render(_config(input, output, style, options), ray_address, restyle=True)


@flow(name="precompute-flow", task_runner=ThreadPoolTaskRunner(max_workers=MAX_TASK_WORKERS),
      persist_result=False)
def precompute_flow(input: str, options: dict | None = None, ray_address: str | None = None) -> dict:
    """Fill the flow cache for INPUT at the working width in ``options`` (all chunks in parallel)."""
    t0 = time.perf_counter()
    job_uri, job = _open_job(_config(input, "", None, options), ray_address, R.StageTimer(), with_style=False)
    try:
        report, nodes = _flow_stage(job)
    finally:
        ray_exec.release(job_uri)
    R.finish_work(job)
    T.forget_job(job_uri)
    say(f"flow: {report['pairs']} pairs, {report['computed']} computed, {report['cache_hits']} from the cache")
    return {"input": input, "frames": job.plan.frame_count, "chunks": len(job.plan.chunks), "flow": report,
            "flow_nodes": nodes, "wall_seconds": round(time.perf_counter() - t0, 3)}
