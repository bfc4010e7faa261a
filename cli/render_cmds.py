"""``filmstyle render``, ``restyle`` and ``precompute-flow``: a RenderConfig from the arguments,
checked here (bad input fails in a second, in one line), then run by the chosen executor."""
from __future__ import annotations

import argparse
import sys

from .args import (EPILOG, add_device_option, add_engine_options, add_flow_options, add_method_options,
                   add_shot_options, config_from_args, positive_int)


def add_render_options(p: argparse.ArgumentParser, *, method_default: str, methods: list[str],
                       style_required: bool = False, io: bool = True) -> None:
    """The options of a render; ``io``: also IN, -o OUT and --style (``submit`` has its own)."""
    from engine.config import DEFAULT_STYLE, RenderConfig
    from pipeline.delivery import CODEC_NAMES, COLOR_NAMES
    from pipeline.device import PRECISIONS
    import models.upscalers  # noqa: F401  (registers the learned upscalers)
    from pipeline.upscale import UPSCALERS

    from pipeline.exposure import EXPOSURES
    from pipeline.hw_encode import ENCODERS

    d = RenderConfig("", "")
    if io:
        p.add_argument("input", metavar="IN", help="input video file or s3:// URI")
        p.add_argument("-o", "--output", required=True, metavar="OUT",
                       help="output video (.mp4, .mkv, .mov), or a folder for --codec png/tiff/exr; a path "
                            "or s3:// URI")
        p.add_argument("--style", default=None if style_required else DEFAULT_STYLE, required=style_required,
                       metavar="NAME_OR_PATH",
                       help="shipped style name (see 'filmstyle styles') or a .safetensors checkpoint"
                            + ("" if style_required else f" (default: {DEFAULT_STYLE})"))
    p.add_argument("--method", default=method_default, choices=methods,
                   help=f"stylization method (default: {method_default})")
    p.add_argument("--width", type=positive_int, default=d.width, metavar="W",
                   help=f"working width the network runs at (default: {d.width})")
    p.add_argument("--style-scale", type=float, default=d.style_scale, metavar="S",
                   help="stroke size: the network runs at width/S and its output is resized back, so "
                        "strokes grow with S; the frame size is kept (default: 1)")
    p.add_argument("--exposure", default=d.exposure, choices=list(EXPOSURES),
                   help="follow: each frame keeps its source's exposure (night stays dark, a fade from black "
                        "stays black); net: the level the net paints every frame at (default: follow)")
    p.add_argument("--out-width", type=positive_int, default=None, metavar="W",
                   help="delivery width (default: the source's display width)")
    p.add_argument("--upscaler", default=d.upscaler, choices=sorted(UPSCALERS), help="working -> delivery resize")
    p.add_argument("--chunk-frames", type=positive_int, default=d.chunk_frames, metavar="N",
                   help=f"most frames per chunk (default: {d.chunk_frames})")
    p.add_argument("--codec", default=d.codec, choices=list(CODEC_NAMES),
                   help="h264 or h265 (.mp4 .mkv .mov), prores (422 HQ, .mov), ffv1 (lossless, .mkv), or a folder "
                        f"of numbered png, tiff or exr images with the audio as WAV (default: {d.codec})")
    p.add_argument("--bit-depth", type=int, default=None, choices=[8, 10, 16, 32],
                   help="bits per sample where the codec allows: h264/h265 8|10, prores 10, ffv1 8|10|16, png/tiff "
                        "8|16, exr 16 (half) | 32 (float) (default: 8 for h264/h265, 10 for prores/ffv1, 16 for "
                        "images)")
    p.add_argument("--color", default=d.color, choices=list(COLOR_NAMES),
                   help="source: the film's own colour tags, nothing converted; bt709 or bt2020: converted "
                        f"to those primaries and tagged so (default: {d.color})")
    p.add_argument("--crf", type=int, default=d.crf,
                   help=f"h264/h265 quality, lower is better (default: {d.crf})")
    p.add_argument("--preset", default=d.preset, help=f"h264/h265 preset (default: {d.preset})")
    p.add_argument("--encoder", default=d.encoder, choices=list(ENCODERS),
                   help="h264/h265 encoder: nvenc (the GPU's encoder, --crf as its constant quality), software "
                        "(x264/x265), or auto: nvenc when the render runs on CUDA and NVENC works, else "
                        "software (default: auto)")
    add_device_option(p)
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="network arithmetic (default: fp32 on a CPU, where bf16 is faster only with AVX-512 "
                        "BF16; bf16 or fp16 on CUDA)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="frames per network call (default: 1 on a CPU, 8 on CUDA)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads: all cores (local engine), or per stylizer actor (prefect engine, "
                        "default 1 on CPU: one actor per core)")
    p.add_argument("--workdir", default=None, metavar="URI",
                   help="folder or s3:// URI for segments and carry states (default: in the cache, or "
                        "OUT's folder/.filmstyle/work for an s3:// OUT)")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $FILMSTYLE_CACHE or ~/.cache/filmstyle)")
    p.add_argument("--keep-work", action="store_true", help="keep segments after assembling")
    if io:
        p.add_argument("--report", default=None, metavar="PATH", help="report path (default: OUT.report.json)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        p.add_argument("-v", "--verbose", action="store_true", help="Prefect's and Ray's own logs too")
    add_method_options(p)
    add_shot_options(p)
    add_flow_options(p, d)
    add_engine_options(p, engine=io)


def add_commands(sub) -> None:
    from engine.config import DEFAULT_METHOD, RESTYLE_METHOD, RenderConfig
    from methods import METHODS

    p = sub.add_parser("render", help="stylize a video", epilog=EPILOG,
                       description="Render a stylized copy of IN to OUT, keeping frame rate, cuts, audio and "
                                   "subtitles. Writes OUT.report.json with timings per stage. IN, OUT, "
                                   "--flow-cache and --workdir may be s3:// URIs.")
    add_render_options(p, method_default=DEFAULT_METHOD, methods=sorted(METHODS))
    p.set_defaults(func=cmd_render)

    flow_methods = sorted(m for m, cls in METHODS.items() if cls.needs_flow)
    p = sub.add_parser("restyle", help="render a film again in a new style, reusing its cached flow",
                       epilog=EPILOG,
                       description="Render IN with another style, reading the optical flow from the flow cache "
                                   "filled by an earlier render or by 'filmstyle precompute-flow' (same input, "
                                   "--width and flow options): no flow is computed when the cache is complete.")
    add_render_options(p, method_default=RESTYLE_METHOD, methods=flow_methods, style_required=True)
    p.set_defaults(func=cmd_restyle)

    d = RenderConfig("", "")
    p = sub.add_parser("precompute-flow", help="fill the flow cache of a film ahead of rendering",
                       epilog=EPILOG,
                       description="Compute the optical flow of every consecutive pair inside each shot of IN at "
                                   "the working width (all chunks in parallel) into the flow cache, so renders "
                                   "and restyles of IN compute none.")
    p.add_argument("input", metavar="IN", help="input video file or s3:// URI")
    p.add_argument("--width", type=positive_int, default=d.width, metavar="W",
                   help=f"working width of the renders that will use it (default: {d.width})")
    p.add_argument("--chunk-frames", type=positive_int, default=d.chunk_frames, metavar="N",
                   help=f"most frames per chunk, the unit of parallel work (default: {d.chunk_frames})")
    p.add_argument("--workdir", default=None, metavar="URI", help="folder or s3:// URI for the job file")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $FILMSTYLE_CACHE or ~/.cache/filmstyle)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="Prefect's and Ray's own logs too")
    add_shot_options(p)
    add_flow_options(p, d)
    add_engine_options(p)
    p.set_defaults(func=cmd_precompute_flow)


def _log(args):
    return (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))


def _run(args, kind: str):
    """Check, then run ``kind`` with the chosen engine; returns the report (render) or result dict."""
    from engine import sequence
    from engine.local import LocalExecutor

    cfg = config_from_args(args) if kind != "precompute-flow" else config_from_args(args, output="")
    with_style = kind != "precompute-flow"
    if args.engine != "local":
        from flows.embedded import warm_up  # the orchestration layer, only for this engine

        warm_up(cfg, verbose=args.verbose)  # Prefect's local server starts in the background
    sequence.check(cfg, output=with_style, style=with_style)  # bad input fails here, in one line
    if args.engine == "local":
        ex = LocalExecutor(_log(args))
        if kind == "precompute-flow":
            return sequence.precompute_flow(cfg, ex, checked=True)
        return sequence.render(cfg, ex, restyle=kind == "restyle", checked=True)
    from engine.report import RenderReport
    from flows.embedded import run

    result = run(kind, cfg, ray_address=args.ray_address, verbose=args.verbose, quiet=args.quiet, checked=True)
    return result if kind == "precompute-flow" else RenderReport.from_dict(result)


def cmd_render(args) -> int:
    from engine.report import summary_text

    print(summary_text(_run(args, "render")))
    return 0


def cmd_restyle(args) -> int:
    from engine.report import summary_text

    print(summary_text(_run(args, "restyle")))
    return 0


def cmd_precompute_flow(args) -> int:
    result = _run(args, "precompute-flow")
    flow = result["flow"]
    print(f"flow of {result['input']}: {flow['pairs']} pairs in {result['chunks']} chunks, {flow['computed']} "
          f"computed, {flow['cache_hits']} already cached ({flow['cache']}) in {result['wall_seconds']:.1f}s")
    return 0
