"""Quality metrics: temporal warping error, flow end-point error, seam error; Middlebury .flo I/O.

Flow conventions are those of ``pipeline.flow``: (H, W, 2) float32 pixels (dx, dy)
on the source frame's pixels; ``warp(image, flow)(x) = image(x + flow(x))``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError
from .flow import FlowPair, consistency_mask, in_frame, warp

__all__ = ["warping_error", "read_flo", "write_flo", "end_point_error", "seam_error"]

FLO_MAGIC = np.float32(202021.25)
_FLO_UNKNOWN = 1e9  # Middlebury marks unknown flow with values above this


def _unit(image: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: uint8 is divided by 255, floats are taken as already in [0, 1]."""
    image = np.asarray(image)
    return image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)


def _forward_and_mask(item: np.ndarray | FlowPair, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(item, FlowPair):
        forward = item.forward
        if mask is None:  # FlowPair.mask is for frame t; the metric needs frame t-1's pixels
            mask = consistency_mask(item.forward, item.backward)
    else:
        forward = np.asarray(item, dtype=np.float32)
        if mask is None:  # the only mask a bare flow can give
            mask = in_frame(forward)
    return forward, np.asarray(mask, dtype=np.float32)


def warping_error(outputs: Sequence[np.ndarray], flows: Sequence[np.ndarray | FlowPair],
                  masks: Sequence[np.ndarray] | None = None) -> dict:
    """Lai et al.'s temporal warping error of a sequence of (stylized) frames.

    For t = 1 .. N-1 with the pair (t-1, t):
        err_t = sum(M * mean_c (W(O_t) - O_{t-1})^2) / sum(M),  W(O_t)(x) = O_t(x + f(x))
    where f = ``flows[t-1]`` is the FORWARD flow t-1 -> t of the input frames
    (an (H, W, 2) array, or a FlowPair whose ``forward`` is used), pixels are
    in [0, 1] (uint8 is divided by 255) and M = ``masks[t-1]`` is the
    non-occluded mask on frame t-1's pixels (1 = use). Without masks: for a
    FlowPair the forward-backward consistency mask of frame t-1
    (``consistency_mask(forward, backward)``), for a bare flow the pixels whose
    target lies inside frame t. A frame whose mask is empty gets NaN and is
    left out of the mean.

    Returns {"mean": float, "per_frame": [err_1, ..., err_{N-1}]}.
    """
    if len(flows) != len(outputs) - 1:
        raise ValueError(f"{len(outputs)} frames need {len(outputs) - 1} flows, got {len(flows)}")
    if masks is not None and len(masks) != len(flows):
        raise ValueError(f"{len(flows)} flows need as many masks, got {len(masks)}")
    per_frame = []
    for t in range(1, len(outputs)):
        forward, mask = _forward_and_mask(flows[t - 1], None if masks is None else masks[t - 1])
        prev, cur = _unit(outputs[t - 1]), _unit(outputs[t])
        sq = (warp(cur, forward) - prev) ** 2
        sq = sq.mean(axis=2) if sq.ndim == 3 else sq
        total = float(mask.sum())
        per_frame.append(float((mask * sq).sum()) / total if total > 0 else math.nan)
    finite = [e for e in per_frame if math.isfinite(e)]
    return {"mean": float(np.mean(finite)) if finite else math.nan, "per_frame": per_frame}


def read_flo(path: str | Path) -> np.ndarray:
    """A Middlebury .flo file as (H, W, 2) float32; InputError if it is not a valid one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read flow file ({e.strerror})") from None
    if len(data) < 12:
        raise InputError(f"{path}: not a .flo file ({len(data)} bytes, shorter than its header)")
    magic = np.frombuffer(data, "<f4", count=1)[0]
    if magic != FLO_MAGIC:
        raise InputError(f"{path}: not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    w, h = (int(v) for v in np.frombuffer(data, "<i4", count=2, offset=4))
    if not (0 < w < 1 << 16 and 0 < h < 1 << 16):
        raise InputError(f"{path}: implausible .flo size {w}x{h}")
    expected = 12 + w * h * 8
    if len(data) != expected:
        raise InputError(f"{path}: .flo of {w}x{h} needs {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, "<f4", offset=12).reshape(h, w, 2).astype(np.float32)


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write (H, W, 2) flow as a Middlebury .flo file."""
    flow = np.asarray(flow, dtype="<f4")
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    Path(path).write_bytes(np.array([FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
                           + flow.tobytes())


def end_point_error(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean Euclidean distance between ``flow`` and ``gt`` over valid pixels.

    Pixels where ``valid`` is False, or where ``gt`` is unknown (Middlebury's
    values above 1e9, NaN), are left out.
    """
    flow, gt = np.asarray(flow, np.float64), np.asarray(gt, np.float64)
    if flow.shape != gt.shape or flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow {flow.shape} and ground truth {gt.shape} must both be (H, W, 2)")
    ok = np.all(np.abs(gt) < _FLO_UNKNOWN, axis=2)  # NaN compares False
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if not ok.any():
        raise ValueError("no valid pixels to compare")
    return float(np.linalg.norm(flow - gt, axis=2)[ok].mean())


def seam_error(per_frame_errors: Sequence[float] | Mapping[int, float], chunk_starts: Sequence[int], *,
               first_frame: int = 1) -> dict:
    """Warping error at chunk seams against the rest: does chunking show?

    ``per_frame_errors`` maps frame t to the error of the pair (t-1, t): a
    mapping, or a sequence whose item i is frame ``first_frame`` + i (the
    default fits ``warping_error(...)["per_frame"]`` of frames 0..N-1).
    ``chunk_starts`` are the first frames of chunks that continue a shot (not
    shot starts: no pair crosses a cut). NaN errors are ignored.

    Returns {"boundary": mean at chunk starts, "interior": mean elsewhere,
    "ratio": boundary / interior}; NaN where a group is empty.
    """
    errors = (dict(per_frame_errors) if isinstance(per_frame_errors, Mapping)
              else {first_frame + i: e for i, e in enumerate(per_frame_errors)})
    seams = set(chunk_starts)
    boundary = [e for t, e in errors.items() if t in seams and math.isfinite(e)]
    interior = [e for t, e in errors.items() if t not in seams and math.isfinite(e)]
    b = float(np.mean(boundary)) if boundary else math.nan
    i = float(np.mean(interior)) if interior else math.nan
    return {"boundary": b, "interior": i, "ratio": b / i if i > 0 else math.nan}
