"""Ray execution for the Prefect engine: flow tasks and the stylizer actor pool.

Prefect tasks (tasks/render.py) call these functions directly (no prefect-ray): a Prefect task
submits one Ray task or actor call and waits for it, so Prefect keeps retries, names and states
while Ray places the work.

* Which Ray (join a cluster, or a private local one) is tasks/ray_connect.py's.
* Flow: ``flow_chunk`` runs ``engine.flow_stage.flow_for_chunk`` for one chunk as a Ray task
  (1 CPU, SPREAD over the nodes, OpenCV single-threaded so N tasks use N cores); one whose worker
  or node dies is run again by ``flow_chunk`` itself, with a warning line, not by Ray's silent retries.
* Stylize: ``StylizePool`` holds ``StylizeActor``s, each loading the model once per job
  (``engine.chunks.ChunkWorker``). Its size comes from the cluster's resources: one actor per
  GPU; on CPU nodes one actor per ``threads`` cores (default 1 thread: on 2 cores, 2 actors x 1
  thread stylized 4x faster than 1 actor x 2 threads here, see docs/orchestration.md). A call
  whose actor (or its node) dies is re-run on another actor; the pool replaces lost actors as far
  as the remaining resources allow.
* State chains: ``stylize_chunk`` passes the previous chunk's carry state as the ObjectRef its
  actor call returned (it never travels through Prefect); when that object is gone (its node
  died) or absent (the previous chunk was committed by an earlier run) the actor loads the
  committed state from storage instead.

FilmstyleErrors raised on a worker come back as themselves (``unwrap``), so the CLI can print
them as one line.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass

import ray
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

from pipeline.errors import FilmstyleError

from .ray_connect import cluster_nodes

log = logging.getLogger("filmstyle.ray")

DEFAULT_CPU_THREADS = int(os.environ.get("FILMSTYLE_ACTOR_THREADS", "1"))
MAX_ATTEMPTS = 4  # actor calls (or flow tasks) per chunk before giving up (on top of Prefect's task retries)
REPLACE_TIMEOUT_S = 120.0  # a replacement actor that cannot be placed by then is given up


class WorkersLost(RuntimeError):
    """Every stylizer actor died and none could be replaced."""


class PoolClosed(WorkersLost):
    """The render is over (failed or done): its actors were stopped. Not worth a retry."""


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def unwrap(e: BaseException) -> BaseException:
    """The error behind Ray's and Prefect's wrappers: the first FilmstyleError in the chain of
    causes, else the exception a Ray task raised, else ``e`` itself."""
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, FilmstyleError):
            return cur
        cause = getattr(cur, "cause", None) if isinstance(cur, RayTaskError) else None
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    cause = getattr(e, "cause", None) if isinstance(e, RayTaskError) else None
    return cause if isinstance(cause, BaseException) else e


def _get(ref):
    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = unwrap(e)
        if cause is e:
            raise
        raise cause from None


# ---------------------------------------------------------------- jobs


_jobs: dict[str, tuple[object, object]] = {}  # work URI -> (RenderJob, ObjectRef of it)
_states: dict[tuple[str, str], object] = {}  # (work URI, chunk id) -> ObjectRef of its carry state
_pools: dict[str, StylizePool] = {}
_lock = threading.Lock()


def register_job(job) -> None:
    """Put the job in the object store once; every task and actor call takes the ref."""
    with _lock:
        if job.work_uri not in _jobs:
            _jobs[job.work_uri] = (job, ray.put(job))


def _job_ref(job_uri: str):
    try:
        return _jobs[job_uri][1]
    except KeyError:
        raise RuntimeError(f"job {job_uri} is not registered with Ray (call register_job first)") from None


def release(job_uri: str) -> None:
    """Drop the job's object refs and state refs and stop its actors."""
    with _lock:
        pool = _pools.pop(job_uri, None)
        _jobs.pop(job_uri, None)
        for k in [k for k in _states if k[0] == job_uri]:
            del _states[k]
    if pool is not None:
        pool.close()


# ---------------------------------------------------------------- flow: Ray tasks


@ray.remote(num_cpus=1, max_retries=0)  # re-run by flow_chunk, which says so
def _flow_chunk(job, chunk_id: str) -> dict:
    import cv2

    from engine.flow_stage import flow_for_chunk
    from pipeline.memtune import tune_malloc

    tune_malloc()  # as the CLI does for its own process
    cv2.setNumThreads(1)  # one core per task: N tasks use N cores
    t, cpu = time.perf_counter(), sum(os.times()[:4])  # this process and its (finished) ffmpeg decoders
    out = flow_for_chunk(job, job.chunk(chunk_id))
    return {**out, "node": node_id(), "seconds": round(time.perf_counter() - t, 3),
            "cpu_seconds": round(sum(os.times()[:4]) - cpu, 3)}


def flow_chunk(job_uri: str, chunk_id: str) -> dict:
    """Compute (or find cached) the flow of one chunk on some node; returns counts, the node and the
    attempts. A task whose worker or node dies runs again (up to MAX_ATTEMPTS), with one line each:
    Ray's own retries would be silent, and the render's summary lists the chunks re-run."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            out = _get(_flow_chunk.options(scheduling_strategy="SPREAD").remote(_job_ref(job_uri), chunk_id))
            return {**out, "attempts": attempt}
        except (WorkerCrashedError, NodeDiedError, ObjectLostError) as e:
            if attempt == MAX_ATTEMPTS:
                raise WorkersLost(f"flow of {chunk_id}: its worker died {MAX_ATTEMPTS} times ({type(e).__name__})") from e
            log.warning("flow worker lost while computing %s (%s); running it again", chunk_id, type(e).__name__)


# ---------------------------------------------------------------- stylize: actors


@dataclass(frozen=True)
class ActorPlan:
    count: int
    threads: int  # torch (and OpenCV) threads per actor
    num_cpus: float
    num_gpus: float
    device: str


def plan_actors(nodes: list[dict] | None = None, threads: int | None = None, device: str = "auto") -> ActorPlan:
    """One actor per GPU (unless ``device`` is cpu); else per CPU node one actor per ``threads``
    cores (node by node, so no actor asks for more cores than a node has; an actor asking for a
    GPU on a CPU-only cluster would wait forever)."""
    if nodes is None:
        nodes = cluster_nodes()
    gpus = int(sum(n["gpus"] for n in nodes)) if device != "cpu" else 0
    if gpus:
        return ActorPlan(count=gpus, threads=threads or 2, num_cpus=1, num_gpus=1, device="cuda")
    most = max((int(n["cpus"]) for n in nodes), default=1)
    t = max(1, min(threads or DEFAULT_CPU_THREADS, most))
    count = sum(int(n["cpus"]) // t for n in nodes)
    return ActorPlan(count=max(1, count), threads=t, num_cpus=t, num_gpus=0, device="cpu")


@ray.remote
class StylizeActor:
    """Holds the model (one ChunkWorker per job) and renders chunks on its node."""

    def __init__(self, threads: int, device: str):
        import cv2
        import torch

        from pipeline.memtune import tune_malloc

        tune_malloc()  # keep freed tensor memory in the heap (measured +19% frames/s here)
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.device = device
        self.workers: dict[str, object] = {}

    def node(self) -> str:
        return node_id()

    def render(self, job, chunk_id: str, state: bytes | None):
        from engine.chunks import ChunkWorker
        from engine.progress import StageTimer
        from pipeline.carry import CarryState

        worker = self.workers.get(job.work_uri)
        if worker is None:
            self.workers = {job.work_uri: ChunkWorker(job, device=self.device)}  # one job at a time
            worker = self.workers[job.work_uri]
        carry = CarryState.from_bytes(state) if state is not None else None
        timer = StageTimer()
        out, info = worker.run(job.chunk(chunk_id), carry, timer=timer, meta={"node": node_id()})
        info["stages"] = {k: round(v, 3) for k, v in timer.seconds.items()}
        return info, (out.to_bytes() if out is not None else None)


class StylizePool:
    """A thread-safe pool of stylizer actors: ``call`` blocks until an actor is free."""

    def __init__(self, job_uri: str, plan: ActorPlan, *, ready_timeout: float = 600.0):
        self.job_uri, self.plan = job_uri, plan
        self._idle: queue.Queue = queue.Queue()
        self._actors: list = []
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []  # replacement starters
        self.lost = 0  # actors lost (died, or their node did)
        self.retried: list[str] = []  # chunks re-run on another actor
        # retried chunks that the lost actor had committed before it died (found done, not re-rendered)
        self.found_committed: list[str] = []
        actors = [self._new_actor() for _ in range(plan.count)]
        refs = [a.node.remote() for a in actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=ready_timeout)
        self.nodes: dict[int, str] = {}
        for i, (actor, ref) in enumerate(zip(actors, refs)):
            if ref in ready:
                self.nodes[i] = ray.get(ref)
                self._actors.append(actor)
                self._idle.put(actor)
            else:
                ray.kill(actor)
        if not self._actors:
            raise WorkersLost(f"no stylizer actor started within {ready_timeout:.0f}s "
                              f"(asked for {plan.num_cpus} CPU, {plan.num_gpus} GPU each)")

    @property
    def size(self) -> int:
        return len(self._actors)

    def _new_actor(self):
        p = self.plan
        return StylizeActor.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus, scheduling_strategy="SPREAD",
                                    max_restarts=0, max_concurrency=1).remote(p.threads, p.device)

    def _lost(self, actor) -> None:
        """Forget a dead actor; start replacements as far as the remaining resources allow."""
        with self._lock:
            if actor in self._actors:
                self._actors.remove(actor)
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
            want = plan_actors(threads=self.plan.threads, device=self.plan.device).count
            missing = want - len(self._actors) - self._pending
            for _ in range(max(0, missing)):
                self._pending += 1
                t = threading.Thread(target=self._start_replacement, daemon=True)
                self._threads.append(t)
                t.start()

    def _start_replacement(self) -> None:
        """Start one actor and wait (in short steps, so close() is never kept waiting) until it runs;
        one that cannot be placed within REPLACE_TIMEOUT_S (its node is gone and no room is left) is
        dropped. A thread blocked in ray.get at exit made the driver's core worker abort the process
        (exit code 1 after a render that had finished)."""
        actor = self._new_actor()
        ref, deadline = actor.node.remote(), time.monotonic() + REPLACE_TIMEOUT_S
        ready = []
        while not ready and not self._closed and time.monotonic() < deadline:
            ready, _ = ray.wait([ref], timeout=1.0)
        ok = False
        if ready:
            try:
                ray.get(ref)
                ok = True
            except Exception:
                pass
        with self._lock:
            self._pending -= 1
            if ok and not self._closed:
                self._actors.append(actor)
                self._idle.put(actor)
                log.info("stylizer actor replaced")
                return
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass

    def _acquire(self):
        while True:
            try:
                return self._idle.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._closed:
                        raise PoolClosed("the stylizer pool is closed")
                    if not self._actors and not self._pending:
                        raise WorkersLost("every stylizer actor died and the cluster has no room for new ones")

    def call(self, chunk_id: str, state_ref=None) -> tuple[dict, object]:
        """Render one chunk on a free actor: (info, ObjectRef of the carry-out state bytes)."""
        last: BaseException | None = None
        for _ in range(MAX_ATTEMPTS):
            actor = self._acquire()
            try:
                info_ref, out_ref = actor.render.options(num_returns=2).remote(_job_ref(self.job_uri), chunk_id,
                                                                              state_ref)
                info = ray.get(info_ref)
            except RayActorError as e:  # the actor or its node died: run the chunk elsewhere
                log.warning("stylizer actor lost while rendering %s (%s); retrying on another", chunk_id,
                            type(e).__name__)
                self._lost(actor)
                self.lost += 1
                self.retried.append(chunk_id)
                last = e
                continue
            except ObjectLostError as e:  # the carry state lived on a dead node: load it from storage
                self._idle.put(actor)
                state_ref, last = None, e
                continue
            except RayTaskError as e:
                self._idle.put(actor)
                cause = unwrap(e)
                if isinstance(cause, ObjectLostError):
                    state_ref, last = None, cause
                    continue
                if cause is e:
                    raise
                raise cause from None
            self._idle.put(actor)
            if last is not None and info.get("resumed"):
                self.found_committed.append(chunk_id)
            return info, out_ref
        raise WorkersLost(f"{chunk_id}: failed on {MAX_ATTEMPTS} stylizer actors ({last})")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            actors, self._actors = self._actors, []
        for t in self._threads:  # they see _closed within a second
            t.join(timeout=5.0)
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass


def start_pool(job_uri: str, threads: int | None = None, device: str = "auto") -> StylizePool:
    """Size and start the job's actor pool (after the flow stage: actors hold their cores)."""
    plan = plan_actors(threads=threads, device=device)
    pool = StylizePool(job_uri, plan)
    with _lock:
        _pools[job_uri] = pool
    return pool


def pool_info(pool: StylizePool) -> dict:
    return {**asdict(pool.plan), "count": len(pool.nodes), "nodes": sorted(set(pool.nodes.values())),
            "actors_lost": pool.lost, "chunks_retried": list(pool.retried),
            "retries_found_committed": list(pool.found_committed)}


def stylize_chunk(job_uri: str, chunk_id: str) -> dict:
    """Render one chunk on the job's pool, chaining the carry state by ObjectRef within the shot."""
    job = _jobs[job_uri][0]
    chunk = job.chunk(chunk_id)
    prev = job.previous(chunk)
    state_ref = _states.get((job_uri, prev.id)) if prev is not None and job.chained else None
    try:
        pool = _pools[job_uri]
    except KeyError:
        raise PoolClosed(f"no stylizer pool for {job_uri} (not started, or the render is over)") from None
    info, out_ref = pool.call(chunk_id, state_ref)
    with _lock:
        if job.chained and chunk.end < job.plan.shots[chunk.shot].end:  # the next chunk of the shot wants it
            _states[(job_uri, chunk_id)] = out_ref
        if prev is not None:
            _states.pop((job_uri, prev.id), None)
    return info
