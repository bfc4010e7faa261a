"""The video phase: fine-tuning a per-frame model on frame pairs, two ways.

- ``recurrent`` (Ruder et al. fast variant): a flow-recurrent net, which takes the warped previous
  output at inference (7-channel input: models/recurrent.py).
- ``reconet`` (Gao et al. 2018, two-frame synergic training): a net that takes one frame and no
  flow at inference (the ``stable`` method), made stable by the temporal losses in training only.

The training pairs are models/video_data.py's; the loop's bookkeeping (resume, checkpoints,
guards) is models/train_run.py's, as in the image phase (models/train.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import InputError

from . import losses as L
from .checkpoint import file_digest, save_style_model
from .data import data_folders, list_images, load_rgb, portable_config, resolve_recorded
from .recurrent import load_recurrent_init, recurrent_input
from .train_run import Run, autocast, bf16_supported, loss_setup, now_utc, on_device, prepare_output, run_card
from .transformer import straight_through_clamp
from .video_data import DEFAULT_VIDEOS, ClipPairs, PairSampler, list_videos


#: Output temporal weight, with content weight 1, in our relative units. Ruder et al.'s
#: conversion gives 2e3-1.6e4 (pixel MSE 50 on 0-255 against content 1 on raw relu3_3), but
#: that freezes a strongly styling net: the first starry_night (no normalisation), 400 steps at
#: 128 px from its image net, then the first 48 cockatoo frames at 480 px (Farneback warping error /
#: style loss against per-frame): weight 2e3 -> 0.03x / +203% (a near-still image), 200 -> 0.15x /
#: +62%, 50 -> 0.28x / +2%. The instance-norm nets take 20 (500 steps at 192 px, batch 4: the
#: stable nets' recipe and the flow-recurrent A/B of 2026-12-07, README "Temporal consistency").
DEFAULT_TEMPORAL_WEIGHT = 20.0
TEMPORAL_MODES = ("recurrent", "reconet")


@dataclass
class VideoTrainConfig:
    init: str  # image-phase checkpoint (3 channels), or a flow-recurrent one to continue from
    out: str
    temporal: str = "recurrent"  # or "reconet": a one-frame net (method ``stable``), see the module docstring
    data: tuple[str, ...] | list[str] | str | None = None  # content photos; None: the init card's folders
    videos: tuple[str, ...] | list[str] | str | None = None  # clip folders; None: ../shared/data/videos if present
    style: str | None = None  # None: the style image named in the init card
    style_size: int | None = None  # None: the init card's
    image_size: int = 192
    batch_size: int = 4
    steps: int = 500
    lr: float = 2e-4  # fine-tuning: below the image phase's 1e-3
    grad_clip: float = 0.0
    temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT  # output-level (ReCoNet, luminance-compensated)
    # Feature-level on encoder outputs (ReCoNet). None: off for recurrent, on for reconet, where it is
    # relative (divided by the features' energy, as every other loss here) so its weight is unit-free.
    temporal_feature_weight: float | None = None
    first_frame_fraction: float = 0.25  # samples trained as shot starts (zeros in the extra channels)
    # Recurrent A/B (starry_night, 500 steps, weight 20; Sintel warping error / style loss against
    # per-frame): neither 0.42x / +37%, both 0.47x / +20% (the net copies less of what it fed back)
    dark_fraction: float | None = None  # darkened pairs (video_data._darken); None: 0.2 recurrent, 0 reconet
    feedback_jitter: float = 0.3  # recurrent: the fed-back output's level and contrast jittered (_jitter)
    mix: tuple[float, float] = (3, 1)  # synthetic : real-clip pairs
    pairs_per_clip: int = 16  # real pairs cached in memory per clip
    flow_preset: str = "medium"  # DIS preset for the real clips (the renderer's default)
    content_weight: float | None = None  # None: the init card's weights
    style_weight: float | None = None
    tv_weight: float | None = None
    range_weight: float | None = None
    tone_weight: float | None = None
    bf16: bool | None = None
    seed: int = 0
    checkpoint_every_s: float = 120.0
    checkpoint_every_steps: int = 0
    max_seconds: float = 0.0  # as in TrainConfig
    vgg: str | None = None
    device: str = "cpu"

    def card_fields(self) -> dict:
        return asdict(self)


def _card_setting(value, card: dict, *path, what: str):
    """``value`` unless None, else the init card's setting at ``path``."""
    if value is not None:
        return value
    d = card
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    if d is None:
        raise InputError(f"the init checkpoint's card does not record its {what}; pass it explicitly")
    return d


def _video_folders(videos) -> list[Path]:
    if videos is None:
        return list_videos(DEFAULT_VIDEOS) if DEFAULT_VIDEOS.is_dir() else []
    return list_videos(videos)


def _resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 2, H, W) flow averaged down to ``size`` (h, w), vectors rescaled to the new pixel units."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="area")
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return out * scale


def _quantize(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] image rounded to uint8 levels, as the stylizer carries its previous output."""
    return torch.floor(img.float().clamp(0, 1) * 255.0 + 0.5) / 255.0


def _jitter(img: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Each image's contrast scaled by 1 +- ``amount`` about its mean and its level moved by
    +- ``amount`` / 2, drawn per sample.

    The net gets the jittered previous output, the temporal loss still asks for the true one, so
    the net learns to take the level from the frame and only the texture from what it fed back:
    an error in the fed-back light then shrinks from frame to frame instead of swinging.
    """
    if not amount:
        return img
    n = img.shape[0]
    contrast = 1.0 + amount * (2.0 * torch.rand(n, generator=gen) - 1.0)
    shift = 0.5 * amount * (2.0 * torch.rand(n, generator=gen) - 1.0)
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + contrast.to(img).view(-1, 1, 1, 1) * (img - mean) + shift.to(img).view(-1, 1, 1, 1)
    return out.clamp(0, 1)


def _load_init(cfg: VideoTrainConfig):
    from .checkpoint import load_style_model

    if cfg.temporal == "recurrent":
        return load_recurrent_init(cfg.init)
    net, card = load_style_model(cfg.init)
    if net.config.in_channels != 3:
        raise InputError(f"{cfg.init}: a {net.config.in_channels}-channel model cannot initialise a one-frame "
                         "(reconet) net; start from a per-frame checkpoint")
    return net.train(), card


def train_video(cfg: VideoTrainConfig, *, restart: bool = False, progress: bool = True, log=print) -> Path:
    """Fine-tune a per-frame model on frame pairs (``cfg.temporal``: see the module). Returns the checkpoint."""
    from tqdm import tqdm

    from pipeline.memtune import tune_malloc

    if cfg.temporal not in TEMPORAL_MODES:
        raise InputError(f"unknown temporal training {cfg.temporal!r}; choose {' or '.join(TEMPORAL_MODES)}")
    tune_malloc()
    net, init_card = _load_init(cfg)
    init_hash = file_digest(cfg.init)
    data = _card_setting(cfg.data, init_card, "config", "data", what="content data folders")
    if cfg.data is None:  # the card's folders are relative to ../shared/data/content
        data = [resolve_recorded(str(p), "content", "content data folder") for p in data_folders(data)]
    files = list_images(data)
    style_path = _card_setting(cfg.style, init_card, "config", "style", what="style image")
    if cfg.style is None:
        style_path = resolve_recorded(style_path, "styles", "style image")
    style_size = _card_setting(cfg.style_size, init_card, "config", "style_size", what="style size")
    style_img = load_rgb(style_path, max_side=style_size)
    loss_weights = {k: _card_setting(getattr(cfg, f"{k}_weight"), init_card, "losses", "weights", k,
                                     what=f"{k} loss weight")
                    for k in ("content", "style", "tv", "range")}
    # cards written before the tone loss existed trained without it
    loss_weights["tone"] = cfg.tone_weight if cfg.tone_weight is not None else \
        init_card.get("losses", {}).get("weights", {}).get("tone", 0.0)
    loss_weights["temporal"] = cfg.temporal_weight
    loss_weights["temporal_feature"] = (cfg.temporal_feature_weight if cfg.temporal_feature_weight is not None
                                        else cfg.temporal_weight if cfg.temporal == "reconet" else 0.0)
    if not 0.0 <= cfg.first_frame_fraction <= 1.0:
        raise InputError(f"first_frame_fraction must be in [0, 1], not {cfg.first_frame_fraction}")
    out = prepare_output(cfg.out)
    videos = _video_folders(cfg.videos)
    torch.manual_seed(cfg.seed)
    device = cfg.device
    use_bf16 = bf16_supported(device) if cfg.bf16 is None else cfg.bf16
    vgg, weights, target = loss_setup(style_img, cfg.vgg, device)
    if weights.source != init_card.get("loss_network", weights.source):
        log(f"note: the init model was trained with {init_card['loss_network']}, this run uses {weights.source}")

    net, vgg = on_device(device, net, vgg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    clips = None
    if videos and cfg.mix[1] > 0:
        clips = ClipPairs(videos, cfg.image_size, pairs_per_clip=cfg.pairs_per_clip, seed=cfg.seed,
                          flow_preset=cfg.flow_preset, log=log)
    elif cfg.mix[1] > 0:
        log("no real clips found: training on synthetic motion only")
    dark = cfg.dark_fraction if cfg.dark_fraction is not None else 0.2 if cfg.temporal == "recurrent" else 0.0
    sampler = PairSampler(files, cfg.image_size, gen, clips=clips, mix=tuple(cfg.mix), dark_fraction=dark)

    style_hash = file_digest(style_path)
    identity = {"init": init_hash, "style": style_hash, "image_size": cfg.image_size,
                "batch_size": cfg.batch_size, "seed": cfg.seed, "mix": list(cfg.mix),
                "first_frame_fraction": cfg.first_frame_fraction,
                **({"dark_fraction": dark} if dark else {}),
                **({"feedback_jitter": cfg.feedback_jitter} if cfg.feedback_jitter and cfg.temporal == "recurrent" else {}),
                "videos": [p.name for p in videos], "pairs_per_clip": cfg.pairs_per_clip, "temporal": cfg.temporal}
    run = Run(out, net, opt, gen, identity, restart=restart, log=log,
              every_s=cfg.checkpoint_every_s, every_steps=cfg.checkpoint_every_steps,
              grad_clip=cfg.grad_clip)
    run.start_clock()

    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress,
               desc=f"train --video {Path(style_path).stem}", dynamic_ncols=True)
    step = _recurrent_step if cfg.temporal == "recurrent" else _reconet_step
    net.train()
    while run.step < cfg.steps and not run.out_of_time(cfg.max_seconds):
        b = sampler.sample(cfg.batch_size).to(device)
        terms, raw = step(net, vgg, target, b, cfg, gen, device, use_bf16, loss_weights)
        run.update(terms, L.weighted_total(terms, loss_weights), bar, output=raw)
    bar.close()
    run.checkpoint()
    net.eval()

    card = {
        "name": out.stem,
        "kind": "style-transfer",
        **METHOD_CARDS[cfg.temporal],
        "init_checkpoint": Path(cfg.init).name,
        "init_checkpoint_sha256_16": init_hash,
        "style_image": Path(style_path).name,
        "style_image_sha256_16": style_hash,
        "training_data": {
            "folders": [f"{p.parent.name}/{p.name}" for p in data_folders(data)],
            "images": len(files),
            "videos": clips.clips if clips is not None else [],
            "video_pairs": len(clips) if clips is not None else 0,
            "mix": {"synthetic": cfg.mix[0], "video": cfg.mix[1] if clips is not None else 0},
            "synthetic_motion": "affine camera (shift <= 10 px @256, zoom 0.95-1.05, rotation <= 3 deg) "
                                "+ pasted moving patch; exact flow",
            "video_flow": f"DIS {cfg.flow_preset} + reliability mask",
        },
        **({"first_frame_fraction": cfg.first_frame_fraction} if cfg.temporal == "recurrent" else {}),
        **run_card(run, use_bf16, weights, loss_weights, temporal_normalization=(
            "output: squared error summed over RGB, mean over pixels and batch (pixels in [0, 1]); "
            "feature: mean over C*H*W and batch" + (", divided by the features' mean energy"
                                                    if cfg.temporal == "reconet" else ""))),
        # Resolved settings, so this checkpoint can itself be the init of a further run.
        "config": portable_config(dict(cfg.card_fields(), data=data, style=style_path, style_size=style_size,
                                       dark_fraction=dark)),
        "trained_at": now_utc(),
    }
    return save_style_model(out, net, card)


METHOD_CARDS = {
    "recurrent": {"method": "flow-recurrent",
                  "method_detail": ("Ruder et al. fast variant: 7-channel input [frame, mask * warped previous "
                                    "output, mask], fine-tuned from a per-frame model; ReCoNet output temporal "
                                    "loss with the luminance constraint")},
    "reconet": {"method": "stable",
                "method_detail": ("ReCoNet (Gao et al. 2018) two-frame synergic training, fine-tuned from a "
                                  "per-frame model: both frames through the net, perceptual losses on each, the "
                                  "output temporal loss with the luminance constraint and the feature temporal "
                                  "loss on the encoder output; one frame in, no flow at inference")},
}


def _recurrent_step(net, vgg, target, b, cfg, gen, device, use_bf16, loss_weights):
    """O_{t-1} = net([I_{t-1}, 0, 0]) (shot-start mode, no gradient, rounded to uint8 levels as at
    render time), then O_t = net([I_t, M * W(O_{t-1}), M]) with W the backward warp and M frame t's
    reliability; losses on O_t: perceptual, ReCoNet's luminance-compensated output temporal loss
    (and optionally the feature one). A fraction of the samples runs O_t in shot-start mode
    (M = 0, no temporal loss) so the net keeps working at cuts. With ``feedback_jitter`` the net is
    fed a jittered W(O_{t-1}) while the temporal loss compares with the true one."""
    from pipeline.flow import warp_torch

    zeros = torch.zeros_like(b.mask)
    with torch.no_grad(), autocast(device, use_bf16):
        x_prev = recurrent_input(b.prev, torch.zeros_like(b.prev), zeros)
        f_prev = net.encode(x_prev)
        out_prev = _quantize(net.decode(f_prev, x_prev))
    warped_prev = warp_torch(out_prev, b.backward)
    recurrent = (torch.rand(b.mask.shape[0], generator=gen) >= cfg.first_frame_fraction)
    mask = b.mask * recurrent.to(b.mask).view(-1, 1, 1, 1)
    with autocast(device, use_bf16):
        x_cur = recurrent_input(b.cur, _jitter(warped_prev, cfg.feedback_jitter, gen), mask)
        f_cur = net.encode(x_cur)
        raw = net.decode(f_cur, x_cur)
        y = straight_through_clamp(raw)
        feats_y = vgg(y)
        with torch.no_grad():
            feats_x = vgg(b.cur)
    terms = L.perceptual_terms(feats_y, feats_x, target, y, raw, b.cur)
    terms["temporal"] = L.temporal_output_loss(y.float(), warped_prev, b.cur, warp_torch(b.prev, b.backward), mask)
    if loss_weights["temporal_feature"]:
        flow = _resize_flow(b.backward, tuple(f_cur.shape[-2:]))
        terms["temporal_feature"] = L.temporal_feature_loss(f_cur, warp_torch(f_prev.float(), flow), mask)
    return terms, raw


def _reconet_step(net, vgg, target, b, cfg, gen, device, use_bf16, loss_weights):
    """Both frames through the net in one batch, with gradient (two-frame synergic training): the
    perceptual losses on each frame, averaged; the output temporal loss (luminance constraint)
    between O_t and W(O_{t-1}); the feature temporal loss between the encoder outputs, with the
    flow resized and rescaled to their resolution, relative to their energy."""
    from pipeline.flow import warp_torch

    n = b.cur.shape[0]
    x = torch.cat([b.prev, b.cur])
    with autocast(device, use_bf16):
        f = net.encode(x)
        raw = net.decode(f, x)
        y = straight_through_clamp(raw)
        feats_y = vgg(y)
        with torch.no_grad():
            feats_x = vgg(x)
    terms = L.perceptual_terms(feats_y, feats_x, target, y, raw, x)
    y_prev, y_cur = y.float()[:n], y.float()[n:]
    terms["temporal"] = L.temporal_output_loss(y_cur, warp_torch(y_prev, b.backward), b.cur,
                                               warp_torch(b.prev, b.backward), b.mask)
    f_prev, f_cur = f.float()[:n], f.float()[n:]
    flow = _resize_flow(b.backward, tuple(f_cur.shape[-2:]))
    energy = f_cur.detach().pow(2).mean().clamp_min(1e-8)
    terms["temporal_feature"] = L.temporal_feature_loss(f_cur, warp_torch(f_prev, flow), b.mask) / energy
    return terms, raw
