"""Prefect flows: ``render``, ``restyle`` and ``precompute_flow``: ``engine.sequence`` run by the
Prefect + Ray executor (``flows.executor``). Prefect orchestrates, Ray executes.

``checked``: the CLI has run ``engine.sequence.check`` already (bad input fails in a second,
before Prefect and Ray start); a deployment's run leaves it False and checks in the flow.
``followers``: restyle runs of the same film waiting for this render's flow cache
(``flows.queue``); its state hooks release them however the render ends.
"""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from engine import sequence
from engine.config import DEFAULT_STYLE, RESTYLE_METHOD, RenderConfig
from flows.executor import MAX_TASK_WORKERS, PrefectRayExecutor
from flows.queue import release_followers


def _config(input: str, output: str, style: str | None, options: dict | None) -> RenderConfig:
    d = dict(options or {})
    d.update(input=input, output=output)
    if style is not None:
        d["style"] = style
    return RenderConfig.from_dict(d)


@flow(name="render", task_runner=ThreadPoolTaskRunner(max_workers=MAX_TASK_WORKERS), persist_result=False,
      on_completion=[release_followers], on_failure=[release_followers], on_crashed=[release_followers],
      on_cancellation=[release_followers])
def render_flow(input: str, output: str, style: str = DEFAULT_STYLE, options: dict | None = None,
                ray_address: str | None = None, checked: bool = False, followers: list | None = None) -> dict:
    """Stylize INPUT into OUTPUT (paths or s3:// URIs). ``options``: any RenderConfig field
    (method, width, chunk_frames, crf, flow_cache, workdir, s3_endpoint_url, ...) and the
    method's options (strength, ...)."""
    cfg = _config(input, output, style, options)
    return asdict(sequence.render(cfg, PrefectRayExecutor(ray_address), checked=checked))


@flow(name="restyle", task_runner=ThreadPoolTaskRunner(max_workers=MAX_TASK_WORKERS), persist_result=False)
def restyle_flow(input: str, output: str, style: str, options: dict | None = None,
                 ray_address: str | None = None, checked: bool = False) -> dict:
    """Render the same film with a new style, reading every flow pair from the cache (a flow
    method is used: flow-blend unless ``options['method']`` names another)."""
    cfg = _config(input, output, style, {"method": RESTYLE_METHOD, **(options or {})})
    return asdict(sequence.render(cfg, PrefectRayExecutor(ray_address), restyle=True, checked=checked))


@flow(name="precompute-flow", task_runner=ThreadPoolTaskRunner(max_workers=MAX_TASK_WORKERS),
      persist_result=False)
def precompute_flow(input: str, options: dict | None = None, ray_address: str | None = None,
                    checked: bool = False) -> dict:
    """Fill the flow cache for INPUT at the working width in ``options`` (all chunks in parallel)."""
    return sequence.precompute_flow(_config(input, "", None, options), PrefectRayExecutor(ray_address),
                                    checked=checked)
