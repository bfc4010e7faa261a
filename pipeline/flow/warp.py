"""Warping by a flow field: ``warp`` (NumPy/OpenCV), ``warp_torch`` (differentiable) and ``resize_flow``.

Both warps sample at pixel centres with borders replicated (the conventions in ``pipeline.flow``)
and agree to float precision. ``_pixel_grid`` and ``_check_flow`` are shared with the masks.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # runtime needs nothing from these modules
    import torch


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False  # shared between calls
    return xs, ys


def _check_flow(flow: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[:2] != shape[:2]:
        raise ValueError(f"flow of shape {flow.shape} does not fit an image of shape {shape}")
    return np.asarray(flow, dtype=np.float32)


_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def warp(image: np.ndarray, flow: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Sample ``image`` (H, W) or (H, W, C), any C, at x + flow(x); borders replicated.

    ``interpolation`` "linear" (bilinear) or "cubic" (bicubic: sharper, for images
    that are warped again and again, where bilinear's blur compounds). Keeps the
    dtype of ``image`` for the dtypes cv2.remap supports (uint8 results are
    rounded); other dtypes come back as float32.
    """
    flow = _check_flow(flow, image.shape)
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
    if image.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        image = image.astype(np.float32)
    xs, ys = _pixel_grid(*image.shape[:2])
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]

    def remap(img: np.ndarray) -> np.ndarray:
        out = cv2.remap(img, map_x, map_y, _INTERPOLATION[interpolation], borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(img.shape)  # remap drops a trailing channel axis of size 1

    if image.ndim == 3 and image.shape[2] > 4:
        # Beyond 4 channels OpenCV quantizes positions to 1/32 px; groups of 4 stay exact.
        return np.concatenate([remap(np.ascontiguousarray(image[..., i:i + 4]))
                               for i in range(0, image.shape[2], 4)], axis=2)
    return remap(image)


def warp_torch(x: "torch.Tensor", flow: "torch.Tensor", interpolation: str = "linear") -> "torch.Tensor":
    """``warp`` for tensors: x (N, C, H, W) sampled at pixel + flow, flow (N, 2, H, W) in pixels.

    Differentiable in both arguments (for temporal losses). With
    align_corners=True, normalised -1 and +1 are the centres of the first and
    last pixels, which is exactly cv2.remap's pixel-centre convention;
    padding "border" equals BORDER_REPLICATE (for "cubic" too: the 4x4 taps
    are clamped to the frame, and both use Keys' kernel with a = -0.75).
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(f"flow of shape {tuple(flow.shape)} does not fit a tensor of shape {tuple(x.shape)}")
    # Half types cannot hold pixel coordinates (bf16 is 4 px coarse at x = 640): sample in float32.
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    flow = flow.to(dtype)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=x.device),
                            torch.arange(w, dtype=dtype, device=x.device), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
    mode = "bicubic" if interpolation == "cubic" else "bilinear"
    out = F.grid_sample(x.to(dtype), grid, mode=mode, padding_mode="border", align_corners=True)
    return out.to(x.dtype)


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flow resampled to ``size`` = (width, height), its vectors rescaled to the new pixel units."""
    h, w = flow.shape[:2]
    out = cv2.resize(flow, (int(size[0]), int(size[1])), interpolation=cv2.INTER_LINEAR)
    return out * np.array([size[0] / w, size[1] / h], dtype=np.float32)
