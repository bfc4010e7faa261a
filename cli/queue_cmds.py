"""``filmstyle deploy``, ``submit``, ``queue``, ``cancel`` and ``worker``: renders queued on a Prefect
server (``flows.deploy``, ``flows.queue``, ``flows.worker``; docs/orchestration.md walks through them)."""
from __future__ import annotations

import argparse
import dataclasses
import json

from .args import EPILOG, method_options, positive_int

SERVER = "The server is the one in PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)."


def _render_options(p: argparse.ArgumentParser) -> None:
    """The render options, each absent from the parsed arguments unless given (so that what a
    submission gives is merged over the deployment's defaults, not over ours)."""
    from engine.config import DEFAULT_METHOD
    from methods import METHODS

    from .render_cmds import add_render_options

    first = len(p._actions)
    add_render_options(p, method_default=DEFAULT_METHOD, methods=sorted(METHODS), io=False)
    for action in p._actions[first:]:
        action.default = argparse.SUPPRESS


def given_options(args) -> dict:
    """The render options given on the command line, as a deployment's ``options`` parameter."""
    from engine.config import RenderConfig

    fields = {f.name for f in dataclasses.fields(RenderConfig)} - {"input", "output", "style", "options"}
    given = {k: v for k, v in vars(args).items() if k in fields}
    opts = method_options(args)
    if opts:
        given["options"] = opts
    return given


def add_commands(sub) -> None:
    from flows.deploy import DEFAULT_POOL

    p = sub.add_parser("deploy", help="create the render deployments on a Prefect server", epilog=EPILOG,
                       description="Create or update the deployments render/filmstyle-render, "
                                   "restyle/filmstyle-restyle and precompute-flow/filmstyle-precompute-flow on "
                                   "the work pool (created when missing). Their code is the installed filmstyle "
                                   "package. Render options given here become the deployments' defaults. " + SERVER)
    p.add_argument("--pool", default=DEFAULT_POOL, help=f"process work pool (default: {DEFAULT_POOL})")
    p.add_argument("--renders", type=positive_int, default=None, metavar="N",
                   help="the pool's concurrency limit: at most N renders at once, whatever the workers")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="RAY_ADDRESS of the flow runs (default: the worker's environment; none: a local Ray)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="more environment for the flow runs (e.g. FILMSTYLE_S3_ENDPOINT_URL=...)")
    _render_options(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("submit", help="queue renders of films in styles on a Prefect server", epilog=EPILOG,
                       description="Queue one render per film and style on the render deployment. With a "
                                   "method that needs optical flow, each film's first style is rendered first "
                                   "and its other styles wait, then restyle from its flow cache. Options given "
                                   "here are merged over the deployment's defaults. " + SERVER)
    p.add_argument("inputs", nargs="+", metavar="IN", help="films: paths (as the workers see them) or s3:// URIs")
    p.add_argument("--style", dest="styles", action="append", required=True, metavar="NAME_OR_PATH",
                   help="a style; repeat for several")
    p.add_argument("-o", "--output", required=True, metavar="PATTERN",
                   help="output name, with {film} (the input's name without extension) and {style}, "
                        "e.g. 'out/{film}_{style}.mp4' or s3://films/out/{film}_{style}.mp4")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", default=None, metavar="TIME",
                      help="start at TIME (2026-12-24T02:00, or 02:00: the next one), not now")
    when.add_argument("--cron", default=None, metavar="EXPR",
                      help="render on this schedule (e.g. '0 2 * * *'), local time zone")
    _render_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("queue", help="list queued and recent renders with progress and ETA", epilog=EPILOG,
                       description="The renders on the server's filmstyle deployments: those not ended, and "
                                   "those that ended in the last 24 hours. " + SERVER)
    p.add_argument("--all", action="store_true", help="every render the server has")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("cancel", help="cancel queued or running renders", epilog=EPILOG,
                       description="Cancel renders by flow run id, id prefix or name (see 'filmstyle queue'). "
                                   "A render's committed chunks stay: submitting it again resumes. " + SERVER)
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("worker", help="run a worker of the render work pool (stops cleanly on SIGTERM)",
                       epilog=EPILOG,
                       description="Prefect's process worker for the pool. On SIGTERM or Ctrl-C it stops the "
                                   "flow runs it is running and requeues them (the next worker resumes them "
                                   "from their committed chunks), then exits. " + SERVER)
    p.add_argument("--pool", default=DEFAULT_POOL, help=f"work pool (default: {DEFAULT_POOL})")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="most flow runs this worker runs at once (default: no limit but the pool's)")
    p.add_argument("--name", default=None, help="worker name (default: Prefect's)")
    p.set_defaults(func=cmd_worker)


def cmd_deploy(args) -> int:
    from flows.deploy import deploy
    from flows.server import connect
    from pipeline.errors import InputError

    env = {}
    for item in args.env:
        if "=" not in item:
            raise InputError(f"--env {item}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    url = connect()
    ids = deploy(args.pool, ray_address=args.ray_address, env=env, options=given_options(args),
                 renders=args.renders)
    for name, dep_id in ids.items():
        print(f"{name}: {dep_id}")
    print(f"work pool {args.pool} on {url}: start a worker with 'filmstyle worker --pool {args.pool}'")
    return 0


def cmd_submit(args) -> int:
    from flows.queue import WAITING, submit, run_url

    subs = submit(args.inputs, args.styles, args.output, given_options(args), at=args.at, cron=args.cron)
    for s in subs:
        if s.run_id is None:
            print(f"schedule {s.name}: {s.film} in {s.style} -> {s.output} ({args.cron})")
            continue
        wait = f"  ({WAITING.lower()} for its film's first render)" if s.deployment.startswith("restyle") else ""
        print(f"{s.run_id}  {s.name}  {s.output}  {run_url(s.run_id)}{wait}")
    return 0


def cmd_queue(args) -> int:
    from flows.queue import queue

    rows = queue(show_all=args.all)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print("no renders queued")
        return 0
    table = [("RUN", "NAME", "STATE", "DONE", "ETA", "PROGRESS", "OUTPUT")]
    for r in rows:
        done = f"{r['percent']:.0f}%" if r["percent"] is not None else ""
        table.append((r["id"][:8], r["name"], r["state"], done, r["eta"], r["progress"], r["output"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_cancel(args) -> int:
    from flows.queue import cancel

    for ref in args.runs:
        print(cancel(ref))
    return 0


def cmd_worker(args) -> int:
    from flows.worker import run

    return run(args.pool, limit=args.limit, name=args.name)
