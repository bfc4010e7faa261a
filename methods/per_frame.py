"""per-frame: each frame through the style's net on its own (Johnson et al. 2016).

The baseline: fast, and chunks of a shot are independent (they run in parallel), but texture
flickers on moving content because nothing ties one frame's strokes to the next.
"""
from __future__ import annotations

from pipeline.carry import CarryState

from .base import register
from .net import NetMethod


@register
class PerFrame(NetMethod):
    name = "per-frame"
    summary = "each frame on its own (fast; flickers on moving content)"
    carries_state = False  # output ignores the carry-in state: chunks of a shot may run in parallel
    deep_frames = True  # the net runs in float: a 10-bit film keeps its bits through it

    def stylize(self, frames, first_index, state=None, flow=None):
        out = self.run(frames)
        return out, CarryState(first_index + len(frames), out[-1].copy(), frames[-1].copy())
