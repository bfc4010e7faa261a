"""How close the nets come to this CPU's arithmetic limit, and what bf16 changes in the picture.

In one run: the best rate of a 3x3 convolution in the residual blocks' shape (128 channels on
160x90 maps, channels-last) in fp32 and bf16; then the full and student nets at 640x360 as a
per-frame render runs them (``NetRunner`` on 8 uint8 frames: side by side, one core each), in each
precision, as FLOPs per frame times frames per second and as a share of the best convolution rate
(and, beside it, one frame at a time on every core: how flow-recurrent runs them); then, on real frames, how far the bf16 output is
from the fp32 output in 8-bit levels, beside what x264 at the delivery's CRF changes in the fp32
output. Threads: every core, and one.

    .venv/bin/python benchmarks/net_speed.py [--style NAME] [--frames 8] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_description, shared_video, style_for_benchmark  # noqa: E402

SIZE = (360, 640)


def conv_flops(net, size=SIZE) -> float:
    """Multiply-adds x 2 of every convolution of ``net`` on one frame of ``size`` (H, W)."""
    import torch

    total = [0]

    def count(m, _inp, out):
        kh, kw = m.kernel_size
        total[0] += 2 * m.in_channels // m.groups * m.out_channels * kh * kw * out.shape[-2] * out.shape[-1]

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        net.stylize(torch.rand(1, 3, *size))
    for h in hooks:
        h.remove()
    return float(total[0])


def frames_per_second(fn, frames: int, seconds: float = 6.0) -> float:
    fn()
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * frames / (time.perf_counter() - t0)


def x264_levels(frames, crf: int) -> float:
    """Mean absolute change in 8-bit levels that an x264 round trip at ``crf`` makes to ``frames``."""
    import numpy as np

    from pipeline.media import ffmpeg_binary

    n, h, w, _ = frames.shape
    enc = subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                          "-i", "-", "-c:v", "libx264", "-crf", str(crf), "-preset", "medium",
                          "-pix_fmt", "yuv420p", "-f", "h264", "-"], input=frames.tobytes(), capture_output=True,
                         check=True).stdout
    dec = subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "h264", "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"], input=enc, capture_output=True, check=True).stdout
    back = np.frombuffer(dec, np.uint8).reshape(n, h, w, 3)
    return float(np.abs(back.astype(np.int16) - frames.astype(np.int16)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", default=None, help="full net (default: the first shipped style)")
    ap.add_argument("--frames", type=int, default=8, help="real frames for the bf16 / fp32 comparison")
    ap.add_argument("--seconds", type=float, default=6.0, help="time per speed measurement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from methods import NetRunner, RunSettings, configure_threads, resolve_style
    from models.checkpoint import load_style_model, save_style_model
    from models.transformer import SIZES, TransformerNet
    from pipeline import media
    from pipeline.delivery import Delivery
    from pipeline.device import conv_seconds, cpu_precision

    cores = configure_threads(None)
    bf16_ok = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    precisions = ["fp32", "bf16"] if bf16_ok else ["fp32"]
    full = resolve_style(style_for_benchmark(args.style))
    torch.manual_seed(0)
    student = Path("out") / "bench_student.safetensors"
    save_style_model(student, TransformerNet(SIZES["student"]), {"name": "random-student"})
    nets = {"full": full, "student": str(student)}
    flops = {k: conv_flops(load_style_model(p)[0]) for k, p in nets.items()}
    x = torch.rand(1, 3, *SIZE).contiguous(memory_format=torch.channels_last)
    batch = np.random.default_rng(0).integers(0, 256, (8, *SIZE, 3), dtype=np.uint8)

    result = {"cpu": cpu_description(), "cores": cores, "auto_precision": cpu_precision(), "conv": {}, "nets": {},
              "flops_per_frame": flops}
    conv_flop = 2 * 128 * 128 * 9 * 90 * 160
    for threads in sorted({cores, 1}, reverse=True):
        for p in precisions:
            dtype = torch.bfloat16 if p == "bf16" else torch.float32
            best = min(conv_seconds(dtype, threads=threads, repeats=20) for _ in range(3))
            result["conv"][f"{p}/{threads}"] = conv_flop / best / 1e9
        configure_threads(threads)
        for name, path in nets.items():
            for p in precisions:
                runner = NetRunner(path, RunSettings(device="cpu", precision=p))
                one = frames_per_second(lambda: runner.apply(x), 1, args.seconds)
                # as a per-frame render runs it: uint8 frames in and out, side by side on the cores
                fps = frames_per_second(lambda: runner(batch), len(batch), args.seconds)
                result["nets"][f"{name}/{p}/{threads}"] = {"fps": fps, "gflops": flops[name] * fps / 1e9,
                                                          "fps_one_frame": one}
    configure_threads(cores)

    info = media.probe(shared_video("imageio_cockatoo_yuv420.mp4"))
    frames = np.stack(list(media.decode_frames(info, 0, args.frames, media.working_size(info, SIZE[1]))))
    outs = {p: NetRunner(full, RunSettings(device="cpu", precision=p))(frames) for p in precisions}
    crf = Delivery().crf
    result["x264_levels"] = {"crf": crf, "mean": x264_levels(outs["fp32"], crf)}
    if "bf16" in outs:
        d = np.abs(outs["bf16"].astype(np.int16) - outs["fp32"].astype(np.int16))
        result["bf16_levels"] = {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": int(d.max())}

    print(f"CPU: {result['cpu']}; a render picks {result['auto_precision']} here")
    print("| threads | precision | 3x3 conv GFLOP/s | full net fps (one frame at a time) | full GFLOP/s | "
          "of best conv | student fps (one frame at a time) | student GFLOP/s | of best conv |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in sorted({cores, 1}, reverse=True):
        best = max(result["conv"][f"{p}/{threads}"] for p in precisions)
        for p in precisions:
            f, s = result["nets"][f"full/{p}/{threads}"], result["nets"][f"student/{p}/{threads}"]
            print(f"| {threads} | {p} | {result['conv'][f'{p}/{threads}']:.0f} | {f['fps']:.2f} "
                  f"({f['fps_one_frame']:.2f}) | {f['gflops']:.0f} | {f['gflops'] / best:.0%} | {s['fps']:.2f} "
                  f"({s['fps_one_frame']:.2f}) | {s['gflops']:.0f} | {s['gflops'] / best:.0%} |")
    print(f"FLOPs per frame at 640x360: full {flops['full'] / 1e9:.1f} G, student {flops['student'] / 1e9:.1f} G")
    if "bf16_levels" in result:
        b = result["bf16_levels"]
        print(f"bf16 against fp32 on {args.frames} cockatoo frames: mean {b['mean']:.2f} levels, 99th percentile "
              f"{b['p99']:.0f}, max {b['max']}; x264 at CRF {crf} changes the fp32 frames by "
              f"{result['x264_levels']['mean']:.2f} levels on average")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
