"""Perceptual losses (Johnson et al.) as small functions over VGG feature dicts.

Each loss returns a scalar tensor; weights are applied by the caller (the
trainer's config, recorded in each model card), so that the temporal and
distillation losses of later phases plug in beside these without touching them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CONTENT_LAYERS = ("relu3_3",)
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalized by C*H*W (so its scale does not depend on image size)."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


# Both perceptual losses are relative: each layer's squared error is divided by the
# energy of its target. Raw Gram magnitudes differ by six orders of magnitude
# between relu1_2 and relu4_3 on the HED trunk (and differ again on ImageNet VGG),
# so unnormalized sums are dominated by one layer; relative terms make every
# layer count and keep the loss weights transferable across loss networks.
# An unstyled photo scores about 1 on each style layer; two unrelated photos
# score about 1 on content.


def content_loss(out_feats: dict, target_feats: dict, layers=CONTENT_LAYERS) -> torch.Tensor:
    total = 0.0
    for k in layers:
        target = target_feats[k].detach().float()
        total = total + F.mse_loss(out_feats[k].float(), target) / target.pow(2).mean().clamp_min(1e-12)
    return total


class StyleTarget:
    """Gram matrices of a style image, with the per-layer normalizers."""

    def __init__(self, style_feats: dict, layers=STYLE_LAYERS):
        self.layers = tuple(layers)
        self.grams = {k: gram(style_feats[k].detach().float()) for k in self.layers}
        self.norms = {k: g.pow(2).mean().clamp_min(1e-20) for k, g in self.grams.items()}


def style_loss_per_layer(out_feats: dict, target: StyleTarget) -> dict[str, torch.Tensor]:
    out = {}
    for k in target.layers:
        g = gram(out_feats[k].float())
        out[k] = F.mse_loss(g, target.grams[k].expand_as(g)) / target.norms[k]
    return out


def style_loss(out_feats: dict, target: StyleTarget) -> torch.Tensor:
    return sum(style_loss_per_layer(out_feats, target).values())


def tv_loss(img: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute neighbour difference)."""
    dx = (img[..., :, 1:] - img[..., :, :-1]).abs().mean()
    dy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean()
    return dx + dy


def range_loss(raw: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of raw outputs from [0, 1]: keeps the straight-through clamp honest."""
    return (raw - raw.clamp(0, 1)).pow(2).mean()
