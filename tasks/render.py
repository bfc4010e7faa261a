"""Prefect tasks of the render flows: one generic task for the head stages, one per chunk unit.

No task takes or returns frames: a unit task gets a work URI plus a chunk id and runs on a Ray
worker (``tasks.ray_exec``), which reads the source and writes encoded segments to storage.

* Retries: every task retries (it may touch S3 or a Ray worker), except on errors the user must
  fix (a FilmstyleError other than StorageError) and after the render's pool was closed.
* No Prefect result caching: our own content-addressed caches decide what is done (the shot
  cache by source hash and detector, the flow markers, the chunks' done markers), so a Prefect
  cache could only ever disagree with them.
* Names: ``flow-s0003-c0002-f001200-001248`` / ``stylize-...`` (shot 3, chunk 2, frames), and
  the head stages by name (check, probe, shots, plan, assemble, report).
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.errors import FilmstyleError
from pipeline.storage import StorageError
from tasks import ray_exec

RETRIES = 2
RETRY_DELAY = [1, 4]


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


@task(name="stage", task_run_name="{name}", retries=RETRIES, retry_delay_seconds=RETRY_DELAY,
      retry_condition_fn=transient, cache_policy=NO_CACHE)
def stage(name: str, fn, args: tuple = (), kwargs: dict | None = None):
    """One head stage of ``engine.sequence`` (check, probe, shots, plan, assemble, report)."""
    return fn(*args, **(kwargs or {}))


@task(name="flow", task_run_name="flow-{chunk_id}", retries=RETRIES, retry_delay_seconds=RETRY_DELAY,
      retry_condition_fn=transient, cache_policy=NO_CACHE)
def flow_chunk(job_uri: str, chunk_id: str) -> dict:
    """Optical flow of one chunk's pairs (bridging pair included), on a Ray worker."""
    return ray_exec.flow_chunk(job_uri, chunk_id)


@task(name="stylize", task_run_name="stylize-{chunk_id}", retries=RETRIES, retry_delay_seconds=RETRY_DELAY,
      retry_condition_fn=transient, cache_policy=NO_CACHE)
def stylize_chunk(job_uri: str, chunk_id: str) -> dict:
    """Decode, stylize, upscale, encode and commit one chunk on a stylizer actor."""
    return ray_exec.stylize_chunk(job_uri, chunk_id)
