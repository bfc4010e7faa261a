"""stable: one frame in, no flow, a net trained to be steady (ReCoNet, Gao et al. 2018).

The net is the style's per-frame net fine-tuned with two-frame synergic training
(``filmstyle train --video --temporal reconet``): the temporal losses shape it in training, so at
render time it runs exactly like per-frame, at per-frame speed, and the render computes no flow.
Its checkpoints live in ``weights/stable/``.
"""
from __future__ import annotations

from .base import register
from .per_frame import PerFrame


@register
class Stable(PerFrame):
    name = "stable"
    summary = "one frame in, no flow, trained steady (ReCoNet); per-frame speed"
    checkpoint_folder = "stable"
    train_command = "filmstyle train --video --temporal reconet --init {init} --out OUT.safetensors"
