"""Stylizers: run a style model over a chunk of frames with a carry-in state.

A Stylizer turns a chunk (N, H, W, 3 uint8 RGB frames of one shot) plus the
state carried out of the previous chunk of the same shot into stylized frames
and a new carry state. Methods register under a name (``--method``), so a new
method (flow-guided, recurrent, distilled) lands as one new class.

Carry state holds exactly what a method feeds forward from frame to frame, in
the representation it uses internally (uint8 frames), so a chunked render
equals an unchunked one.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from .errors import InputError


@dataclass
class CarryState:
    """What crosses a chunk boundary inside a shot. ``None`` fields mean 'start of a shot'."""

    next_frame: int  # absolute index of the frame this state precedes
    last_output: np.ndarray | None = None  # last stylized frame (H, W, 3) uint8
    last_source: np.ndarray | None = None  # last source frame (H, W, 3) uint8
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # method-specific arrays

    def to_bytes(self) -> bytes:
        arrays = {f"extra.{k}": v for k, v in self.extra.items()}
        if self.last_output is not None:
            arrays["last_output"] = self.last_output
        if self.last_source is not None:
            arrays["last_source"] = self.last_source
        buf = io.BytesIO()
        np.savez_compressed(buf, next_frame=np.int64(self.next_frame), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CarryState":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # never unpickle
            extra = {k[6:]: z[k] for k in z.files if k.startswith("extra.")}
            return cls(
                next_frame=int(z["next_frame"]),
                last_output=z["last_output"] if "last_output" in z.files else None,
                last_source=z["last_source"] if "last_source" in z.files else None,
                extra=extra,
            )


class FlowSource(Protocol):
    """Optical flow for the consecutive pairs of a chunk (provided by pipeline.flow)."""

    def pair(self, t: int):  # -> (forward t-1->t, backward t->t-1, reliability mask)
        ...


class Stylizer(Protocol):
    name: str
    needs_flow: bool
    model_hash: str
    # (optional) False when the output does not depend on the carry-in state; absent means True
    carries_state: bool

    def stylize(self, frames: np.ndarray, first_index: int, state: CarryState | None,
                flow: FlowSource | None = None) -> tuple[np.ndarray, CarryState]:
        ...


METHODS: dict[str, Callable[..., Stylizer]] = {}


def register(name: str):
    def deco(cls):
        METHODS[name] = cls
        cls.name = name
        return cls
    return deco


def make_stylizer(method: str, model_path: str | Path, *, device: str = "cpu", precision: str = "fp32",
                  batch: int = 1, style_scale: float = 1.0, **options) -> Stylizer:
    """Build a registered method; ``options`` not in the method's ``options`` tuple are ignored."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[method]
    own = {k: v for k, v in options.items() if k in getattr(cls, "options", ())}
    return cls(model_path, device=device, precision=precision, batch=batch, style_scale=style_scale, **own)


def configure_threads(threads: int | None) -> int:
    """Use every core (or the given count) for intra-op parallelism; returns the count set."""
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-like (antialiased) down, bicubic up: neither aliases strokes nor blurs them more than needed."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] * size[1] < x.shape[-2] * x.shape[-1]
    return torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear" if down else "bicubic",
                                           antialias=down, align_corners=False)


class NetRunner:
    """A loaded transform net and how to run it (device, precision, batch, stroke scale).

    ``style_scale`` s: the net sees the frame at 1/s of the working size and its output is
    resized back. A net paints strokes of a fixed size in pixels (the painting's, at the size
    it trained on), so at s = 2 they cover twice the share of the frame; the frame size is kept.
    """

    def __init__(self, model_path: str | Path, *, device: str = "cpu", precision: str = "fp32", batch: int = 1,
                 style_scale: float = 1.0):
        from models.checkpoint import file_digest, load_style_model

        self.net, self.card = load_style_model(model_path, device=device)
        self.model_hash = file_digest(model_path)
        self.device, self.batch = device, max(1, batch)
        if precision not in ("fp32", "bf16"):
            raise InputError(f"unknown precision {precision!r} (fp32 or bf16)")
        if not 0.25 <= float(style_scale) <= 8:
            raise InputError(f"style scale must be between 0.25 and 8, not {style_scale}")
        self.precision, self.style_scale = precision, float(style_scale)
        if device == "cpu":
            self.net = self.net.to(memory_format=torch.channels_last)

    def params(self) -> dict:
        """What of the running changes the output (a scale of 1 is left out: keys from before it stay valid)."""
        return {"precision": self.precision, **({"style_scale": self.style_scale} if self.style_scale != 1 else {})}

    @torch.inference_mode()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] on the device -> (N, 3, H, W) stylized, at the stroke scale."""
        size = tuple(x.shape[-2:])
        if self.style_scale != 1:
            x = _resize(x, (max(4, round(size[0] / self.style_scale)), max(4, round(size[1] / self.style_scale))))
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            y = self.net.stylize(x)
        return _resize(y, size).clamp_(0, 1) if self.style_scale != 1 else y

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W, 3) uint8, in batches of ``self.batch``."""
        out = np.empty_like(frames)
        for i in range(0, len(frames), self.batch):
            x = torch.from_numpy(frames[i:i + self.batch]).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
            y = self.apply(x)
            y = y.float().mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
            out[i:i + self.batch] = y.permute(0, 2, 3, 1).cpu().numpy()
        return out


@register("per-frame")
class PerFrameStylizer:
    """Each frame independently (the baseline; flickers on moving content)."""

    needs_flow = False
    carries_state = False  # output ignores the carry-in state: chunks of a shot may run in parallel

    def __init__(self, model_path: str | Path, *, device: str = "cpu", precision: str = "fp32", batch: int = 1,
                 style_scale: float = 1.0):
        self.run = NetRunner(model_path, device=device, precision=precision, batch=batch, style_scale=style_scale)
        self.model_hash = self.run.model_hash

    def params(self) -> dict:
        return {"method": self.name, "model": self.model_hash, **self.run.params()}

    def stylize(self, frames, first_index, state=None, flow=None):
        out = self.run(frames)
        return out, CarryState(first_index + len(frames), out[-1].copy(), frames[-1].copy())


# Methods in their own modules register themselves on import.
from . import flow_blend, flow_recurrent  # noqa: E402,F401
