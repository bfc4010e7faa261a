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


# ---------------------------------------------------------------- temporal (video phase)

#: Rec. 709 luma weights (ReCoNet's luminance constraint; note 0.7152, not the 0.7512 typo).
LUMINANCE = (0.2126, 0.7152, 0.0722)


def luminance(img: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luminance Y."""
    w = torch.tensor(LUMINANCE, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


def _as_mask(mask: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) -> (N, 1, H, W) float32."""
    return (mask[:, None] if mask.dim() == 3 else mask).float()


def temporal_output_loss(out_t: torch.Tensor, warped_out_prev: torch.Tensor, in_t: torch.Tensor,
                         warped_in_prev: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ReCoNet's output-level temporal loss with the luminance constraint.

    || M * ((O_t - W(O_t-1)) - Y(I_t - W(I_t-1))) ||^2 / (H*W), averaged over the batch:
    the output may change between frames only as much as the input's luminance
    does (a light change), nowhere else. Pixels in [0, 1]; the squared error is
    summed over the 3 colour channels and divided by the number of pixels (not
    by the mask's area, as in ReCoNet), so a pair that is mostly occluded
    weighs less. Y of the input difference is broadcast over the output channels.
    """
    m = _as_mask(mask)
    d_out = out_t.float() - warped_out_prev.float()
    d_in = luminance(in_t.float() - warped_in_prev.float())
    return (m * (d_out - d_in)).pow(2).sum(dim=1).mean()


def temporal_feature_loss(f_t: torch.Tensor, warped_f_prev: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ReCoNet's feature-level temporal loss: || M * (F_t - W(F_t-1)) ||^2 / (C*H*W), batch-averaged.

    ``mask`` is at image resolution and is area-resized to the features' (a
    feature pixel is as reliable as the fraction of reliable image pixels under
    it); the caller warps the features with the flow resized and rescaled likewise.
    """
    m = _as_mask(mask)
    if m.shape[-2:] != f_t.shape[-2:]:
        m = F.interpolate(m, size=f_t.shape[-2:], mode="area")
    return (m * (f_t.float() - warped_f_prev.float())).pow(2).mean()
