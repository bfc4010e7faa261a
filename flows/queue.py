"""Renders queued on a Prefect server: ``filmstyle submit``, ``queue`` and ``cancel``.

* One flow run per (film, style) on the deployments of ``flows.deploy``, on the server named by
  PREFECT_API_URL. With a method that needs flow, a film's first style is a render and its other
  styles are restyle runs created *waiting* (Scheduled far ahead, state name "Waiting"): when the
  render ends, its state hook (``release_followers``) schedules them for now, so each film's flow
  is computed once and the restyles read it from the cache. A waiting run holds no worker slot.
* Options given on the command line are merged over the deployment's default options.
* ``--cron``: one schedule per film on the render deployment; its runs create their restyles
  when they end (the followers are given as specs, not run ids).
* ``queue`` reads each run's progress artifact (``flows.executor``: updated per chunk) and
  estimates the time left from the progress made since the run started.
* ``cancel``: a run not started yet is cancelled at once; a running one is set Cancelling and
  its worker stops it. Committed chunks stay in the work folder, so submitting it again resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from uuid import UUID

from pipeline.errors import InputError
from pipeline.storage import is_remote

from .server import DEPLOYMENTS, RENDER, RESTYLE, connect

WAITING = "Waiting"
REQUEUED = "Requeued"
HOLD = timedelta(days=3650)  # how far ahead a waiting run is scheduled


def _deployment(client, name: str, url: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise InputError(f"no deployment {name} on {url}: create it with 'filmstyle deploy'") from None


# ---------------------------------------------------------------- what to submit


@dataclasses.dataclass
class Submission:
    film: str
    style: str
    output: str
    deployment: str
    parameters: dict
    name: str
    run_id: UUID | None = None


def _local(uri: str) -> str:
    """A local path made absolute (the worker runs elsewhere, in another folder); URIs unchanged."""
    if is_remote(uri) or uri.startswith("file://"):
        return uri
    return str(Path(uri).expanduser().resolve())


def _stem(uri: str) -> str:
    return PurePosixPath(uri.split("://", 1)[-1]).stem


def merge_options(defaults: dict | None, given: dict) -> dict:
    """``given`` over ``defaults``; the method options (``options``) merged key by key too."""
    merged = {**(defaults or {}), **given}
    if "options" in (defaults or {}) or "options" in given:
        merged["options"] = {**(defaults or {}).get("options", {}), **given.get("options", {})}
    return merged


def plan(inputs: list[str], styles: list[str], pattern: str, options: dict) -> list[list[Submission]]:
    """Per film, its submissions in order (the first one renders, the others may follow it).
    ``pattern`` names each output with ``{film}`` (the input's file name without extension) and
    ``{style}``. Checks every pair like ``filmstyle render`` does, before anything is submitted."""
    from engine.config import RenderConfig
    from engine.sequence import check

    if len(inputs) > 1 and "{film}" not in pattern:
        raise InputError(f"-o {pattern}: several films need {{film}} in the output name")
    if len(styles) > 1 and "{style}" not in pattern:
        raise InputError(f"-o {pattern}: several styles need {{style}} in the output name")
    names = [_stem(f) for f in inputs]
    if len(set(names)) < len(names):
        raise InputError("two input films have the same file name: their outputs would collide")
    method = RenderConfig.from_dict({"input": "", "output": "", **options}).method
    from methods import method_class

    chained = method_class(method).needs_flow and len(styles) > 1
    films = []
    for film, fname in zip(inputs, names):
        film = _local(film)
        runs = []
        for i, style in enumerate(styles):
            is_path = os.sep in style or bool(Path(style).suffix)
            style_arg, label = (_local(style), _stem(style)) if is_path else (style, style)
            output = _local(pattern.format(film=fname, style=label))
            cfg = RenderConfig.from_dict({**options, "input": film, "output": output, "style": style_arg})
            check(cfg)
            follower = chained and i > 0
            opts = {**options, "method": method}
            runs.append(Submission(film, style_arg, output, RESTYLE if follower else RENDER,
                                   {"input": film, "output": output, "style": style_arg, "options": opts},
                                   f"{fname}-{label}"))
        films.append(runs)
    return films


# ---------------------------------------------------------------- submit


def _when(at: str | None) -> datetime:
    now = datetime.now(timezone.utc)
    if not at:
        return now
    try:
        t = datetime.fromisoformat(at)
    except ValueError:
        raise InputError(f"--at {at}: not a time (use e.g. 2026-12-24T02:00 or 02:00)") from None
    if len(at) <= 5:  # "HH:MM": the next such time
        t = datetime.combine(now.astimezone().date(), t.time()).astimezone()
        if t < now:
            t += timedelta(days=1)
    elif t.tzinfo is None:
        t = t.astimezone()
    return t.astimezone(timezone.utc)


def submit(inputs: list[str], styles: list[str], pattern: str, given: dict, *, at: str | None = None,
           cron: str | None = None) -> list[Submission]:
    """Queue every (film, style) on the server; returns the submissions with their run ids (none
    for ``cron``: a schedule per film, printed by the caller)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.states import Scheduled

    url = connect()
    with get_client(sync_client=True) as client:
        deps = {name: _deployment(client, name, url) for name in (RENDER, RESTYLE)}
        options = merge_options(deps[RENDER].parameters.get("options"), given)
        films = plan(inputs, styles, pattern, options)
        start = _when(at)
        if cron:
            try:
                schedule = CronSchedule(cron=cron, timezone=str(datetime.now().astimezone().tzinfo))
            except ValueError as e:
                raise InputError(f"--cron {cron}: {e}") from None
            for runs in films:
                lead, rest = runs[0], runs[1:]
                params = dict(lead.parameters)
                params["followers"] = [{"style": s.style, "output": s.output} for s in rest
                                       if s.deployment == RESTYLE]
                others = [s for s in rest if s.deployment != RESTYLE]
                for s in [lead, *others]:
                    p = params if s is lead else s.parameters
                    slug = "filmstyle-" + hashlib.sha1(repr(sorted(p.items())).encode()).hexdigest()[:12]
                    client.create_deployment_schedules(deps[RENDER].id, [(schedule, True)], parameters=p, slug=slug)
                    s.name = slug
            return [s for runs in films for s in runs]
        for runs in films:
            lead, rest = runs[0], runs[1:]
            followers = []
            for s in rest:
                if s.deployment == RESTYLE:
                    state = Scheduled(scheduled_time=start + HOLD, name=WAITING, message=f"waits for {lead.name}")
                else:
                    state = Scheduled(scheduled_time=start)
                s.run_id = client.create_flow_run_from_deployment(deps[s.deployment].id, parameters=s.parameters,
                                                                  name=s.name, state=state).id
                if s.deployment == RESTYLE:
                    followers.append(str(s.run_id))
            params = {**lead.parameters, "followers": followers}
            lead.run_id = client.create_flow_run_from_deployment(deps[RENDER].id, parameters=params, name=lead.name,
                                                                 state=Scheduled(scheduled_time=start)).id
    return [s for runs in films for s in runs]


def run_url(run_id) -> str:
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url or ""
    return f"{ui}/runs/flow-run/{run_id}" if ui else str(run_id)


# ---------------------------------------------------------------- followers


def _release(client, run_id: UUID) -> bool:
    from prefect.states import Scheduled

    run = client.read_flow_run(run_id)
    if run.state is None or not run.state.is_scheduled() or run.state.name != WAITING:
        return False
    client.set_flow_run_state(run_id, Scheduled(scheduled_time=datetime.now(timezone.utc)), force=True)
    return True


def release_followers(flow, flow_run, state) -> None:
    """State hook of the render flow: its film's restyles may run now (they read its flow cache)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    params = flow_run.parameters or {}
    followers = params.get("followers") or []
    if not followers:
        return
    with get_client(sync_client=True) as client:
        for f in followers:
            if isinstance(f, dict):  # a scheduled (cron) render: its restyles are made now
                run_deployment(RESTYLE, timeout=0, as_subflow=False, parameters={
                    "input": params["input"], "output": f["output"], "style": f["style"],
                    "options": params.get("options") or {}})
            else:
                _release(client, UUID(f))


# ---------------------------------------------------------------- queue and cancel


def _our_runs(client, *, limit: int):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    ids = []
    for name in DEPLOYMENTS:
        try:
            ids.append(client.read_deployment_by_name(name).id)
        except ObjectNotFound:
            pass
    if not ids:
        return []
    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)),
                                 sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)


def _progress(client, run_ids) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    if not run_ids:
        return {}
    arts = client.read_artifacts(artifact_filter=ArtifactFilter(
        type=ArtifactFilterType(any_=["progress"]), flow_run_id=ArtifactFilterFlowRunId(any_=list(run_ids))))
    return {a.flow_run_id: (float(a.data), a.description or "") for a in arts}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def queue(*, show_all: bool = False, limit: int = 200, since: timedelta = timedelta(hours=24)) -> list[dict]:
    """The submitted renders, newest first: those not ended, and (unless ``show_all``) those that
    ended within ``since``. Each row: id, name, state, percent, progress, eta, output."""
    from prefect.client.orchestration import get_client

    connect()
    now = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        runs = [r for r in _our_runs(client, limit=limit)
                if show_all or not r.state or not r.state.is_final() or (r.end_time and now - r.end_time < since)]
        progress = _progress(client, [r.id for r in runs])
    def order(r):  # running, then due, then waiting; ended ones last, newest first
        st = r.state
        if st and st.is_final():
            return (3, -(r.end_time or now).timestamp())
        if st and st.name == WAITING:
            return (2, 0.0)
        if st and st.is_scheduled():
            return (1, (r.expected_start_time or now).timestamp())
        return (0, (r.start_time or now).timestamp())

    rows = []
    for r in sorted(runs, key=order):
        percent, text = progress.get(r.id, (None, ""))
        eta = ""
        if r.state and r.state.is_running() and percent and 0 < percent < 100 and r.start_time:
            elapsed = (now - r.start_time).total_seconds()
            eta = _duration(elapsed * (100 - percent) / percent)
        state = r.state.name if r.state else "?"
        if r.state and r.state.name == WAITING and r.state.message:
            state = f"{WAITING} ({r.state.message.removeprefix('waits for ')})"
        rows.append({"id": str(r.id), "name": r.name, "state": state,
                     "percent": percent, "progress": text, "eta": eta,
                     "output": (r.parameters or {}).get("output", "")})
    return rows


def _find(client, ref: str):
    """A flow run of ours by id, id prefix or name (one not ended, if several share the name)."""
    try:
        return client.read_flow_run(UUID(ref))
    except ValueError:
        pass
    runs = [r for r in _our_runs(client, limit=200) if str(r.id).startswith(ref) or r.name == ref]
    if len(runs) > 1:
        runs = [r for r in runs if r.state and not r.state.is_final()] or runs
    if not runs:
        raise InputError(f"no filmstyle render {ref!r} on the server (see 'filmstyle queue')")
    if len(runs) > 1:
        raise InputError(f"{ref!r} names {len(runs)} renders: give more of the id "
                         f"({', '.join(str(r.id)[:8] for r in runs[:5])})")
    return runs[0]


def cancel(ref: str) -> str:
    """Cancel one render; its followers still waiting are released. Returns what was done."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled, Cancelling

    connect()
    with get_client(sync_client=True) as client:
        try:
            run = _find(client, ref)
        except ObjectNotFound:
            raise InputError(f"no flow run {ref} on the server") from None
        if run.state and run.state.is_final():
            raise InputError(f"{run.name} ({str(run.id)[:8]}) has already ended: {run.state.name}")
        started = run.state and (run.state.is_running() or run.state.name == "Pending")
        client.set_flow_run_state(run.id, Cancelling() if started else Cancelled(), force=not started)
        released = sum(_release(client, UUID(f)) for f in (run.parameters or {}).get("followers") or []
                       if not isinstance(f, dict))
    what = "stopping" if started else "cancelled"
    msg = f"{what} {run.name} ({run.id})"
    if started:
        msg += ": its worker stops it; the chunks it committed stay, so submitting it again resumes"
    if released:
        msg += f"; {released} restyle(s) of the same film released to run now"
    return msg
