"""The deployments of the filmstyle flows on a Prefect work pool: ``filmstyle deploy`` (the one
definition; there is no prefect.yaml to keep in step with it).

* The flow code comes from the installed package: each deployment's entrypoint is a module path
  (``flows.render.render_flow``), so a worker needs filmstyle installed and nothing else: no
  working folder, no pull step, no placeholder to fill.
* The work pool (type ``process``) is created when missing; ``renders`` sets its concurrency limit,
  the most flow runs the pool runs at once, whichever workers take them. The stylizers of each
  render then share the Ray cluster, one actor per GPU (``tasks.ray_exec``).
* ``ray_address`` and ``env`` go into the deployments' job variables (the flow runs' environment);
  without them a flow run inherits its worker's environment (RAY_ADDRESS, FILMSTYLE_CACHE, AWS_*).
* ``options``: render options the render and restyle deployments default to; a submission's own
  options are merged over them (``flows.queue``).
"""
from __future__ import annotations

from uuid import UUID

from pipeline.errors import InputError

from .server import PRECOMPUTE, RENDER, RESTYLE, connect

DEFAULT_POOL = "filmstyle"
DESCRIPTIONS = {
    RENDER: "Stylize a film (probe, shots, plan, flow, stylize, upscale, assemble) on the Ray cluster.",
    RESTYLE: "Render a film again in a new style; every flow pair comes from the flow cache.",
    PRECOMPUTE: "Fill the flow cache of a film (all chunks in parallel) ahead of its renders.",
}


def flows() -> dict:
    """Deployment name ("flow/deployment") -> the flow object."""
    from flows.render import precompute_flow, render_flow, restyle_flow

    return {RENDER: render_flow, RESTYLE: restyle_flow, PRECOMPUTE: precompute_flow}


def ensure_pool(pool: str, renders: int | None = None) -> None:
    """Create the process work pool ``pool`` if missing; set its concurrency limit when given."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", concurrency_limit=renders))
            return
        if found.type != "process":
            raise InputError(f"work pool {pool!r} is of type {found.type!r}; filmstyle deploys to a process pool")
        if renders is not None and found.concurrency_limit != renders:
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=renders))


def deploy(pool: str = DEFAULT_POOL, *, ray_address: str | None = None, env: dict | None = None,
           options: dict | None = None, renders: int | None = None) -> dict[str, UUID]:
    """Create or update the three deployments on ``pool``; returns their ids by name."""
    from prefect.types.entrypoint import EntrypointType

    connect()
    ensure_pool(pool, renders)
    job_env = {**({"RAY_ADDRESS": ray_address} if ray_address else {}), **(env or {})}
    ids = {}
    for name, fl in flows().items():
        params = {"options": dict(options)} if options and name != PRECOMPUTE else {}
        deployment = fl.to_deployment(
            name=name.split("/")[1], description=DESCRIPTIONS[name], tags=["filmstyle"], parameters=params,
            job_variables={"env": job_env} if job_env else {}, entrypoint_type=EntrypointType.MODULE_PATH)
        ids[name] = deployment.apply(work_pool_name=pool)
    return ids
