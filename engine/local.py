"""The in-process executor (``--engine local``): every stage and unit in this process, in order.

Chains run one after another with one ``ChunkWorker`` (the method loaded once); torch uses every
core (or ``--threads``) inside each net call.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pipeline.device import resolve_device
from pipeline.plan import Chunk

from .chunks import ChunkWorker
from .config import RenderConfig
from .flow_stage import flow_for_chunk
from .job import RenderJob
from .progress import StageTimer, quiet
from .report import RenderReport
from .sequence import ChunkDone, Executor
from .sequence import precompute_flow as _precompute_flow
from .sequence import render as _render


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, log=print, threads: int | None = None):
        super().__init__(log)
        self.threads = threads

    def start(self, cfg: RenderConfig) -> int:
        from methods import configure_threads

        configure_threads(cfg.threads if cfg.threads is not None else self.threads)
        return 1

    def device(self, cfg: RenderConfig) -> str:
        return resolve_device(cfg.device)

    def flow(self, job: RenderJob, chunks: list[Chunk], done: ChunkDone) -> None:
        for chunk in chunks:
            done(chunk, flow_for_chunk(job, chunk))

    def stylize(self, job: RenderJob, chains: list[list[Chunk]], done: ChunkDone) -> dict:
        """One chunk after another; each chunk's segment is finished and committed in a thread
        while the net runs the next one (``ChunkWorker.start``), and reported here once it landed.
        A failure stops the render with the chunks before it committed and nothing after."""
        import torch

        worker = ChunkWorker(job, device=job.cfg.device)
        pending: tuple | None = None  # (chunk, timer, future of its commit)

        def land() -> None:
            nonlocal pending
            if pending is not None:
                chunk, timer, future = pending
                pending = None
                info = future.result()
                done(chunk, {**info, "stages": timer.seconds})

        with ThreadPoolExecutor(1, thread_name_prefix="filmstyle-commit") as committer:
            try:
                for chain in chains:
                    state = None  # the first chunk of a chain loads its carry-in from storage (or starts a shot)
                    for chunk in chain:
                        if worker.needs_stored_state(chunk, state):
                            land()
                        timer = StageTimer()
                        state, commit = worker.start(chunk, state, timer=timer)
                        try:
                            land()  # the previous chunk's commit ran beside this chunk's net
                        except BaseException:
                            commit.abort()
                            raise
                        pending = (chunk, timer, committer.submit(commit))
                land()
            finally:
                if pending is not None:  # let a commit that was under way land (its chunk is whole)
                    pending[2].exception()
        return {"count": 1, "device": job.cfg.device, "threads": torch.get_num_threads(), "nodes": []}


def render(cfg: RenderConfig, *, progress: bool = True, log=print) -> RenderReport:
    """Render ``cfg.input`` to ``cfg.output`` in this process. Raises FilmstyleError on bad input."""
    return _render(cfg, LocalExecutor(log if progress and log else quiet))


def precompute_flow(cfg: RenderConfig, *, progress: bool = True, log=print) -> dict:
    """Fill the flow cache for ``cfg.input`` at ``cfg.width`` in this process."""
    return _precompute_flow(cfg, LocalExecutor(log if progress and log else quiet))
