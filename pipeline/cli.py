"""The ``filmstyle`` command: parse arguments, call the pipeline, print results.

Every user-facing failure is a FilmstyleError: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import FilmstyleError

EPILOG = "Errors are printed as one line ('filmstyle: error: ...') with exit code 2."


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_shot_options(p: argparse.ArgumentParser) -> None:
    from .shots import DETECTORS

    g = p.add_argument_group("shot detection")
    g.add_argument("--detector", default="adaptive", choices=sorted(DETECTORS),
                   help="PySceneDetect detector (default: adaptive)")
    g.add_argument("--threshold", type=float, default=None,
                   help="detector threshold (default: the detector's own default)")
    g.add_argument("--min-shot-frames", type=_positive_int, default=15, metavar="N",
                   help="shortest allowed shot in frames (default: 15)")


def _add_flow_options(p: argparse.ArgumentParser, d, *, blend: bool = True) -> None:
    from .flow import FLOW_BACKENDS

    g = p.add_argument_group("temporal consistency (flow-blend, flow-recurrent)" if blend else "optical flow")
    g.add_argument("--flow-backend", default=d.flow_backend, choices=sorted(FLOW_BACKENDS),
                   help=f"optical flow backend (default: {d.flow_backend})")
    g.add_argument("--flow-preset", default=d.flow_preset, choices=["ultrafast", "fast", "medium"],
                   help=f"DIS preset (default: {d.flow_preset})")
    g.add_argument("--flow-cache", default=None, metavar="URI",
                   help="flow cache folder or s3:// URI, shared by restyles of the same film (default: "
                        "CACHE/flow, or OUT's folder/.filmstyle/flow-cache for an s3:// OUT)")
    g.add_argument("--soft-mask", action="store_true", help="soft occlusion mask instead of a hard one")
    if blend:
        g.add_argument("--strength", type=float, default=d.strength,
                       help=f"flow-blend: weight of the warped previous output, 0-1 (default: {d.strength})")
        g.add_argument("--refine", action="store_true", help="flow-blend: run the net again on the blended frame")
        g.add_argument("--blend-mask", default=d.blend_mask, choices=["photometric", "consistency"],
                       help="flow-blend: where to trust the warp: where the warped previous source frame matches "
                            "the current one (photometric), or the flow's occlusion mask (default: "
                            f"{d.blend_mask})")
        g.add_argument("--no-keep-detail", dest="keep_detail", action="store_false",
                       help="flow-blend: leave the blend's fine detail flattened (default: scaled back to the "
                            "fresh frame's)")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine and storage")
    g.add_argument("--engine", default="prefect", choices=["prefect", "local"],
                   help="prefect: a Prefect flow on Ray (local Ray and Prefect unless told otherwise); "
                        "local: everything in this process (default: prefect)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray sized to this machine)")
    g.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                   help="S3-compatible endpoint (default: $FILMSTYLE_S3_ENDPOINT_URL or $AWS_ENDPOINT_URL)")
    g.add_argument("--s3-region", default=None, help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    g.add_argument("--s3-profile", default=None, help="AWS profile for S3 (default: $AWS_PROFILE)")
    g.add_argument("--s3-checksum", default=None, choices=["when_required", "when_supported"],
                   help="request/response checksums; many S3-compatible stores need when_required "
                        "(default: $FILMSTYLE_S3_CHECKSUM or when_required)")


def _add_render_options(p: argparse.ArgumentParser, *, method_default: str, methods: list[str],
                        style_required: bool = False) -> None:
    from .render import DEFAULT_STYLE, RenderConfig
    from .upscale import UPSCALERS

    d = RenderConfig("", "")
    p.add_argument("input", metavar="IN", help="input video file or s3:// URI")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output video (.mp4, .mkv, .mov), a path or s3:// URI")
    p.add_argument("--style", default=None if style_required else DEFAULT_STYLE, required=style_required,
                   metavar="NAME_OR_PATH",
                   help="shipped style name (see 'filmstyle styles') or a .safetensors checkpoint"
                        + ("" if style_required else f" (default: {DEFAULT_STYLE})"))
    p.add_argument("--method", default=method_default, choices=methods,
                   help=f"stylization method (default: {method_default})")
    p.add_argument("--width", type=_positive_int, default=d.width, metavar="W",
                   help=f"working width the network runs at (default: {d.width})")
    p.add_argument("--style-scale", type=float, default=d.style_scale, metavar="S",
                   help="stroke size: the network runs at width/S and its output is resized back, so "
                        "strokes grow with S; the frame size is kept (default: 1)")
    p.add_argument("--out-width", type=_positive_int, default=None, metavar="W",
                   help="delivery width (default: the source's display width)")
    p.add_argument("--upscaler", default=d.upscaler, choices=sorted(UPSCALERS), help="working -> delivery resize")
    p.add_argument("--chunk-frames", type=_positive_int, default=d.chunk_frames, metavar="N",
                   help=f"most frames per chunk (default: {d.chunk_frames})")
    p.add_argument("--crf", type=int, default=d.crf, help=f"x264 quality, lower is better (default: {d.crf})")
    p.add_argument("--preset", default=d.preset, help=f"x264 preset (default: {d.preset})")
    p.add_argument("--precision", default=d.precision, choices=["fp32", "bf16"],
                   help="network arithmetic; bf16 is faster on CPUs with AVX-512 BF16 (default: fp32)")
    p.add_argument("--batch", type=_positive_int, default=d.batch, help="frames per network call")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads: all cores (local engine), or per stylizer actor (prefect engine, "
                        "default 1 on CPU: one actor per core)")
    p.add_argument("--workdir", default=None, metavar="URI",
                   help="folder or s3:// URI for segments and carry states (default: in the cache, or "
                        "OUT's folder/.filmstyle/work for an s3:// OUT)")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $FILMSTYLE_CACHE or ~/.cache/filmstyle)")
    p.add_argument("--keep-work", action="store_true", help="keep segments after assembling")
    p.add_argument("--report", default=None, metavar="PATH", help="report path (default: OUT.report.json)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="Prefect's and Ray's own logs too")
    _add_shot_options(p)
    _add_flow_options(p, d)
    _add_engine_options(p)


def build_parser() -> argparse.ArgumentParser:
    from .render import RenderConfig
    from .stylize import METHODS

    parser = argparse.ArgumentParser(
        prog="filmstyle", epilog=EPILOG,
        description="Stylize whole films with neural style transfer: shots, chunks, temporal state, "
                    "reassembly with the original audio.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    d = RenderConfig("", "")

    p = sub.add_parser("render", help="stylize a video", epilog=EPILOG,
                       description="Render a stylized copy of IN to OUT, keeping frame rate, cuts, audio and "
                                   "subtitles. Writes OUT.report.json with timings per stage. IN, OUT, "
                                   "--flow-cache and --workdir may be s3:// URIs.")
    _add_render_options(p, method_default=d.method, methods=sorted(METHODS))
    p.set_defaults(func=cmd_render)

    flow_methods = sorted(m for m, cls in METHODS.items() if getattr(cls, "needs_flow", False))
    p = sub.add_parser("restyle", help="render a film again in a new style, reusing its cached flow",
                       epilog=EPILOG,
                       description="Render IN with another style, reading the optical flow from the flow cache "
                                   "filled by an earlier render or by 'filmstyle precompute-flow' (same input, "
                                   "--width and flow options): no flow is computed when the cache is complete.")
    _add_render_options(p, method_default="flow-blend" if "flow-blend" in flow_methods else flow_methods[0],
                        methods=flow_methods, style_required=True)
    p.set_defaults(func=cmd_restyle)

    p = sub.add_parser("precompute-flow", help="fill the flow cache of a film ahead of rendering",
                       epilog=EPILOG,
                       description="Compute the optical flow of every consecutive pair inside each shot of IN at "
                                   "the working width (all chunks in parallel) into the flow cache, so renders "
                                   "and restyles of IN compute none.")
    p.add_argument("input", metavar="IN", help="input video file or s3:// URI")
    p.add_argument("--width", type=_positive_int, default=d.width, metavar="W",
                   help=f"working width of the renders that will use it (default: {d.width})")
    p.add_argument("--chunk-frames", type=_positive_int, default=d.chunk_frames, metavar="N",
                   help=f"most frames per chunk, the unit of parallel work (default: {d.chunk_frames})")
    p.add_argument("--workdir", default=None, metavar="URI", help="folder or s3:// URI for the job file")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $FILMSTYLE_CACHE or ~/.cache/filmstyle)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="Prefect's and Ray's own logs too")
    _add_shot_options(p)
    _add_flow_options(p, d, blend=False)
    _add_engine_options(p)
    p.set_defaults(func=cmd_precompute_flow)

    p = sub.add_parser("shots", help="print the shot list of a video", epilog=EPILOG,
                       description="Detect shots (hard cuts) with PySceneDetect and print them as frame ranges.")
    p.add_argument("input", metavar="IN")
    p.add_argument("--json", metavar="PATH", help="also write the shot list as JSON")
    p.add_argument("--csv", metavar="PATH", help="also write the shot list as CSV")
    p.add_argument("--cache-dir", default=None)
    _add_shot_options(p)
    p.set_defaults(func=cmd_shots)

    p = sub.add_parser("probe", help="print what filmstyle reads from a video", epilog=EPILOG,
                       description="Print the probed stream information (exact fps, frames, size, SAR, "
                                   "rotation, colour, audio, subtitles) as JSON.")
    p.add_argument("input", metavar="IN")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("eval", help="measure temporal stability and style of a render", epilog=EPILOG,
                       description="Warping error (Lai et al.) of OUT against its source with a flow the render did "
                                   "not use, seam error at chunk starts, style/content loss; writes JSON and a "
                                   "per-frame plot. Shots, chunks, source and style come from OUT.report.json.")
    p.add_argument("output", metavar="OUT", help="a rendered video")
    p.add_argument("--source", default=None, help="the original video (default: from the report)")
    p.add_argument("--report", default=None, help="render report (default: OUT.report.json)")
    p.add_argument("--style", default=None, help="style name, checkpoint or image for the style loss "
                                                 "(default: from the report; 'none' to skip)")
    p.add_argument("--width", type=_positive_int, default=640, help="evaluation width (default: 640)")
    p.add_argument("--flow-backend", default="tvl1",
                   help="flow for the metric: a method the render did not use (default: tvl1, about 2 s a "
                        "frame pair at 640 px, cached; farneback is fast but misses large motion)")
    p.add_argument("--flow-cache", default=None, metavar="URI",
                   help="where the metric's flow is kept (default: the render's flow cache folder; 'none': "
                        "not kept)")
    p.add_argument("--json", default=None, metavar="PATH", help="default: OUT.eval.json")
    p.add_argument("--plot", default=None, metavar="PATH", help="default: OUT.eval.png")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("styles", help="list the shipped styles", epilog=EPILOG,
                       description="List the shipped styles with their model cards.")
    p.add_argument("--json", action="store_true", help="print the full model cards as JSON")
    p.set_defaults(func=cmd_styles)

    p = sub.add_parser("train", help="train a style model", epilog=EPILOG,
                       description="Train a feed-forward style model on a folder of content photos (image phase), "
                                   "or with --video fine-tune it into a flow-recurrent model on frame pairs "
                                   "(synthetic camera motion over the photos + real clips with DIS flow). "
                                   "Resumes automatically from OUT.state.safetensors if present.")
    p.add_argument("--style", metavar="IMAGE", help="style image (required for the image phase)")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="folder of content images, repeat for several (required for the image phase)")
    p.add_argument("--out", required=True, metavar="CKPT", help="output checkpoint (.safetensors)")
    v = p.add_argument_group("video phase (flow-recurrent)")
    v.add_argument("--video", action="store_true", help="train the flow-recurrent (7-channel) model")
    v.add_argument("--init", metavar="CKPT", help="image-phase checkpoint to start from (required with --video)")
    v.add_argument("--videos", action="append", metavar="DIR",
                   help="folder of clips for real frame pairs (default: ../shared/data/videos when present)")
    v.add_argument("--temporal-weight", type=float, default=None, help="output-level temporal loss weight")
    p.add_argument("--size", default="full", help="network size: full or student")
    p.add_argument("--norm", default=None, choices=["instance", "frn", "none"],
                   help="normalization layers of the net (default: instance)")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: 1600)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="default: 8")
    p.add_argument("--image-size", type=_positive_int, default=None, help="training crop size (default: 256)")
    p.add_argument("--style-size", type=_positive_int, default=None,
                   help="long side of the style image: strokes come out at its pixel scale (default: 512)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 1e-3, video phase 2e-4)")
    p.add_argument("--lr-warmup", type=int, default=None, metavar="STEPS",
                   help="ramp the learning rate up over the first STEPS steps (image phase; default 200)")
    p.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                   help="clip the global gradient norm; 0: off (default: 100 image phase, off video phase)")
    p.add_argument("--content-weight", type=float, default=None)
    p.add_argument("--style-weight", type=float, default=None)
    p.add_argument("--tv-weight", type=float, default=None)
    p.add_argument("--tone-weight", type=float, default=None,
                   help="keep the photo's light and dark (1 - correlation of blurred luminance; default 1)")
    p.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda, cuda:1 ...")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=float, default=120.0, metavar="SECONDS")
    p.add_argument("--checkpoint-every-steps", type=int, default=0, metavar="N")
    p.add_argument("--vgg", default=None, metavar="PATH", help="torchvision VGG16/19 state dict to use as loss network")
    p.add_argument("--restart", action="store_true", help="ignore an existing training state")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)
    return parser


def _s3_options(args) -> dict:
    return {"s3_endpoint_url": args.s3_endpoint_url, "s3_region": args.s3_region, "s3_profile": args.s3_profile,
            "s3_checksum": args.s3_checksum}


def _render_config(args):
    from .render import RenderConfig

    return RenderConfig(
        input=args.input, output=args.output, style=args.style, method=args.method, width=args.width,
        style_scale=args.style_scale, out_width=args.out_width, chunk_frames=args.chunk_frames,
        upscaler=args.upscaler, crf=args.crf,
        preset=args.preset, precision=args.precision, batch=args.batch, detector=args.detector,
        threshold=args.threshold, min_shot_frames=args.min_shot_frames, workdir=args.workdir,
        cache_dir=args.cache_dir, keep_work=args.keep_work, threads=args.threads, report=args.report,
        flow_backend=args.flow_backend, flow_preset=args.flow_preset, flow_cache=args.flow_cache,
        soft_mask=args.soft_mask, strength=args.strength, refine=args.refine, blend_mask=args.blend_mask,
        keep_detail=args.keep_detail, **_s3_options(args))


def _log(args):
    return (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))


def _print_report(report) -> None:
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in report.stage_seconds.items())
    resumed = f", {report.chunks_resumed} resumed" if report.chunks_resumed else ""
    print(f"wrote {report.output} ({report.frames} frames, {report.shots} shots, {report.chunks} chunks{resumed}) "
          f"in {report.wall_seconds:.1f}s: {stages}")
    if report.flow:
        print(f"flow: {report.flow['pairs']} pairs, {report.flow['computed']} computed, "
              f"{report.flow['cache_hits']} from the cache ({report.flow['cache']})")
    if report.workers:
        w = report.workers
        print(f"workers: {w.get('count')} {w.get('device')} actor(s) x {w.get('threads')} thread(s) "
              f"on {len(w.get('nodes', []))} node(s)")


def _run_render(args, kind: str) -> int:
    from .render import RenderReport, preflight, render

    cfg = _render_config(args)
    if args.engine == "local":
        report = render(cfg, progress=not args.quiet, log=_log(args))
    else:
        from flows.embedded import run, warm_up  # the orchestration layer, only for this engine

        warm_up(cfg, verbose=args.verbose)  # Prefect's local server starts in the background
        preflight(cfg)  # bad input fails here, in one line, before any work
        report = RenderReport.from_dict(run(kind, cfg, ray_address=args.ray_address, verbose=args.verbose,
                                            quiet=args.quiet))
    _print_report(report)
    return 0


def cmd_render(args) -> int:
    return _run_render(args, "render")


def cmd_restyle(args) -> int:
    return _run_render(args, "restyle")


def cmd_precompute_flow(args) -> int:
    from .render import RenderConfig, precompute_flow, preflight

    cfg = RenderConfig(input=args.input, output="", width=args.width, chunk_frames=args.chunk_frames,
                       detector=args.detector, threshold=args.threshold, min_shot_frames=args.min_shot_frames,
                       workdir=args.workdir, cache_dir=args.cache_dir, flow_backend=args.flow_backend,
                       flow_preset=args.flow_preset, flow_cache=args.flow_cache, soft_mask=args.soft_mask,
                       **_s3_options(args))
    if args.engine == "local":
        result = precompute_flow(cfg, progress=not args.quiet, log=_log(args))
    else:
        from flows.embedded import run, warm_up

        warm_up(cfg, verbose=args.verbose)
        preflight(cfg, output=False, style=False)
        result = run("precompute-flow", cfg, ray_address=args.ray_address, verbose=args.verbose, quiet=args.quiet)
    flow = result["flow"]
    print(f"flow of {result['input']}: {flow['pairs']} pairs in {result['chunks']} chunks, {flow['computed']} "
          f"computed, {flow['cache_hits']} already cached ({flow['cache']}) in {result['wall_seconds']:.1f}s")
    return 0


def cmd_shots(args) -> int:
    from .render import find_shots, prepare_source
    from .shots import ShotParams, write_shots

    source = prepare_source(args.input, args.cache_dir)
    shots = find_shots(source, ShotParams(args.detector, args.threshold, args.min_shot_frames), args.cache_dir)
    fps = source.info.fps
    print(f"{'shot':>4}  {'start':>7}  {'end':>7}  {'frames':>6}  {'start_s':>9}  {'end_s':>9}")
    for s in shots:
        print(f"{s.index:>4}  {s.start:>7}  {s.end:>7}  {s.length:>6}  {float(s.start / fps):>9.3f}  "
              f"{float(s.end / fps):>9.3f}")
    for path in (args.json, args.csv):
        if path:
            write_shots(shots, path)
    return 0


def cmd_probe(args) -> int:
    from .media import probe

    info = probe(args.input)
    d = info.to_dict()
    d["display_size"] = list(info.display_size)
    print(json.dumps(d, indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate, plot
    from .render import cache_root

    report_path = Path(args.report or f"{args.output}.report.json")
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    source = args.source or report.get("input")
    if not source:
        raise FilmstyleError(f"{args.output}: no --source given and no report at {report_path}")
    style = args.style or report.get("style")
    shots, chunks = report.get("shot_starts") or [0], report.get("chunk_starts") or []
    flow_cache = args.flow_cache or str(cache_root() / "flow")
    result = evaluate(args.output, source, width=args.width, flow_backend=args.flow_backend, shot_starts=shots,
                      chunk_starts=chunks, style=None if style in (None, "none") else style,
                      flow_cache=None if flow_cache == "none" else flow_cache)
    json_path, plot_path = args.json or f"{args.output}.eval.json", args.plot or f"{args.output}.eval.png"
    Path(json_path).write_text(result.to_json())
    plot(result, plot_path, shot_starts=[s for s in shots if s], chunk_starts=chunks)
    line = f"warping error {result.warping_error:.5f} ({result.flow_backend} flow, {result.frames} frames)"
    if result.seam:
        line += f"; seams {result.seam['boundary']:.5f} vs inside {result.seam['interior']:.5f}"
    if result.style_loss is not None:
        line += (f"; style loss {result.style_loss:.3f} (source {result.style_loss_source:.3f}), "
                 f"content loss {result.content_loss:.3f}")
    print(line)
    print(f"wrote {json_path} and {plot_path}")
    return 0


def cmd_styles(args) -> int:
    from models.checkpoint import read_card, shipped_styles, shipped_variants

    styles = shipped_styles()
    if args.json:
        print(json.dumps({name: {**read_card(p), "methods": {m: read_card(v) for m, v in shipped_variants(name).items()}}
                          for name, p in styles.items()}, indent=2))
        return 0
    if not styles:
        print("no styles shipped yet; train one with 'filmstyle train'")
    for name, path in styles.items():
        card = read_card(path)
        arch = card.get("architecture", {})
        print(f"{name:16s} {card.get('style_image', '?'):24s} steps={card.get('steps', '?'):<6} "
              f"net={arch.get('base_channels', '?')}ch/{arch.get('residual_blocks', '?')}res "
              f"loss-net: {card.get('loss_network', '?')}"
              + "".join(f"  +{m}" for m in shipped_variants(name)))
    return 0


def cmd_train(args) -> int:
    from models.train import TrainConfig, train

    if args.video:
        return _train_video(args)
    if not args.style or not args.data:
        raise FilmstyleError("train needs --style IMAGE and --data DIR (or --video --init CKPT)")
    cfg = TrainConfig(style=args.style, data=args.data, out=args.out, size=args.size,
                      bf16={"auto": None, "on": True, "off": False}[args.bf16], seed=args.seed,
                      checkpoint_every_s=args.checkpoint_every, checkpoint_every_steps=args.checkpoint_every_steps,
                      vgg=args.vgg, device=args.device)
    for name in ("norm", "steps", "batch_size", "image_size", "style_size", "lr", "content_weight", "style_weight",
                 "tv_weight", "tone_weight", "grad_clip", "lr_warmup"):
        if getattr(args, name) is not None:  # else the recipe's default (models/train.py)
            setattr(cfg, name, getattr(args, name))
    path = train(cfg, restart=args.restart, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}")
    return 0


def _train_video(args) -> int:
    from models.train import VideoTrainConfig, train_video

    if not args.init:
        raise FilmstyleError("train --video needs --init CKPT (an image-phase checkpoint)")
    cfg = VideoTrainConfig(init=args.init, out=args.out, data=args.data, videos=args.videos, style=args.style,
                           bf16={"auto": None, "on": True, "off": False}[args.bf16], seed=args.seed,
                           checkpoint_every_s=args.checkpoint_every,
                           checkpoint_every_steps=args.checkpoint_every_steps, vgg=args.vgg, device=args.device)
    for name in ("steps", "batch_size", "image_size", "style_size", "lr", "content_weight", "style_weight",
                 "tv_weight", "tone_weight", "temporal_weight", "grad_clip"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    path = train_video(cfg, restart=args.restart, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .memtune import tune_malloc

    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FilmstyleError as e:
        print(f"filmstyle: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("filmstyle: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
