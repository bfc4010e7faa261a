"""The flow-recurrent net's input layout, shared by its training (models/train_video.py) and the stylizer.

Ruder et al.'s fast variant: the net sees 7 channels, [frame, mask * warped previous output,
mask]. A per-frame (3-channel) net becomes the starting point of a recurrent one by growing
its first convolution with zero weights.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pipeline.errors import InputError

from .transformer import TransformerNet

RECURRENT_CHANNELS = 7  # frame, warped previous output, mask


def recurrent_input(frame: torch.Tensor, warped_prev: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 7-channel input [frame, mask * warped previous output, mask] (Ruder et al.).

    Unreliable pixels of the warped output are zeroed (Ruder fills occlusions
    with a constant) so the net cannot copy a wrong prediction; at a shot start
    both extra parts are zero. Training and the stylizer both build it here.
    """
    return torch.cat([frame, warped_prev * mask, mask], dim=1)


def extend_input_channels(net: TransformerNet, in_channels: int = RECURRENT_CHANNELS) -> TransformerNet:
    """A copy of ``net`` with more input channels whose weights start at zero.

    The copy then computes exactly what ``net`` does whatever the new channels
    hold, so fine-tuning starts from the per-frame model (Ruder et al. init).
    """
    new = TransformerNet(replace(net.config, in_channels=in_channels))
    old = net.state_dict()
    state = {}
    for k, v in new.state_dict().items():
        w = old[k]
        if w.shape != v.shape:  # the first conv: (out, in, kh, kw), grown along the input axis
            grown = torch.zeros_like(v)
            grown[:, :w.shape[1]] = w
            w = grown
        state[k] = w
    new.load_state_dict(state)
    return new.train(net.training)  # same mode: batch norm must use the same statistics


def load_recurrent_init(path: str | Path) -> tuple[TransformerNet, dict]:
    """The net to fine-tune: a per-frame checkpoint grown to 7 channels, or a 7-channel one as is."""
    from .checkpoint import load_style_model

    net, card = load_style_model(path)
    channels = net.config.in_channels
    if channels == 3:
        net = extend_input_channels(net)
    elif channels != RECURRENT_CHANNELS:
        raise InputError(f"{path}: a {channels}-channel model cannot initialise a flow-recurrent one")
    return net, card
