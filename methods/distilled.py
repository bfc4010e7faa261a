"""distilled: a small one-frame student distilled from the style's flow-recurrent net (Chen et al. 2020).

Trained by ``filmstyle distill STYLE`` (models/distill.py) to follow the flow-using teacher where
flow made the video steady; at render time one frame in, no flow computed, and a fifth of the
full net's compute. Its checkpoints live in ``weights/distilled/``.
"""
from __future__ import annotations

from .base import register
from .per_frame import PerFrame


@register
class Distilled(PerFrame):
    name = "distilled"
    summary = "a small one-frame student distilled from the flow-recurrent net; no flow, fastest"
    checkpoint_folder = "distilled"
