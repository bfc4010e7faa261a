"""The device setting (``--device auto|cpu|cuda[:N]``) and what each device runs best with.

``auto`` is resolved where the work runs (a render planned on a CPU head may run on GPU
workers). Per-device defaults: the CPU keeps fp32 and one frame per net call (bf16 is 2x faster
only on CPUs with AVX-512 BF16 / AMX and 10x slower on AVX2-only ones, so it stays a choice:
``--precision bf16``); CUDA runs half precision (bf16 where the GPU supports it, else fp16) on
batches of 8 frames, which keeps a GPU busy between the host-side stages.
"""
from __future__ import annotations

import re
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
    return DeviceDefaults(precision="fp32", batch=1)


def check_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise InputError("fp16 runs on CUDA only; on a CPU use fp32 or bf16")
    return precision
