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


# ---------------------------------------------------------------- distillation (Chen et al. 2020)


def difference_weight(teacher_flow: torch.Tensor, teacher_frame: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): where optical flow changed the output, the mean absolute difference over RGB
    of the flow-using teacher's output and the one-frame teacher's. 0 where they agree."""
    return (teacher_flow.float() - teacher_frame.float()).abs().mean(dim=1, keepdim=True)


def distillation_loss(student: torch.Tensor, teacher_flow: torch.Tensor, teacher_frame: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """The student follows the flow-using teacher, ``1 + alpha * difference_weight`` times harder
    where the two teachers differ (where flow helps): weighted squared error, RGB summed, mean."""
    w = 1.0 + alpha * difference_weight(teacher_flow, teacher_frame)
    return (w * (student.float() - teacher_flow.float()).pow(2).sum(dim=1, keepdim=True)).mean()


def rank_ratio(stack: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample: nuclear over Frobenius norm of the (K, C*H*W) matrix of K aligned frames (N, K, C, H, W),
    pixels outside ``mask`` (N, 1, H, W) zeroed. 1 for frames that are one picture up to brightness
    (rank 1), up to sqrt(K) for unrelated frames; free of the frames' scale."""
    n, k = stack.shape[:2]
    m = _as_mask(mask)[:, None]  # (N, 1, 1, H, W)
    rows = (stack.float() * m).reshape(n, k, -1)
    # The singular values from the K x K Gram matrix's eigenvalues: an SVD's gradient divides by
    # differences of singular values and is NaN for identical frames; the eigenvalues' is not.
    # Scaled to unit trace and in float64 before the eigensolver: raw, a 192 px crop's Gram entries
    # reach 1e4-1e5 and LAPACK's float32 solver failed to converge on a nearly flat student's
    # (the first distillation step of an untrained student, AMD EPYC, torch 2.13).
    # The energy is floored at an RMS of 0.01 per entry: a scale-free ratio's gradient grows as
    # 1 / norm, unbounded for an untrained student's nearly black output (RMS 6e-4; the tone loss's
    # 1 / norm gave that student a 3.7e11 gradient norm). Below the floor the ratio falls towards 0,
    # which asks for a picture rather than for any arrangement of noise.
    gram_k = (rows @ rows.transpose(1, 2)).double()
    energy = gram_k.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-4 * k * rows.shape[-1])
    eig = torch.linalg.eigvalsh(gram_k / energy[:, None, None]).clamp_min(0)
    return torch.sqrt(eig + 1e-10).sum(-1).float()  # the floor keeps sqrt's gradient finite at 0


def low_rank_loss(outputs: torch.Tensor, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Chen et al.'s low-rank loss: K consecutive frames warped into one frame's view (N, K, C, H, W)
    should be as close to one picture after stylization as they were before: the squared
    difference of the rank ratios (``rank_ratio``) of the stacked outputs and inputs over the
    pixels visible in all K (``mask``), batch mean. 0 when the outputs are as aligned as the inputs."""
    return (rank_ratio(outputs, mask) - rank_ratio(inputs, mask)).pow(2).mean()


# ---------------------------------------------------------------- tone (light and dark)

#: The tone measure looks at the image at this width, blurred with this sigma (pixels): the
#: scale of a film's lighting (a window, a face in shadow), not of its texture or strokes.
TONE_WIDTH = 256
TONE_SIGMA = 4.0


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[1]
    pad_h, pad_w = min(radius, img.shape[-2] - 1), min(radius, img.shape[-1] - 1)
    out = F.pad(img, (pad_w, pad_w, 0, 0), mode="reflect")
    out = F.conv2d(out, k[radius - pad_w:radius + pad_w + 1].view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect")
    return F.conv2d(out, k[radius - pad_h:radius + pad_h + 1].view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blurred_luminance(img: torch.Tensor, width: int = TONE_WIDTH, sigma: float = TONE_SIGMA) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, h, width) Rec. 709 luminance, resized and Gaussian-blurred."""
    img = img.float()
    h, w = img.shape[-2:]
    if w != width:
        img = F.interpolate(img, size=(max(1, round(h * width / w)), width), mode="bilinear",
                            antialias=True, align_corners=False)
    return _gaussian_blur(luminance(img), sigma)


def tone_correlation(out: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the blurred luminance of ``out`` and ``source``, one value per image.

    1: light and dark sit where the source has them (a night scene stays dark, a window stays
    bright), whatever the painting's overall level and contrast (the correlation ignores gain
    and offset). A net that paints every frame one hue scores near 0; Gatys optimization from
    the photo 0.98.
    """
    a = blurred_luminance(out).flatten(1)
    b = blurred_luminance(source).flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    # The output's spread clamped below at an RMS of 1e-3 (a tenth of one 8-bit level; a picture's is
    # ~0.2, where the measure stays exact): an output clamped flat (an untrained student whose raw
    # output is all below 0) has a = 0, where the plain ratio's gradient is NaN, or ~1e11 with a tiny epsilon.
    spread = a.pow(2).sum(1).clamp_min(1e-6 * a.shape[1])
    return (a * b).sum(1) / torch.sqrt(spread * b.pow(2).sum(1)).clamp_min(1e-12)


def tone_loss(out: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """1 - tone correlation, batch mean: keeps the film's light and dark, leaves level and contrast free.

    Why a loss at all: the HED trunk's relu3_3 (the content layer) answers to edges and barely to
    tone, and neither it nor the Gram matrices say where light and dark go. Optimization from
    the photo keeps the photo's tones only because it starts there; from noise it paints
    uniformly (see models/optimize.py), and so does a net, which starts from nothing.
    """
    return (1.0 - tone_correlation(out, source)).mean()


# ---------------------------------------------------------------- the image losses together


def perceptual_terms(feats_y: dict, feats_x: dict, target: StyleTarget, y: torch.Tensor, raw: torch.Tensor,
                     x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every image-phase loss of output ``y`` (raw: before the clamp) for source ``x``, unweighted.

    The nets (models/train.py) and the optimization reference (models/optimize.py) minimise
    the same terms, so the reference measures how far a net is from the optimum of its own losses.
    """
    return {
        "content": content_loss(feats_y, feats_x),
        "style": style_loss(feats_y, target),
        "tv": tv_loss(y.float()),
        "range": range_loss(raw.float()),
        "tone": tone_loss(y, x),
    }


def weighted_total(terms: dict, weights: dict) -> torch.Tensor:
    """Sum of the weighted terms; a term without a weight is logged but not optimised."""
    total = 0.0
    for k, v in terms.items():
        if weights.get(k):
            total = total + weights[k] * v
    return total
