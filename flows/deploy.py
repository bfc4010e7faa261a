"""Deployments of the filmstyle flows to a Prefect work pool, for scheduled and queued renders.

    prefect server start                               # or PREFECT_API_URL=... (a server, Prefect Cloud)
    prefect work-pool create filmstyle --type process
    python -m flows.deploy --pool filmstyle --ray-address ray://HEAD:10001 \\
        [--cron "0 2 * * *" --input s3://films/in.mp4 --output s3://films/out.mp4 --style NAME]
    prefect worker start --pool filmstyle              # on a machine that reaches the Ray head
    prefect deployment run render/filmstyle-render -p input=s3://... -p output=s3://... -p style=NAME

The same deployments are declared in prefect.yaml at the repository root (``prefect deploy --all``).
Each flow run joins the Ray cluster named by RAY_ADDRESS in the work pool's job variables (or the
``ray_address`` parameter) and reads and writes s3:// URIs; see docs/orchestration.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from uuid import UUID

ROOT = Path(__file__).resolve().parents[1]

# deployment name -> entrypoint (flow names: render, restyle, precompute-flow)
DEPLOYMENTS = {
    "filmstyle-render": "flows/render.py:render_flow",
    "filmstyle-restyle": "flows/render.py:restyle_flow",
    "filmstyle-precompute-flow": "flows/render.py:precompute_flow",
}


def deploy(pool: str, *, source: str | Path = ROOT, ray_address: str | None = None, env: dict | None = None,
           cron: str | None = None, parameters: dict | None = None, only: list[str] | None = None,
           tags: list[str] | None = None) -> dict[str, UUID]:
    """Create (or update) the deployments on the work pool ``pool``; returns their ids by name.

    ``source``: the folder (or git URL) the worker loads the flow code from. ``parameters`` and
    ``cron`` apply to the render deployment only (a scheduled render needs its input, output
    and style); the others are run on demand.
    """
    from prefect import flow

    job_variables = {"env": {**({"RAY_ADDRESS": ray_address} if ray_address else {}), **(env or {})}}
    ids = {}
    for name, entrypoint in DEPLOYMENTS.items():
        if only and name not in only:
            continue
        loaded = flow.from_source(source=str(source), entrypoint=entrypoint)
        scheduled = name == "filmstyle-render"
        ids[name] = loaded.deploy(
            name=name, work_pool_name=pool, job_variables=job_variables,
            cron=cron if scheduled else None, parameters=(parameters or {}) if scheduled else {},
            tags=["filmstyle", *(tags or [])], build=False, push=False, print_next_steps=False,
            ignore_warnings=True)
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="filmstyle", help="work pool (create it with 'prefect work-pool create')")
    ap.add_argument("--source", default=str(ROOT), help="where workers load the code from (folder or git URL)")
    ap.add_argument("--ray-address", default=None, help="RAY_ADDRESS for the flow runs (ray://HEAD:10001)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="more environment for the flow runs (e.g. FILMSTYLE_S3_ENDPOINT_URL=...)")
    ap.add_argument("--cron", default=None, help="schedule for the render deployment")
    ap.add_argument("--input", default=None, help="render deployment default: input URI")
    ap.add_argument("--output", default=None, help="render deployment default: output URI")
    ap.add_argument("--style", default=None, help="render deployment default: style")
    ap.add_argument("--options", default=None, metavar="JSON", help='render options, e.g. {"width": 960}')
    args = ap.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    params = {k: v for k, v in {"input": args.input, "output": args.output, "style": args.style}.items() if v}
    if args.options:
        params["options"] = json.loads(args.options)
    if args.cron and not {"input", "output"} <= set(params):
        ap.error("--cron needs --input and --output (a scheduled render must know what to render)")
    for name, dep_id in deploy(args.pool, source=args.source, ray_address=args.ray_address, env=env,
                               cron=args.cron, parameters=params).items():
        print(f"{name}: {dep_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
