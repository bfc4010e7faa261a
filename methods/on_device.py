"""The flow methods' steps between the net's calls on the net's device (a GPU), in torch: the warp
of the carried output (flow-recurrent) and flow-blend's whole blend.

On a CPU the blend runs in NumPy and OpenCV (``flow_blend``: cv2.remap and GaussianBlur beat
torch's grid_sample and conv2d there). On a GPU the net takes milliseconds a batch, and a blend on
the host would put the CPU between the net and the encoder for every frame (two warps, two blurs
and the arithmetic, ~15 ms a 640x360 frame on one core, ~100 ms at 1920x1080). Here the same steps
run on the device: the frames go up as uint8 once per batch, the output comes back as uint8 once.

Each step copies the host path's arithmetic, including where it rounds (a uint8 image warped by
cv2.remap comes back rounded; the blend is rounded half up), so the carried previous output is an
integer image on both paths and a chunked render equals an unchunked one on each. The two paths
agree to within a level or so (``tests/test_flow_blend.py``): OpenCV samples positions on a 1/32 px
grid, torch exactly.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.depth import full_scale
from pipeline.flow.warp import warp_torch


def to_device(a: np.ndarray, device: str) -> torch.Tensor:
    """(H, W, C) or (N, H, W, C) array -> float32 (N, C, H, W) on ``device``, values kept."""
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)
    t = t[None] if t.dim() == 3 else t
    return t.permute(0, 3, 1, 2).float()


def flow_to_device(flow: np.ndarray, device: str) -> torch.Tensor:
    """(H, W, 2) flow -> (1, 2, H, W) float32 on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).to(device).permute(2, 0, 1)[None]


def warp_levels(x: torch.Tensor, flow: torch.Tensor, interpolation: str, top: float) -> torch.Tensor:
    """Warp an integer-valued image and round as cv2.remap does for uint8/uint16 images."""
    return warp_torch(x, flow, interpolation).round_().clamp_(0, top)


def in_frame(flow: torch.Tensor) -> torch.Tensor:
    """(1, 1, H, W): x + flow(x) inside the frame (``pipeline.flow.in_frame``)."""
    _, _, h, w = flow.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, w)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(h, 1)
    tx, ty = xs + flow[0, 0], ys + flow[0, 1]
    return ((tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)).float()[None, None]


@functools.lru_cache(maxsize=8)
def _gaussian(sigma: float, device: str) -> torch.Tensor:
    """cv2.GaussianBlur's kernel for a float image and ksize (0, 0): size round(8 sigma + 1) | 1."""
    size = int(round(sigma * 8 + 1)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return (k / k.sum()).float().to(device)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian with OpenCV's default border (reflect-101, torch's "reflect")."""
    k = _gaussian(sigma, str(x.device))
    c, r = x.shape[1], len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def photometric_confidence(cur_src: torch.Tensor, prev_src: torch.Tensor, backward: torch.Tensor,
                           falloff: float, top: float) -> torch.Tensor:
    """(1, 1, H, W): ``flow_blend.photometric_confidence`` on the device."""
    warped = warp_levels(prev_src, backward, "linear", top)
    dist = ((cur_src - warped) / top).square().sum(dim=1, keepdim=True)
    return torch.exp(-falloff * dist) * in_frame(backward)


def keep_detail(blended: torch.Tensor, fresh: torch.Tensor, weight: torch.Tensor, strength: float,
                sigma: float, max_gain: float) -> torch.Tensor:
    """``flow_blend.keep_detail`` on the device: the gain per channel over the blended pixels."""
    base = gaussian_blur(blended, sigma)
    detail = blended - base
    fresh_detail = fresh - gaussian_blur(fresh, sigma)
    energy = (weight * detail * detail).sum(dim=(2, 3), keepdim=True)
    target = (weight * fresh_detail * fresh_detail).sum(dim=(2, 3), keepdim=True)
    gain = torch.sqrt(target / energy.clamp_min(1e-6)).clamp(1.0, max_gain)
    return base + (1.0 + (gain - 1.0) * (weight / strength)) * detail


@torch.inference_mode()
def blend_sequence(method, fresh: np.ndarray, frames: np.ndarray, first_index: int, prev: np.ndarray | None,
                   prev_src: np.ndarray | None, flow, *, falloff: float, sigma: float, max_gain: float) -> np.ndarray:
    """``FlowBlend.blend_sequence``'s loop on ``method.run.device`` with flow_blend's constants (the
    photometric falloff, the detail sigma and gain cap); returns the outputs on the host."""
    device, top = method.run.device, float(full_scale(fresh))
    fresh_t, src_t = to_device(fresh, device), to_device(frames, device)
    prev_t = to_device(prev, device) if prev is not None else None
    prev_src_t = to_device(prev_src, device) if prev_src is not None else None
    out = torch.empty_like(fresh_t)
    for i in range(len(frames)):
        cur, new = src_t[i:i + 1], fresh_t[i:i + 1]
        if prev_t is None or method.strength == 0.0:
            out[i] = new[0]
        else:
            pair = flow.pair(first_index + i)
            backward = flow_to_device(pair.backward, device)
            if method.blend_mask == "photometric":
                confidence = photometric_confidence(cur, prev_src_t, backward, falloff, top)
            else:
                confidence = to_device(pair.mask.astype(np.float32)[..., None], device)
            a = method.strength * confidence
            blended = a * warp_levels(prev_t, backward, "cubic", top) + (1.0 - a) * new
            if method.keep_detail:
                blended = keep_detail(blended, new, a, method.strength, sigma, max_gain)
            blended = torch.floor(blended + 0.5).clamp_(0, top)
            if method.refine:  # the net again, on the host's integer frame (as the host path does)
                host = blended[0].permute(1, 2, 0).cpu().numpy().astype(fresh.dtype)
                blended = to_device(method.run(host[None]), device)
            out[i] = blended[0]
        prev_t, prev_src_t = out[i:i + 1], cur
    return out.permute(0, 2, 3, 1).cpu().numpy().astype(fresh.dtype)
