"""Throughput of the render pipeline against a naive loop, measured in the same run.

The naive baseline decodes with one ffmpeg pipe, runs the same net on each
frame, resizes to the delivery size and encodes with one ffmpeg pipe: the
least any renderer must do. The pipeline adds probing, hashing, shot
detection, chunking, carry states, segment commits and assembly with audio.

    .venv/bin/python benchmarks/throughput.py [--frames 240] [--width 640] [--style NAME]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_description, shared_video, style_for_benchmark, trimmed_copy  # noqa: E402


def naive(src: Path, out: Path, style: str, width: int, precision: str, device: str) -> dict:
    from methods import NetRunner, RunSettings, resolve_style
    from pipeline import media
    from pipeline.upscale import make_upscaler

    info = media.probe(src)
    working = media.working_size(info, width)
    delivery = media.working_size(info, info.display_size[0])
    net = NetRunner(resolve_style(style), RunSettings(device=device, precision=precision))
    resize = make_upscaler("lanczos")
    net(next(iter(media.decode_frames(info, 0, 1, working)))[None])  # warm-up (oneDNN primitives)
    t = {"decode": 0.0, "stylize": 0.0, "upscale": 0.0, "encode": 0.0}
    t0 = time.perf_counter()
    frames = media.decode_frames(info, 0, info.frame_count, working)
    with media.SegmentWriter(out, info.fps, delivery) as writer:
        while True:
            a = time.perf_counter()
            frame = next(frames, None)
            b = time.perf_counter()
            t["decode"] += b - a
            if frame is None:
                break
            y = net(frame[None])
            c = time.perf_counter()
            y = resize(y, delivery)
            d = time.perf_counter()
            writer.write(y)
            e = time.perf_counter()
            t["stylize"] += c - b
            t["upscale"] += d - c
            t["encode"] += e - d
        a = time.perf_counter()
    t["encode"] += time.perf_counter() - a  # encoder flush
    t["wall"] = time.perf_counter() - t0
    return t


def bare_net(src: Path, style: str, width: int, precision: str, device: str) -> float:
    """Seconds of the net alone on the clip's frames, decoded beforehand: the ceiling of a render."""
    import numpy as np

    from methods import NetRunner, RunSettings, resolve_style
    from pipeline import media

    info = media.probe(src)
    frames = np.stack(list(media.decode_frames(info, 0, info.frame_count, media.working_size(info, width))))
    net = NetRunner(resolve_style(style), RunSettings(device=device, precision=precision))
    net(frames[:2])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(frames), 16):  # the net's best: independent frames side by side (NetRunner)
        net(frames[i:i + 16])
    return time.perf_counter() - t


def pipeline(src: Path, out: Path, style: str, width: int, precision: str, device: str, workdir: Path,
             method: str = "per-frame") -> dict:
    from engine.config import RenderConfig
    from engine.local import render

    cfg = RenderConfig(input=str(src), output=str(out), style=style, width=width, precision=precision,
                       device=device, batch=1, cache_dir=str(workdir / "cache"), method=method)
    report = render(cfg, progress=False, log=lambda m: None)
    return dict(report.stage_seconds, wall=report.wall_seconds, shots=report.shots, chunks=report.chunks)


def flow_share(clip: Path, style: str, args, device: str, tmp: Path) -> dict:
    """The flow stage's share of a flow method's wall time: computed, then on a restyle (another
    style over the same film: the flow comes from the cache)."""
    from methods import method_class
    from models.checkpoint import shipped_styles, shipped_variant

    folder = method_class(args.flow_method).checkpoint_folder
    have = [s for s in shipped_styles() if folder is None or shipped_variant(s, folder)] or [style]
    first = style if Path(style).stem in have else have[0]
    other = next((s for s in have if s != first), first)
    runs = {}
    for name, s in (("computed", first), ("restyle", other)):
        r = pipeline(clip, tmp / f"{args.flow_method}_{name}.mp4", s, args.width, args.precision, device, tmp,
                     method=args.flow_method)
        runs[name] = {"flow_s": r.get("flow", 0.0), "wall_s": r["wall"], "share": r.get("flow", 0.0) / r["wall"]}
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="720p clip (default: ../shared/data/videos/imageio_cockatoo_yuv420.mp4)")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--style", default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="auto (default): what a render picks on this device (pipeline/device.py)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--flow-method", default="flow-recurrent",
                    help="also time the flow stage of this method, computed and on a restyle ('' to skip)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()

    from methods import configure_threads
    from pipeline.device import resolve_device
    from pipeline.memtune import tune_malloc

    device = resolve_device(args.device)
    if args.precision == "auto":
        from pipeline.device import defaults_for

        args.precision = defaults_for(device).precision
    tune_malloc()
    configure_threads(None)
    src = Path(args.input) if args.input else shared_video("imageio_cockatoo_yuv420.mp4")
    style = style_for_benchmark(args.style)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = trimmed_copy(src, args.frames, tmp / "clip.mp4")
        net_s = bare_net(clip, style, args.width, args.precision, device)
        base = naive(clip, tmp / "naive.mp4", style, args.width, args.precision, device)
        pipe = pipeline(clip, tmp / "pipe.mp4", style, args.width, args.precision, device, tmp)
        flow = flow_share(clip, style, args, device, tmp) if args.flow_method else {}
    n = args.frames
    rows = []
    for stage in ("probe", "shots", "decode", "stylize", "upscale", "encode", "assemble", "wall"):
        b, p = base.get(stage), pipe.get(stage)
        rows.append((stage, b, p))
    print(f"clip: {src.name}, first {n} frames, working width {args.width}, style {Path(style).stem}, "
          f"{args.precision}")
    print("| stage | naive s | naive fps | pipeline s | pipeline fps |")
    print("|---|---|---|---|---|")
    for stage, b, p in rows:
        fmt = lambda s: ("-", "-") if s is None else (f"{s:.2f}", f"{n / s:.1f}" if s > 0 else "-")  # noqa: E731
        print(f"| {stage} | {' | '.join(fmt(b))} | {' | '.join(fmt(p))} |")
    net_share = pipe["stylize"] / pipe["wall"]
    overhead = pipe["wall"] / base["wall"] - 1
    print(f"pipeline / naive wall time: {pipe['wall'] / base['wall']:.3f} (overhead {overhead:+.1%}); "
          f"net share of pipeline wall time: {net_share:.1%}; shots {pipe['shots']}, chunks {pipe['chunks']}")
    print(f"bare net: {net_s:.2f} s ({n / net_s:.2f} fps); end-to-end render / bare net frames per second: "
          f"{net_s / pipe['wall']:.3f} (target >= 0.95); CPU: {cpu_description()}")
    for name, r in flow.items():
        print(f"{args.flow_method}, flow {name}: flow stage {r['flow_s']:.2f} s of {r['wall_s']:.2f} s wall "
              f"({r['share']:.1%}; target <= 10% computed, 0% on a restyle)")
    if args.json:
        Path(args.json).write_text(json.dumps({"frames": n, "naive": base, "pipeline": pipe, "bare_net_s": net_s,
                                               "overhead": overhead, "net_share": net_share, "flow": flow},
                                              indent=2))


if __name__ == "__main__":
    main()
