"""End to end: the Prefect + Ray engine vs the in-process engine (--engine local) on the same
30-second clip (target: Prefect + Ray at most 15% slower).

A real clip from ../shared/data/videos looped/trimmed to 30 s, rendered at working width 320
with a student-size random-init net (same FLOPs as a trained student), each engine once, each as
the `filmstyle render` command in a fresh process (so Prefect's local server, Ray's start, the
actors' model loading and the exit are all counted). Both engines first render a 1-second clip
once, so neither pays for first-time setup (Prefect's database, cold file caches).

    python benchmarks/orchestration_overhead.py [--input CLIP] [--seconds 30] [--method per-frame] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import shared_video  # noqa: E402


def _clip(src: Path, seconds: float, out: Path) -> Path:
    from pipeline.media import ffmpeg_binary

    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", str(seconds),
                    "-c:v", "libx264", "-crf", "12", "-preset", "veryfast", "-c:a", "aac", str(out)], check=True)
    return out


def _student(path: Path) -> str:
    import torch

    from models.checkpoint import save_style_model
    from models.transformer import SIZES, TransformerNet

    torch.manual_seed(0)
    return str(save_style_model(path, TransformerNet(SIZES["student"]), {"name": "random-student"}))


def _render(engine: str, clip: Path, out: Path, style: str, args, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_ADDRESS"))}
    env.update(FILMSTYLE_CACHE=str(tmp / f"cache-{engine}"), PREFECT_HOME=str(tmp / "prefect-home"))
    cmd = [sys.executable, "-m", "cli", "render", str(clip), "-o", str(out), "--style", style,
           "--width", str(args.width), "--out-width", str(args.out_width), "--preset", args.preset,
           "--method", args.method, "--engine", engine, "--cache-dir", str(tmp / f"cache-{engine}"), "-q"]
    if engine == "prefect" and args.actor_threads:
        cmd += ["--threads", str(args.actor_threads)]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{engine} render failed: {done.stderr[-2000:]}")
    report = json.loads(Path(f"{out}.report.json").read_text())
    return {"engine": engine, "process_wall_s": round(wall, 2), "render_wall_s": report["wall_seconds"],
            "stages": report["stage_seconds"], "workers": report.get("workers", {}), "frames": report["frames"],
            "chunks": report["chunks"], "shots": report["shots"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="clip (default: ../shared/data/videos/pyscenedetect_testvideo.mp4)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=320, help="working width")
    ap.add_argument("--out-width", type=int, default=640, help="delivery width")
    ap.add_argument("--preset", default="veryfast", help="x264 preset of the segments")
    ap.add_argument("--method", default="per-frame")
    ap.add_argument("--style", default=None,
                    help="style NAME or PATH (default: a student-size random net, the cheapest render, where "
                         "the fixed start-up cost weighs most)")
    ap.add_argument("--actor-threads", type=int, default=None,
                    help="torch threads per stylizer actor (default: the engine's, 1 on CPU; 2 on 2 cores "
                         "gives one actor with the local engine's threading, isolating the orchestration cost)")
    ap.add_argument("--engines", default="local,prefect", help="which to run (comma-separated)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    engines = args.engines.split(",")

    src = Path(args.input) if args.input else shared_video("pyscenedetect_testvideo.mp4")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        style = args.style or _student(tmp / "student.safetensors")
        warm = _clip(src, 1.0, tmp / "warm.mp4")
        for engine in engines:
            _render(engine, warm, tmp / f"warm-{engine}.mp4", style, args, tmp)
        clip = _clip(src, args.seconds, tmp / "clip.mp4")
        rows = [_render(engine, clip, tmp / f"{engine}.mp4", style, args, tmp) for engine in engines]

    first = rows[0]
    print(f"clip: {src.name} looped to {args.seconds:g} s ({first['frames']} frames, {first['shots']} shots, "
          f"{first['chunks']} chunks), working width {args.width}, delivery width {args.out_width}, "
          f"{args.style or 'student-size random net'}, {args.method}, x264 {args.preset}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| engine | command wall s | render wall s (report) | fps | stages (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
        label = "local (in-process)" if r["engine"] == "local" else \
            f"prefect + ray ({r['workers'].get('count')} actor(s) x {r['workers'].get('threads')} thread(s))"
        print(f"| {label} | {r['process_wall_s']:.1f} | {r['render_wall_s']:.1f} | "
              f"{r['frames'] / r['process_wall_s']:.1f} | {stages} |")
    ratio = None
    if len(rows) == 2:
        ratio = rows[1]["process_wall_s"] / rows[0]["process_wall_s"]
        print(f"prefect + ray / local (command wall): {ratio:.3f} ({ratio - 1:+.1%}; target at most +15%)")
    for r in rows:
        if r["engine"] == "prefect":
            fixed = r["process_wall_s"] - r["render_wall_s"]
            print(f"prefect + ray outside the flow body (imports, Prefect server, Ray start, exit): {fixed:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
