"""Shared helpers for the benchmarks: real clips from ../shared/data, a style model, trimming."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = ROOT.parent / "shared" / "data" / "videos"


def shared_video(name: str) -> Path:
    path = SHARED_VIDEOS / name
    if not path.is_file():
        sys.exit(f"benchmark skipped: {path} is absent (the benchmarks read real clips from ../shared/data)")
    return path


def trimmed_copy(src: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` frames of ``src`` with its audio, re-encoded near-losslessly (frame-exact).

    One x264 thread: its bitstream depends on the thread count, and so did the copy's content hash,
    which keys the judge's flow cache (a run pinned to one core and a run on two computed the TV-L1
    flow of the same frames twice)."""
    from pipeline.media import ffmpeg_binary

    subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(src), "-frames:v", str(frames),
                    "-c:v", "libx264", "-threads", "1", "-crf", "12", "-preset", "veryfast", "-c:a", "aac", "-shortest", str(out)],
                   check=True)
    return out


def style_for_benchmark(name: str | None) -> str:
    """A shipped style, or a seeded random full-size net (same FLOPs) when none is shipped yet."""
    import torch

    from models.checkpoint import save_style_model, shipped_styles
    from models.transformer import SIZES, TransformerNet

    styles = shipped_styles()
    if name:
        return name
    if styles:
        return next(iter(styles))
    torch.manual_seed(0)
    path = ROOT / "out" / "bench_random_full.safetensors"
    return str(save_style_model(path, TransformerNet(SIZES["full"]), {"name": "random-full"}))


def cpu_description() -> str:
    """Which CPU a benchmark ran on: model, cores, and whether bf16 convolutions are fast here."""
    import os

    import torch

    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except Exception:
        bf16 = False
    return f"{model}, {os.cpu_count()} cores, {'AVX-512 BF16' if bf16 else 'no fast bf16'}"


# What one device call carries (the device tool's README): this checkout's tracked and untracked,
# unignored files, plus the ignored paths it is asked to carry, together at most 64 MiB.
DEVICE_LIMIT = 64 * 2**20


def working_tree_bytes() -> int:
    """Bytes of what a device call copies from this checkout: tracked and untracked-unignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def report_device_payload(pack: Path) -> int:
    """Print what a device call carrying ``pack`` would move, and what to do when it is too much."""
    size = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file())
    tree = working_tree_bytes()
    total = size + tree
    print(f"{pack}: {size / 2**20:.1f} MiB; with the working tree ({tree / 2**20:.1f} MiB): {total / 2**20:.1f} MiB "
          f"of the {DEVICE_LIMIT / 2**20:.0f} MiB a device call carries")
    if total > DEVICE_LIMIT:
        print("too much for one device call. The docs pictures (8 MiB) need not travel, nor the shipped weights "
              "(30 MiB) where the run does not read them (gpu_check and train_styles --init-shipped do): for that "
              "call untrack them (git rm -r -q --cached docs; add docs/ to .git/info/exclude) and restore them "
              "afterwards (git reset -q; remove the line)")
    return total


def log(msg: str, path: Path | None = None) -> None:
    """A timestamped line on stdout, and appended to ``path`` (the GPU scripts' logs come back as files)."""
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
