"""Prefect tasks of the render flows: thin wrappers that take URIs, keys and small configs.

No task takes or returns frames or arrays: a task gets the render config (a dict), a source
description, or a work URI plus a chunk id; frames are read by Ray workers from the source and
written as encoded segments to storage. Each task calls pipeline/ (on this process) or
tasks.ray_exec (on the cluster).

* Retries: every task that touches storage (maybe S3) or a Ray worker retries, except on errors
  the user must fix (a FilmstyleError other than StorageError).
* Caching by our content-addressed keys: the shot list by (source content hash, detector
  params); a chunk's flow by the hash of its pairs' flow-cache keys, but only while the
  chunk's marker is in the flow cache (so a deleted cache is recomputed, never trusted).
  Stylized chunks need no Prefect cache: their done markers in the work storage are the
  record, and the flow skips committed chunks before submitting anything.
* Names: ``flow-s0003-c0002-f001200-001248`` / ``stylize-...`` (shot 3, chunk 2, frames).
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from typing import Any, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TaskRunContext

from pipeline import render as R
from pipeline.errors import FilmstyleError
from pipeline.shots import Shot
from pipeline.storage import StorageError, open_object
from tasks import ray_exec

RETRIES = 2
RETRY_DELAY = [1, 4]

_jobs: dict[str, R.RenderJob] = {}
_jobs_lock = threading.Lock()


def get_job(job_uri: str) -> R.RenderJob:
    """The job planned by this process (or loaded from its work storage)."""
    with _jobs_lock:
        job = _jobs.get(job_uri)
    if job is None:
        job = R.load_job(job_uri)
        with _jobs_lock:
            _jobs[job_uri] = job
    return job


def forget_job(job_uri: str) -> None:
    with _jobs_lock:
        _jobs.pop(job_uri, None)


def transient(task, task_run, state) -> bool:
    """Retry unless the error is one the user must fix (bad input, missing style, ...)."""
    try:
        state.result()
    except ray_exec.PoolClosed:
        return False
    except StorageError:
        return True
    except FilmstyleError:
        return False
    except Exception:
        return True
    return True


# ---------------------------------------------------------------- cache policies


def _shots_key(context: TaskRunContext, inputs: dict[str, Any]) -> str:
    cfg = R.RenderConfig.from_dict(inputs["config"])
    spec = json.dumps({"source": inputs["source"]["hash"], "params": asdict(cfg.shot_params()),
                       "frames": inputs["source"]["info"]["frame_count"]}, sort_keys=True)
    return "filmstyle-shots-" + hashlib.sha256(spec.encode()).hexdigest()[:32]


@dataclass
class FlowChunkCache(CachePolicy):
    """Key: our content key of the chunk's flow; valid only while its marker is in the flow cache."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        job = get_job(inputs["job_uri"])
        chunk = job.chunk(inputs["chunk_id"])
        if not R.flow_chunk_done(job, chunk):
            return None
        return f"filmstyle-flow-{R.flow_chunk_key(job, chunk)}"


# ---------------------------------------------------------------- tasks


@task(name="check", retries=RETRIES, retry_delay_seconds=RETRY_DELAY, retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def check(config: dict) -> str:
    """Fail before any work: the output must be writable and the style must exist. Returns the style path."""
    from models.checkpoint import resolve_style

    cfg = R.RenderConfig.from_dict(config)
    R.check_output(cfg.output, cfg.input, cfg.s3_config())
    return str(resolve_style(cfg.style, cfg.method))


@task(name="probe", retries=RETRIES, retry_delay_seconds=RETRY_DELAY, retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def probe(config: dict) -> dict:
    """Probe the input (an s3:// input is downloaded once per node, cached by content)."""
    cfg = R.RenderConfig.from_dict(config)
    return R.prepare_source(cfg.input, cfg.cache_dir, s3=cfg.s3_config()).to_dict()


@task(name="shots", cache_key_fn=_shots_key, persist_result=True)
def shots(config: dict, source: dict) -> list[list[int]]:
    cfg = R.RenderConfig.from_dict(config)
    found = R.find_shots(R.Source.from_dict(source), cfg.shot_params(), cfg.cache_dir)
    return [[s.start, s.end] for s in found]


@task(name="plan", retries=RETRIES, retry_delay_seconds=RETRY_DELAY, retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def plan(config: dict, source: dict, shot_list: list[list[int]], style_path: str | None,
         share_files: bool = False) -> str:
    """Plan chunks and storages, write job.json to the work storage; returns the work URI."""
    cfg = R.RenderConfig.from_dict(config)
    found = [Shot(i, a, b) for i, (a, b) in enumerate(shot_list)]
    job = R.plan_job(cfg, R.Source.from_dict(source), found, style_path=style_path, s3=cfg.s3_config(),
                     share_files=share_files)
    with _jobs_lock:
        _jobs[job.work_uri] = job
    return job.work_uri


@task(name="flow", task_run_name="flow-{chunk_id}", cache_policy=FlowChunkCache(), persist_result=True,
      retries=RETRIES, retry_delay_seconds=RETRY_DELAY, retry_condition_fn=transient)
def flow_chunk(job_uri: str, chunk_id: str) -> dict:
    """Optical flow of one chunk's pairs (bridging pair included), on a Ray worker."""
    return ray_exec.flow_chunk(job_uri, chunk_id)


@task(name="stylize", task_run_name="stylize-{chunk_id}", cache_policy=NO_CACHE,
      retries=RETRIES, retry_delay_seconds=RETRY_DELAY, retry_condition_fn=transient)
def stylize_chunk(job_uri: str, chunk_id: str) -> dict:
    """Decode, stylize, upscale, encode and commit one chunk on a stylizer actor."""
    return ray_exec.stylize_chunk(job_uri, chunk_id)


@task(name="assemble", retries=RETRIES, retry_delay_seconds=RETRY_DELAY, retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def assemble(job_uri: str) -> str | None:
    """Concatenate the segments with the source's audio into the output; returns the preview's URI."""
    return R.assemble_output(get_job(job_uri))


@task(name="report", retries=RETRIES, retry_delay_seconds=RETRY_DELAY, retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def publish_report(job_uri: str, report: dict) -> str:
    """Write the JSON report beside the output and a markdown artifact with a preview strip."""
    from prefect.artifacts import create_markdown_artifact

    job = get_job(job_uri)
    rep = R.RenderReport.from_dict(report)
    uri = R.write_report(job, rep)
    png = None
    if rep.preview:
        store, key = open_object(rep.preview, job.s3)
        try:
            png = store.get(key)
        except KeyError:
            png = None
    create_markdown_artifact(markdown=report_markdown(rep, png, uri), key="filmstyle-render",
                             description=f"filmstyle render of {rep.input}")
    return uri


def report_markdown(rep: R.RenderReport, png: bytes | None, report_uri: str) -> str:
    flow = rep.flow
    rows = [("input", rep.input), ("output", rep.output), ("style", rep.style), ("method", rep.method),
            ("frames", f"{rep.frames} at {rep.fps} fps ({rep.duration_s:.1f} s)"),
            ("shots / chunks", f"{rep.shots} / {rep.chunks} ({rep.chunks_resumed} resumed)"),
            ("working / delivery", f"{rep.working_size[0]}x{rep.working_size[1]} / "
                                   f"{rep.delivery_size[0]}x{rep.delivery_size[1]}"),
            ("wall", f"{rep.wall_seconds:.1f} s"),
            ("stages", ", ".join(f"{k} {v:.1f}s" for k, v in rep.stage_seconds.items()))]
    if flow:
        rows.append(("flow", f"{flow.get('pairs')} pairs, {flow.get('computed')} computed, "
                             f"{flow.get('cache_hits')} from the cache ({flow.get('cache')})"))
    if rep.workers:
        w = rep.workers
        rows.append(("workers", f"{w.get('count')} actors x {w.get('threads')} threads on {w.get('device')}, "
                                f"{len(w.get('nodes', []))} node(s)"))
    rows.append(("report", report_uri))
    table = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows)
    md = f"# filmstyle render\n\n| | |\n|---|---|\n{table}\n"
    if png:
        md += f"\n![preview](data:image/png;base64,{base64.b64encode(png).decode()})\n"
        md += f"\nPreview: {rep.preview}\n"
    return md
