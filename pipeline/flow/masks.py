"""Occlusion and consistency masks, and ``FlowPair``: the flow of one pair (t-1, t) with its mask.

``compute_pair`` runs a backend both ways and derives the reliability of frame t's pixels
(Ruder et al.'s forward-backward consistency and motion-boundary rule; see DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends import FlowBackend, _bidirectional
from .warp import _check_flow, _pixel_grid, warp


# Ruder et al.'s consistency rule (see DESIGN.md): relative and absolute tolerances.
_REL_TOL, _ABS_TOL = 0.01, 0.5
_MB_REL_TOL, _MB_ABS_TOL = 0.01, 0.002


def _passes(excess: np.ndarray, tol: float, soft: bool) -> np.ndarray:
    """Hard: excess <= tol. Soft: 2^(-excess/tol) for excess > 0, i.e. exactly 0.5 at the hard threshold."""
    if not soft:
        return (excess <= tol).astype(np.float32)
    return np.exp2(-np.maximum(excess, 0.0) / tol).astype(np.float32)


def _sq(v: np.ndarray) -> np.ndarray:
    return v[..., 0] ** 2 + v[..., 1] ** 2


def consistency_mask(flow: np.ndarray, reverse: np.ndarray, *, soft: bool = False,
                     motion_boundaries: bool = True) -> np.ndarray:
    """Reliability (H, W) float32 in [0, 1] of the pixels of ``flow``'s source frame.

    ``flow`` maps frame a -> b, ``reverse`` maps b -> a. A pixel x of frame a is
    unreliable if the round trip does not come back
    (|w + r|^2 > 0.01 (|w|^2 + |r|^2) + 0.5 with w = flow(x), r = reverse(x + w)),
    if it lies on a motion boundary of ``flow``
    (|grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002, central differences) or if
    x + w falls outside frame b. ``soft`` replaces the two thresholds by a
    smooth falloff that crosses 0.5 at them; out-of-frame pixels stay 0.
    """
    flow = _check_flow(flow, flow.shape)
    reverse = _check_flow(reverse, flow.shape)
    back = warp(reverse, flow)
    norms = _sq(flow)
    mask = _passes(_sq(flow + back) - _REL_TOL * (norms + _sq(back)), _ABS_TOL, soft)
    if motion_boundaries:
        du_dy, du_dx = np.gradient(flow[..., 0])
        dv_dy, dv_dx = np.gradient(flow[..., 1])
        grad = du_dx ** 2 + du_dy ** 2 + dv_dx ** 2 + dv_dy ** 2
        mask *= _passes(grad - _MB_REL_TOL * norms, _MB_ABS_TOL, soft)
    return mask * in_frame(flow)


def in_frame(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: x + flow(x) lies inside the frame (pixel centres 0 .. W-1, 0 .. H-1)."""
    h, w = flow.shape[:2]
    xs, ys = _pixel_grid(h, w)
    tx, ty = xs + flow[..., 0], ys + flow[..., 1]
    return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def reliability_mask(forward: np.ndarray, backward: np.ndarray, *, soft: bool = False,
                     motion_boundaries: bool = True) -> np.ndarray:
    """Reliability of frame t's pixels for warping frame t-1 into frame t.

    ``forward`` maps t-1 -> t, ``backward`` t -> t-1; the backward flow (the
    one the warp uses) is checked against the forward flow. The mask for the
    other direction (frame t-1's pixels, used by the warping-error metric) is
    ``consistency_mask(forward, backward)``.
    """
    return consistency_mask(backward, forward, soft=soft, motion_boundaries=motion_boundaries)


@dataclass(frozen=True, eq=False)
class FlowPair:
    """Flow of the pair (t-1, t). Unpacks as ``forward, backward, mask = pair``."""

    forward: np.ndarray  # (H, W, 2) float32, t-1 -> t, on frame t-1's pixels
    backward: np.ndarray  # (H, W, 2) float32, t -> t-1, on frame t's pixels
    mask: np.ndarray  # (H, W) float32 in [0, 1]: reliability of frame t's pixels

    def __iter__(self):
        return iter((self.forward, self.backward, self.mask))


def compute_pair(backend: FlowBackend, prev: np.ndarray, cur: np.ndarray, *, soft: bool = False,
                 motion_boundaries: bool = True) -> FlowPair:
    """Forward and backward flow between frames t-1 (``prev``) and t (``cur``) and frame t's mask."""
    return pair_from_flows(*_bidirectional(backend, prev, cur), soft=soft, motion_boundaries=motion_boundaries)


def pair_from_flows(forward: np.ndarray, backward: np.ndarray, *, soft: bool = False,
                    motion_boundaries: bool = True) -> FlowPair:
    """The FlowPair of a pair's two flows: frame t's reliability mask added (``compute_pair``'s second half)."""
    mask = reliability_mask(forward, backward, soft=soft, motion_boundaries=motion_boundaries)
    return FlowPair(forward.astype(np.float32, copy=False), backward.astype(np.float32, copy=False), mask)
