"""Would int8 pay here? The full net with its convolutions in int8, against the same net in fp32.

Issue 15 asks for a quantized path "if it measures faster" and within a bound of fp32's output.
This probe answers that on the machine it runs on, without changing the renderer: each chosen
convolution becomes oneDNN's int8 convolution (``torch.ops.onednn.qconv_pointwise``, the kernel
PyTorch's x86 inductor quantization lowers to) with int8 weights per output channel and the
input quantized to uint8 per call from its own range (dynamic: no calibration set, so a frame's
output does not depend on which frames came before), and a float output. Two variants: only the
residual blocks' 128-channel convolutions (most of the FLOPs), and every convolution with at least
16 input and output channels. The first 9x9 (3 channels in) and the head stay float.

Prints the CPU, the int8 engine, frames per second of fp32 and of each variant on real frames at
640x360, one frame at a time, and the difference from the fp32 output in 8-bit levels (mean, 99th
percentile, max), beside what bf16 changes (net_speed.py measures bf16's speed).

    .venv/bin/python benchmarks/int8_probe.py [--style NAME] [--frames 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import cpu_description, shared_video, style_for_benchmark  # noqa: E402


def int8_conv(conv):
    """A module computing ``conv`` (unpadded: the net pads before it) in int8 on oneDNN."""
    import torch
    from torch import nn

    class Int8Conv(nn.Module):
        def __init__(self):
            super().__init__()
            w = conv.weight.detach().float()
            self.w_scale = (w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127.0).float()
            qw = torch.round(w / self.w_scale.view(-1, 1, 1, 1)).clamp(-128, 127).to(torch.int8)
            self.stride = list(conv.stride)
            self.qw = torch.ops.onednn.qconv_prepack(qw.contiguous(memory_format=torch.channels_last),
                                                     self.w_scale, 1.0, 0, self.stride, [0, 0], [1, 1], 1, None)
            self.w_zp = torch.zeros(w.shape[0], dtype=torch.long)
            self.bias = conv.bias.detach().float()

        def forward(self, x):
            x = x.float()
            lo, hi = min(x.amin().item(), 0.0), max(x.amax().item(), 0.0)
            scale = max(hi - lo, 1e-8) / 255.0
            zp = int(round(-lo / scale))
            q = torch.clamp(torch.round(x / scale) + zp, 0, 255).to(torch.uint8)
            return torch.ops.onednn.qconv_pointwise(q, scale, zp, self.qw, self.w_scale, self.w_zp, self.bias,
                                                    self.stride, [0, 0], [1, 1], 1, 1.0, 0, torch.float32,
                                                    "none", [], "")

    return Int8Conv()


def quantized(net, min_channels: int):
    import torch

    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if (isinstance(child, torch.nn.Conv2d) and child.padding == (0, 0)
                    and min(child.in_channels, child.out_channels) >= min_channels):
                setattr(module, name, int8_conv(child))
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", default=None)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore", message=".*quantize.*deprecated")
    from methods import resolve_style
    from models.checkpoint import load_style_model
    from models.inference import for_inference
    from pipeline.media import decode_frames

    torch.set_num_threads(args.threads)
    net, _ = load_style_model(resolve_style(style_for_benchmark(args.style)))
    frames = decode_frames(shared_video("imageio_cockatoo_yuv420.mp4"), 0, args.frames, size=(640, 360))
    x = torch.from_numpy(np.stack(list(frames))).permute(0, 3, 1, 2).float().div(255)
    x = x.contiguous(memory_format=torch.channels_last)

    def run(model):
        xs = x.to(next(model.parameters()).dtype)
        with torch.inference_mode():
            model.stylize(xs[:1])
            t0 = time.perf_counter()
            out = torch.cat([model.stylize(xs[i:i + 1]).float() for i in range(len(xs))])
            return out, len(x) / (time.perf_counter() - t0)

    def levels(a, b):
        d = ((a * 255).round() - (b * 255).round()).abs().flatten()
        return float(d.mean()), float(d.kthvalue(int(0.99 * d.numel())).values), float(d.max())

    print(f"CPU: {cpu_description()}; threads {args.threads}; int8 engine oneDNN "
          f"(torch {torch.__version__}); {len(x)} cockatoo frames at 640x360, one at a time")
    ref, fps32 = run(for_inference(net, "fp32"))
    print("| net | fps | vs fp32 | mean levels from fp32 | 99th pct | max |\n|---|---|---|---|---|---|")
    print(f"| fp32 | {fps32:.2f} | 1.00x | - | - | - |")
    rows = [("bf16", for_inference(net, "bf16")),
            ("int8, residual blocks (128 ch)", quantized(for_inference(net, "fp32"), 128)),
            ("int8, every conv with >= 16 channels", quantized(for_inference(net, "fp32"), 16))]
    for name, model in rows:
        out, fps = run(model)
        mean, p99, mx = levels(out, ref)
        print(f"| {name} | {fps:.2f} | {fps / fps32:.2f}x | {mean:.2f} | {p99:.0f} | {mx:.0f} |")


if __name__ == "__main__":
    main()
