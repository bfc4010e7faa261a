"""The Prefect server the queue commands talk to, and the names of the filmstyle deployments on it."""
from __future__ import annotations

from pipeline.errors import InputError

RENDER = "render/filmstyle-render"
RESTYLE = "restyle/filmstyle-restyle"
PRECOMPUTE = "precompute-flow/filmstyle-precompute-flow"
DEPLOYMENTS = (RENDER, RESTYLE, PRECOMPUTE)


def connect() -> str:
    """The URL of the Prefect API in PREFECT_API_URL, checked to answer; one line otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise InputError("no Prefect server configured: start one ('prefect server start') and set "
                         "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise InputError(f"cannot reach the Prefect server at {url} ({type(error).__name__}): start it with "
                         "'prefect server start' or point PREFECT_API_URL at a running one")
    return url
