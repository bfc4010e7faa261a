"""Optical flow: backends, warping, occlusion masks and the compressed flow cache.

Conventions (used by every function here and by the stylizers and metrics)
--------------------------------------------------------------------------
* A flow is a float32 array (H, W, 2) in pixels, channel 0 = dx, channel 1 = dy,
  attached to the pixels of its *source* frame: a pixel x of frame a moves to
  x + flow(x) in frame b.
* For the pair (t-1, t): ``forward`` maps t-1 -> t (lives on frame t-1's pixels),
  ``backward`` maps t -> t-1 (lives on frame t's pixels). A pair is named by t.
* ``warp(image, flow)(x) = image(x + flow(x))``: backward warping with bilinear
  sampling, borders replicated. So
      warp(frame_t,     forward)  ~ frame_{t-1}   (frame t pulled into t-1's geometry)
      warp(output_{t-1}, backward) ~ output_t     (previous output pulled into t's geometry)
  The stylizers use the second form; the warping-error metric the first.
* ``FlowPair.mask`` is the reliability of frame t's pixels for that second form:
  1 where O_{t-1}(x + backward(x)) is a valid prediction of O_t(x), 0 where the
  pixel is disoccluded, on a motion boundary, or looks outside frame t-1.

Pixel coordinates are pixel centres (0 .. W-1), as in cv2.remap and in
``grid_sample(align_corners=True)``; both warps agree to float precision.

The package, each module importing only those listed before it: ``warp`` (warping),
``backends`` (the backends and their registry), ``masks`` (occlusion masks, FlowPair,
compute_pair), ``codec`` (the stored format of a FlowPair) and ``cache`` (FlowCache,
compute_flows, CachedFlowSource).
"""
from __future__ import annotations

from .warp import resize_flow, warp, warp_torch
from .backends import (FLOW_BACKENDS, DISBackend, FarnebackBackend, FlowBackend, ILKBackend, RAFTBackend,
                       TVL1Backend, make_flow_backend)
from .masks import FlowPair, compute_pair, consistency_mask, in_frame, reliability_mask
from .codec import FORMAT_VERSION, CorruptEntry, decode_pair, encode_pair
from .cache import CachedFlowSource, CacheStats, FlowCache, backend_identity, compute_flows

__all__ = [
    "warp", "warp_torch", "resize_flow",
    "FlowBackend", "DISBackend", "FarnebackBackend", "TVL1Backend", "ILKBackend",
    "RAFTBackend", "FLOW_BACKENDS", "make_flow_backend",
    "in_frame", "consistency_mask", "reliability_mask", "FlowPair", "compute_pair",
    "FORMAT_VERSION", "CacheStats", "backend_identity", "FlowCache", "encode_pair", "decode_pair", "CorruptEntry",
    "compute_flows", "CachedFlowSource",
]
