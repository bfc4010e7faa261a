"""The device setting (``--device auto|cpu|cuda[:N]``) and what each device runs best with.

``auto`` is resolved where the work runs (a render planned on a CPU head may run on GPU
workers). Per-device defaults: the CPU runs one frame per net call, in bf16 where a start-up timing
finds it faster than fp32 (``cpu_precision``), else fp32; CUDA runs half precision (bf16 where the
GPU supports it, else fp16) on batches of 8 frames, which keeps a GPU busy between the host-side
stages.

Why bf16 on a CPU is timed, never assumed: a 3x3 convolution in bf16 runs 2x fp32 on CPUs with
AVX-512 BF16 (Intel Xeon with AMX; AMD EPYC Zen 4: 432 against 222 GFLOP/s on 2 cores) and 10x
slower on AVX2-only ones (11 against 122 GFLOP/s). What it changes in the picture: the full net in
bf16 differs from fp32 by 0.46 8-bit levels on average (99th percentile 3) on cockatoo frames,
well under what x264 at the default CRF 18 changes (``benchmarks/net_speed.py`` measures both).
Frames do not depend on the thread count in either precision (models/transformer.py,
``InstanceNorm``), so chunks rendered by workers of different sizes agree to the bit.
"""
from __future__ import annotations

import contextlib
import functools
import re
import time
from dataclasses import dataclass

from .errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(spec: str) -> str:
    """Validate a device spec's form (without looking for the hardware)."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise InputError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    return spec


def resolve_device(spec: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``; ``cuda[:N]`` must exist here."""
    import torch

    spec = check_device(spec or "auto")
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(spec.partition(":")[2] or 0)
        if index >= count:
            raise InputError(f"device {spec} is not available here ({count} CUDA device(s) visible)")
    return spec


@dataclass(frozen=True)
class DeviceDefaults:
    precision: str
    batch: int


def defaults_for(device: str) -> DeviceDefaults:
    """Precision and frames per net call when the user names neither."""
    if device.startswith("cuda"):
        import torch

        half = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
        return DeviceDefaults(precision=half, batch=8)
    return DeviceDefaults(precision=cpu_precision(), batch=1)


# bf16 must win by this much: the probe is a few milliseconds on a machine that may be busy
BF16_MARGIN = 1.25


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """Run the block with ``n`` intra-op threads in this thread (None: as it is), then restore them."""
    import torch

    previous = torch.get_num_threads()
    if not n or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def conv_seconds(dtype, threads: int | None = None, repeats: int = 3) -> float:
    """Best time of a 128-channel 3x3 convolution on 160x90 maps (the residual blocks' shape at
    640x360) in ``dtype``, channels-last, on this CPU."""
    import torch

    with intra_op_threads(threads):
        conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)
        x = torch.randn(1, 128, 90, 160).to(dtype=dtype).contiguous(memory_format=torch.channels_last)
        best = float("inf")
        with torch.inference_mode():
            conv(x)  # oneDNN builds its kernel on the first call
            for _ in range(repeats):
                t = time.perf_counter()
                conv(x)
                best = min(best, time.perf_counter() - t)
        return best


@functools.cache
def cpu_precision() -> str:
    """bf16 when this CPU runs bf16 convolutions at least ``BF16_MARGIN`` x faster than fp32, else
    fp32; ``$FILMSTYLE_CPU_PRECISION`` (fp32 or bf16) skips the timing."""
    import os

    import torch

    pinned = os.environ.get("FILMSTYLE_CPU_PRECISION")
    if pinned:
        if pinned not in ("fp32", "bf16"):
            raise InputError(f"FILMSTYLE_CPU_PRECISION={pinned!r}: use fp32 or bf16")
        return pinned
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"
    fp32, bf16 = conv_seconds(torch.float32), conv_seconds(torch.bfloat16)
    return "bf16" if fp32 >= BF16_MARGIN * bf16 else "fp32"


def check_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise InputError("fp16 runs on CUDA only; on a CPU use fp32 or bf16")
    return precision
