"""Flow-recurrent stylization (Ruder et al. 2018, fast variant).

A 7-channel net sees [frame t, mask * warped previous output, mask]: the
previous stylized frame, pulled into frame t's geometry by the backward flow,
tells it what to keep so static and smoothly moving content stops flickering;
the reliability mask tells it where that prediction is void (disocclusions,
motion boundaries). At a shot start both extra parts are zero.

The previous output is carried as the uint8 frame that was written, so a shot
rendered in chunks equals the shot rendered in one piece, bit for bit.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from models.recurrent import RECURRENT_CHANNELS, recurrent_input
from pipeline.carry import CarryState
from pipeline.errors import InputError
from pipeline.depth import full_scale
from pipeline.flow import warp
from pipeline.flow.warp import warp_torch

from .base import RunSettings, register
from .on_device import flow_to_device
from .net import NetMethod, to_uint8, to_uint16


def _to_tensor(img: np.ndarray, scale: float) -> torch.Tensor:
    """(H, W) or (H, W, C) array -> (1, C, H, W) float32 divided by ``scale``."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t[..., None] if t.dim() == 2 else t
    return t.permute(2, 0, 1)[None].div_(scale)


@register
class FlowRecurrent(NetMethod):
    """Each frame from itself and the flow-warped previous output (needs a `train --video` model)."""

    name = "flow-recurrent"
    summary = "a net that sees the flow-warped previous output (needs a `train --video` model)"
    needs_flow = True
    deep_frames = True  # the net runs in float; its 16-bit output is fed back as it was written
    checkpoint_folder = "recurrent"  # shipped styles keep these nets in models/weights/recurrent/

    def __init__(self, style_path: str | Path, run: RunSettings = RunSettings()):
        # Frames depend on each other: one frame per call whatever the batch setting.
        super().__init__(style_path, dataclasses.replace(run, batch=1))
        channels = self.run.card.get("architecture", {}).get("in_channels", 3)
        if channels != RECURRENT_CHANNELS:
            style = self.run.card.get("name") or Path(style_path).stem
            raise InputError(f"style {style} is a per-frame model; flow-recurrent needs a model trained "
                             "with `filmstyle train --video`")

    @torch.inference_mode()
    def _frame(self, frame: np.ndarray, prev_out: np.ndarray | None, pair) -> np.ndarray:
        """Stylize one uint8 frame given the previous uint8 output (None at a shot start)."""
        top = full_scale(frame)  # 255, or 65535 for a deep film
        x = _to_tensor(frame, top)
        if prev_out is None:
            warped, mask = torch.zeros_like(x), torch.zeros_like(x[:, :1])
        else:
            _, backward, reliable = pair
            if self.on_device:  # the warp beside the net (a GPU), not on the host between its calls
                warped = warp_torch(_to_tensor(prev_out, top).to(self.run.device),
                                    flow_to_device(backward, self.run.device))
            else:
                warped = _to_tensor(warp(prev_out.astype(np.float32), backward), top)
            mask = _to_tensor(reliable, 1.0)
        run = self.run
        x, warped, mask = (t.to(run.device, non_blocking=True) for t in (x, warped, mask))
        x = recurrent_input(x, warped, mask).contiguous(memory_format=torch.channels_last)
        y = run.apply(x)
        # Same rounding as NetRunner: this uint8 frame is both the output and the next frame's input.
        y = to_uint16(y) if frame.dtype == np.uint16 else to_uint8(y)
        return y[0].permute(1, 2, 0).cpu().numpy()

    def stylize(self, frames, first_index, state=None, flow=None):
        if flow is None:
            raise ValueError("flow-recurrent needs optical flow (a FlowSource) for its frames")
        if state is not None and state.next_frame != first_index:
            raise ValueError(f"carry state precedes frame {state.next_frame}, not {first_index}")
        prev = state.last_output if state is not None else None
        out = np.empty_like(frames)
        for i, frame in enumerate(frames):
            # The pair (t-1, t) is only needed when there is a previous output: never at a shot start.
            pair = flow.pair(first_index + i) if prev is not None else None
            out[i] = prev = self._frame(frame, prev, pair)
        return out, CarryState(first_index + len(frames), out[-1].copy(), frames[-1].copy())
