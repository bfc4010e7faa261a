"""Training of feed-forward style models (image phase, Johnson et al.).

One plain loop: random crops of content photos -> transform net -> VGG
features -> content + relative Gram style + TV losses -> Adam. The full
training state (weights, Adam moments, step, RNG, loss averages) is written
atomically every few minutes to ``OUT.state.safetensors`` so a killed run
resumes exactly where its last checkpoint left it (models/train_run.py); the
shipped checkpoint (fp16 weights + model card) is written at the end. The
video phase, which fine-tunes these nets, is models/train_video.py.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pipeline.errors import InputError

from . import losses as L
from .checkpoint import file_digest, save_style_model
from .data import CropSampler, center_crop, data_folders, list_images, load_rgb, portable_config
from .train_run import (Run, autocast, bf16_supported, loss_setup, now_utc, on_device, prepare_output, run_card,
                        sample_grid)
from .transformer import SIZES, TransformerConfig, TransformerNet, straight_through_clamp


@dataclass
class TrainConfig:
    style: str
    data: tuple[str, ...] | list[str] | str  # one or more folders of content images
    out: str
    size: str = "full"
    # Normalization layers of the net (models/transformer.py). A/B on an H200 (scripts/train_styles.py
    # --ab, 2026-12-04: starry_night and mosaic, batch 8 at 256 px, the same 114 s each, 530-680
    # steps, tone loss on; 50 test photos at 512 px), mean style x content loss: instance 0.758,
    # FRN 0.982, none 0.986; all kept the tone (>= 0.92). Instance norm's mosaic showed two faint
    # blobs at 660 steps, gone at 1570. Without the tone loss the first nets had no norm layers
    # because instance norm planted bubbles; the tone loss gives the net a reason to keep the
    # brightness instance norm throws away, instead of smuggling it through a spike.
    norm: str = "instance"
    image_size: int = 256
    # The painting's long side: strokes come out at its pixel scale. 512 is near the working width
    # (640), so a stroke covers about the share of the frame it covers of the painting; the first
    # nets used 320 with 128 px crops and painted strokes a fraction of the painting's.
    style_size: int = 512
    # The shipped nets: 1540-1570 steps of batch 8 at 256 px on an H200 (160 s each; see the README).
    batch_size: int = 8
    steps: int = 1600
    lr: float = 1e-3
    # linear ramp of the learning rate over the first steps: candy's first gradients are huge
    # (norm ~7000, style loss 16) and full-rate Adam steps killed every ReLU within 50 steps,
    # with two seeds (a flat output; see Run's collapse guard)
    lr_warmup: int = 200
    # "constant" (the shipped nets) or "cosine": the rate falls to 0 over the steps after warm-up
    lr_decay: str = "constant"
    # max global gradient norm (0: off): a guard against spikes. Typical norms are 40-130 with
    # the relative losses; a run at content weight 1 without it blew up at step ~450.
    grad_clip: float = 100.0
    # relative losses, tuned for the default net (no input skip): at 1, starry_night after
    # 1300 steps at 128 px cut the style loss of test photos 4.9x at content loss 1.07 ("an
    # unrelated photo" scores ~1.55); at 2 only 2.9x at 0.72. (0.5 suited the skip net.)
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 1e-1
    range_weight: float = 1.0  # penalty on raw outputs outside [0, 1] (pulls them back; the clamp passes inward gradients)
    # 1 - correlation of the blurred luminance of output and photo (losses.tone_loss). Without it
    # nothing in the losses says where light and dark go: optimized from noise, starry_night on a
    # test photo keeps a tone correlation of 0.30; at weight 1, 0.999 at the same style and
    # content loss (0.209 / 0.443 against 0.208 / 0.446): the film's lighting costs no style.
    tone_weight: float = 1.0
    bf16: bool | None = None  # None: on when the CPU/GPU supports it
    seed: int = 0
    checkpoint_every_s: float = 120.0
    checkpoint_every_steps: int = 0  # 0: by time only (tests set it)
    max_seconds: float = 0.0  # stop early after this much training time (0: run all steps); the card says where
    sample_every_s: float = 300.0
    vgg: str | None = None
    device: str = "cpu"
    # A per-frame checkpoint to start from (a warm start): one well-trained net of the same size
    # and norm, fine-tuned to the new painting, instead of random weights.
    init: str | None = None
    fields_that_must_match: tuple = field(default=("style", "size", "norm", "image_size", "batch_size", "seed"),
                                         repr=False)

    def card_fields(self) -> dict:
        d = asdict(self)
        d.pop("fields_that_must_match")
        return d


def warm_start(path: str | Path, config: TransformerConfig) -> TransformerNet:
    """The net of checkpoint ``path`` in training mode; it must have the architecture asked for."""
    from .checkpoint import load_style_model

    net, _ = load_style_model(path)
    if net.config != config:
        have, want = net.config.to_dict(), config.to_dict()
        diff = ", ".join(f"{k} {have[k]} (wanted {want[k]})" for k in want if have.get(k) != want[k])
        raise InputError(f"{path}: cannot start from this net: {diff}; train with its --size and --norm")
    return net.train()


def train(cfg: TrainConfig, *, restart: bool = False, progress: bool = True, log=print) -> Path:
    """Train (or resume) and write the style checkpoint to ``cfg.out``. Returns its path."""
    from tqdm import tqdm

    from pipeline.memtune import tune_malloc

    tune_malloc()
    files = list_images(cfg.data)
    style_img = load_rgb(cfg.style, max_side=cfg.style_size)
    if cfg.size not in SIZES:
        raise InputError(f"unknown model size {cfg.size!r}; choose from {', '.join(SIZES)}")
    out = prepare_output(cfg.out)
    torch.manual_seed(cfg.seed)
    device = cfg.device
    use_bf16 = bf16_supported(device) if cfg.bf16 is None else cfg.bf16
    vgg, weights, target = loss_setup(style_img, cfg.vgg, device)

    net = TransformerNet(replace(SIZES[cfg.size], norm=cfg.norm))
    if cfg.init:
        net = warm_start(cfg.init, net.config)
    net, vgg = on_device(device, net, vgg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = CropSampler(files, cfg.image_size, gen, device)

    style_hash = file_digest(cfg.style)
    identity = {k: getattr(cfg, k) for k in cfg.fields_that_must_match}
    identity["style"] = style_hash
    if cfg.init:  # a state from another start point must not be resumed
        identity["init"] = file_digest(cfg.init)
    run = Run(out, net, opt, gen, identity, restart=restart, log=log,
              every_s=cfg.checkpoint_every_s, every_steps=cfg.checkpoint_every_steps,
              grad_clip=cfg.grad_clip, lr_warmup=cfg.lr_warmup, lr_decay=cfg.lr_decay, total_steps=cfg.steps)

    photos = torch.stack([center_crop(load_rgb(p), cfg.image_size) for p in files[:3]]).to(device)
    samples_path = out.with_name(out.stem + ".samples.png")
    run.start_clock()
    last_sample = time.monotonic()
    loss_weights = {"content": cfg.content_weight, "style": cfg.style_weight, "tv": cfg.tv_weight,
                    "range": cfg.range_weight, "tone": cfg.tone_weight}

    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc=f"train {Path(cfg.style).stem}",
               dynamic_ncols=True)
    net.train()
    while run.step < cfg.steps and not run.out_of_time(cfg.max_seconds):
        x = sampler.sample(cfg.batch_size).to(device)
        with autocast(device, use_bf16):
            raw = net(x)
            y = straight_through_clamp(raw)
            feats_y = vgg(y)
            with torch.no_grad():
                feats_x = vgg(x)
        terms = L.perceptual_terms(feats_y, feats_x, target, y, raw, x)
        now = run.update(terms, L.weighted_total(terms, loss_weights), bar, output=raw)
        if now - last_sample >= cfg.sample_every_s:
            net.eval()
            sample_grid(net, photos, samples_path)
            net.train()
            last_sample = now
    bar.close()
    run.checkpoint()
    net.eval()
    sample_grid(net, photos, samples_path)

    card = {
        "name": out.stem,
        "kind": "style-transfer",
        "method": "per-frame (Johnson et al. 2016 feed-forward, image phase)",
        "style_image": Path(cfg.style).name,
        "style_image_sha256_16": style_hash,
        **({"init": {"name": Path(cfg.init).name, "sha256_16": file_digest(cfg.init)}} if cfg.init else {}),
        "training_data": {"folders": [f"{p.parent.name}/{p.name}" for p in data_folders(cfg.data)],
                          "images": len(files)},
        **run_card(run, use_bf16, weights, loss_weights),
        "config": portable_config(cfg.card_fields()),
        "trained_at": now_utc(),
    }
    return save_style_model(out, net, card)
