"""distilled: a small one-frame student distilled from a flow-guided render (Chen et al. 2020).

Trained by ``filmstyle distill STYLE`` (models/distill.py) to follow the flow-using teacher (by
default the flow-blend render of the style's per-frame net) where flow made the video steady; at
render time one frame in, no flow computed, and a fifth of the full net's compute. Its checkpoints
live in ``weights/distilled/``.
"""
from __future__ import annotations

from .base import register
from .per_frame import PerFrame


@register
class Distilled(PerFrame):
    name = "distilled"
    summary = "a small one-frame student distilled from a flow-guided render; no flow, fastest"
    checkpoint_folder = "distilled"
    train_command = "filmstyle distill {style} --out OUT.safetensors"
