"""Argument helpers shared by the commands: value types and the option groups several commands take.

The method options are not written here: ``add_method_options`` derives a flag from each
``Option`` a registered method declares, and ``method_options`` collects the ones given.
"""
from __future__ import annotations

import argparse

EPILOG = "Errors are printed as one line ('filmstyle: error: ...') with exit code 2."


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_device_option(p: argparse.ArgumentParser, what: str = "the networks") -> None:
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help=f"where {what} run: auto takes a GPU when there is one (default: auto)")


def add_shot_options(p: argparse.ArgumentParser) -> None:
    from pipeline.shots import DETECTORS

    g = p.add_argument_group("shot detection")
    g.add_argument("--detector", default="adaptive", choices=sorted(DETECTORS),
                   help="PySceneDetect detector (default: adaptive)")
    g.add_argument("--threshold", type=float, default=None,
                   help="detector threshold (default: the detector's own default)")
    g.add_argument("--min-shot-frames", type=positive_int, default=15, metavar="N",
                   help="cuts closer than N frames are checked for false detections: a flash (the picture "
                        "comes back) or a burst (a fade, a whip pan) is no cut; a short shot after a true "
                        "cut stays a shot (default: 15)")


def add_flow_options(p: argparse.ArgumentParser, d) -> None:
    from pipeline.flow import FLOW_BACKENDS

    g = p.add_argument_group("optical flow (methods that need it)")
    g.add_argument("--flow-backend", default=d.flow_backend, choices=sorted(FLOW_BACKENDS),
                   help=f"optical flow backend (default: {d.flow_backend})")
    g.add_argument("--flow-preset", default=d.flow_preset, choices=["ultrafast", "fast", "medium"],
                   help=f"DIS preset (default: {d.flow_preset})")
    g.add_argument("--flow-cache", default=None, metavar="URI",
                   help="flow cache folder or s3:// URI, shared by restyles of the same film (default: "
                        "CACHE/flow, or OUT's folder/.filmstyle/flow-cache for an s3:// OUT)")
    g.add_argument("--soft-mask", action="store_true", help="soft occlusion mask instead of a hard one")


def add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per option name that any registered method declares (``methods.base.Option``)."""
    from methods import METHODS

    g = p.add_argument_group("method options")
    seen: set[str] = set()
    for name, cls in sorted(METHODS.items()):
        for o in cls.options:
            if o.name in seen:
                continue
            seen.add(o.name)
            takers = ", ".join(m for m, c in sorted(METHODS.items()) if any(x.name == o.name for x in c.options))
            if o.type is bool:
                g.add_argument(o.flag, dest=o.name, action="store_const", const=not o.default, default=None,
                               help=f"{takers}: {'do not ' if o.default else ''}{o.help}")
            else:
                g.add_argument(o.flag, dest=o.name, type=o.type, default=None,
                               metavar=None if o.choices else o.name.upper(),
                               choices=list(o.choices) or None,
                               help=f"{takers}: {o.help} (default: {o.default})")


def method_options(args) -> dict:
    """The method options given on the command line (None: not given)."""
    from methods import all_options

    return {n: getattr(args, n) for n in all_options() if getattr(args, n, None) is not None}


def add_engine_options(p: argparse.ArgumentParser, engine: bool = True) -> None:
    """Storage settings; ``engine``: also --engine and --ray-address (not for queued renders,
    whose worker's environment says where they run)."""
    g = p.add_argument_group("engine and storage" if engine else "storage")
    if engine:
        g.add_argument("--engine", default="prefect", choices=["prefect", "local"],
                       help="prefect: a Prefect flow on Ray (local Ray and Prefect unless told otherwise); "
                            "local: everything in this process (default: prefect)")
        g.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="HOST:PORT: join the Ray cluster whose head runs `ray start --head --port PORT` there; "
                            "auto: the cluster `ray start` runs on this machine; local: a private Ray "
                            "(default: $RAY_ADDRESS, else the cluster running on this machine if any, else local)")
    g.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                   help="S3-compatible endpoint (default: $FILMSTYLE_S3_ENDPOINT_URL or $AWS_ENDPOINT_URL)")
    g.add_argument("--s3-region", default=None, help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    g.add_argument("--s3-profile", default=None, help="AWS profile for S3 (default: $AWS_PROFILE)")
    g.add_argument("--s3-checksum", default=None, choices=["when_required", "when_supported"],
                   help="request/response checksums; many S3-compatible stores need when_required "
                        "(default: $FILMSTYLE_S3_CHECKSUM or when_required)")


def config_from_args(args, **fixed):
    """A RenderConfig from every parsed argument that names one of its fields (plus ``fixed``)."""
    import dataclasses

    from engine.config import RenderConfig

    names = {f.name for f in dataclasses.fields(RenderConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    given.update(fixed)
    given.setdefault("output", "")
    opts = method_options(args)
    if opts and "method" in given:
        from methods import validate_options

        validate_options(given["method"], opts)  # a flag the method does not take is an error
    return RenderConfig(**given, options=opts)

