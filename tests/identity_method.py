"""A stylization method as a plug-in module: the source frames times a gain.

Registered when imported (as any plug-in is: a Ray worker that meets a job with this method
imports this module by name, so it must be importable on every node; the test harness puts
tests/ on the workers' Python path).
"""
from __future__ import annotations

import numpy as np

from methods import Method, Option, RunSettings, register
from pipeline.carry import CarryState


@register
class Identity(Method):
    """The frames as they are, times a gain: a method in a dozen lines."""

    name = "identity-test"
    summary = "the source frames (a test plug-in)"
    options = (Option("gain", float, 1.0, "multiply the frames by this", check=lambda v: 0 < v <= 2, rule="in (0, 2]"),)

    def __init__(self, style_path, run: RunSettings = RunSettings(), *, gain: float = 1.0):
        self.gain = gain

    @property
    def card(self) -> dict:
        return {"name": "identity"}

    def params(self) -> dict:
        return {"method": self.name, "gain": self.gain}

    def stylize(self, frames, first_index, state=None, flow=None):
        out = np.clip(frames.astype(np.float32) * self.gain + 0.5, 0, 255).astype(np.uint8)
        return out, CarryState(first_index + len(frames), out[-1].copy(), frames[-1].copy())
