"""The Prefect + Ray executor of ``engine.sequence``: head stages as Prefect tasks, units on Ray.

* Flow: one Ray task per chunk, all chunks in parallel (at most two in flight per core).
* Stylize: a pool of stylizer actors sized from the cluster (``tasks.ray_exec``); the chunks of
  a chain run one after another, each chain's next chunk is submitted when its previous one is
  done (so no thread waits on an upstream chunk), chains run in parallel.
* Report: the JSON report plus a markdown artifact (the report's summary rows and a preview).
* Progress: a Prefect progress artifact of the flow run, updated after each chunk (at most once a
  second, and at every stage change), which ``filmstyle queue`` reads.
"""
from __future__ import annotations

import base64
import concurrent.futures
import logging
import os
import time
from collections import deque

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from engine.config import RenderConfig
from engine.job import RenderJob
from engine.progress import RenderProgress
from engine.report import RenderReport, summary_rows, write_report
from engine.sequence import ChunkDone, Executor
from pipeline.errors import InputError
from pipeline.plan import Chunk
from tasks import ray_connect, ray_exec
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


def run_bounded(items, submit, limit: int, on_done, follow=None) -> None:
    """Submit ``items`` as Prefect tasks with at most ``limit`` in flight; ``on_done(item, result)``
    for each finished one (its exceptions propagate); ``follow(item)`` may return the next item to
    submit (the next chunk of a chain), which goes first."""
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
            on_done(item, fut.result())
            nxt = follow(item) if follow else None
            if nxt is not None:
                pending.appendleft(nxt)


class PrefectRayExecutor(Executor):
    name = "prefect+ray"

    def __init__(self, ray_address: str | None = None, log=say):
        super().__init__(log)
        self.ray_address = ray_address
        self.pool = None
        self._artifact, self._sent = None, (None, 0.0)

    def progress(self, progress: RenderProgress) -> None:
        """The run's progress artifact: created on the first call, then updated in place."""
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        stage, last = self._sent
        now = time.monotonic()
        if stage == progress.stage and now - last < 1.0 and progress.percent < 99.0:
            return
        self._sent = (progress.stage, now)
        try:
            if self._artifact is None:
                self._artifact = create_progress_artifact(progress.percent, description=progress.text())
            else:
                update_progress_artifact(self._artifact, progress.percent, description=progress.text())
        except MissingContextError:
            pass  # not in a flow run (nothing watches)
        except Exception as e:  # a watcher's view: never worth failing the render for
            logging.getLogger("filmstyle").debug("progress artifact: %s", e)

    def start(self, cfg: RenderConfig) -> int:
        info = ray_connect.connect(self.ray_address)
        if info["note"]:
            self.log(info["note"])
        return info["nodes"]

    def device(self, cfg: RenderConfig) -> str:
        gpus = sum(n["gpus"] for n in ray_connect.cluster_nodes())
        if cfg.device.startswith("cuda") and not gpus:
            raise InputError(f"--device {cfg.device}: the Ray cluster has no GPU")
        return "cuda" if gpus and cfg.device != "cpu" else "cpu"

    def stage(self, name: str, fn, *args, **kwargs):
        return T.stage(name, fn, args, kwargs)

    def open_job(self, job: RenderJob) -> None:
        ray_exec.register_job(job)

    def close_job(self, job: RenderJob) -> None:
        ray_exec.release(job.work_uri)

    def flow(self, job: RenderJob, chunks: list[Chunk], done: ChunkDone) -> None:
        cpus = int(sum(n["cpus"] for n in ray_connect.cluster_nodes())) or 1
        run_bounded(chunks, lambda c: T.flow_chunk.submit(job.work_uri, c.id), min(MAX_TASK_WORKERS, 2 * cpus), done)

    def stylize(self, job: RenderJob, chains: list[list[Chunk]], done: ChunkDone) -> dict:
        pool = ray_exec.start_pool(job.work_uri, threads=job.cfg.threads, device=job.cfg.device)
        workers = ray_exec.pool_info(pool)
        self.log(f"stylize: {pool.size} {workers['device']} actor(s) x {workers['threads']} thread(s)")
        following = {a.id: b for chain in chains for a, b in zip(chain, chain[1:])}
        run_bounded([chain[0] for chain in chains], lambda c: T.stylize_chunk.submit(job.work_uri, c.id),
                    min(MAX_TASK_WORKERS, 2 * pool.size), done, follow=lambda c: following.get(c.id))
        return ray_exec.pool_info(pool)  # again: actors lost and chunks retried

    def publish(self, job: RenderJob, report: RenderReport) -> str:
        """The JSON report, and a markdown artifact with the summary and the preview strip."""
        from prefect.artifacts import create_markdown_artifact

        from pipeline.storage import open_object

        uri = write_report(job, report)
        png = None
        if report.preview:
            store, key = open_object(report.preview, job.s3)
            try:
                png = store.get(key)
            except KeyError:
                png = None
        table = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in summary_rows(report, uri))
        md = f"# filmstyle render\n\n| | |\n|---|---|\n{table}\n"
        if png:
            md += f"\n![preview](data:image/png;base64,{base64.b64encode(png).decode()})\n\nPreview: {report.preview}\n"
        create_markdown_artifact(markdown=md, key="filmstyle-render", description=f"filmstyle render of {report.input}")
        return uri
