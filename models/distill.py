"""Distillation of a flow-free student (Chen et al., ECCV 2020): ``filmstyle distill STYLE``.

Two teachers of one style: A, a flow-guided render, and B, the per-frame net (it sees one frame).
A is the flow-recurrent net (it sees the previous output warped by optical flow), or
``flow-blend``: the render's flow-blend method over B's net, which keeps B's light and dark by
construction (the first flow-recurrent starry_night lost them, tone correlation 0.24, and a
student of it copied that: a flat blue relief). Where their outputs differ is where
flow made the video steady; the student, a small net that sees one frame and no flow, follows A,
``1 + alpha * |A - B|`` times harder there (``losses.distillation_loss``). A low-rank loss ties
K consecutive outputs together: warped into the last frame's view, the stack of outputs should
be as close to one picture as the stack of inputs is (``losses.low_rank_loss``). The perceptual
losses against the painting keep it painting. At render time it is the ``distilled`` method:
one frame in, no flow computed.

Training sequences are steady synthetic camera moves over the content photos, K frames each,
with exact flow (models/video_data.py: ``SyntheticSequences``). Teacher A runs over each
sequence as it does in a render (shot start, then the warped previous output, rounded to uint8
levels). The bookkeeping (resume, checkpoints, guards) is models/train_run.py's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from pipeline.errors import InputError

from . import losses as L
from .checkpoint import file_digest, load_style_model, save_style_model
from .data import data_folders, list_images, load_rgb, portable_config, resolve_recorded
from .recurrent import RECURRENT_CHANNELS, recurrent_input
from .train_run import Run, autocast, bf16_supported, loss_setup, now_utc, on_device, prepare_output, run_card
from .train_video import _quantize
from .transformer import SIZES, TransformerNet, straight_through_clamp
from .video_data import SyntheticSequences


#: ``teacher_flow`` naming the flow-blend render of teacher B instead of a flow-recurrent checkpoint.
FLOW_BLEND = "flow-blend"


@dataclass
class DistillConfig:
    teacher_flow: str  # teacher A: the style's flow-recurrent checkpoint, or FLOW_BLEND
    teacher_frame: str  # the style's per-frame checkpoint (teacher B)
    out: str
    data: tuple[str, ...] | list[str] | str | None = None  # content photos; None: teacher B's card's folders
    style: str | None = None  # the painting; None: the one teacher B's card names
    size: str = "student"
    norm: str | None = None  # the size's normalization ("none" for the student) unless named
    init: str | None = None  # a net of that size to start from (another style's student, an earlier run)
    frames: int = 4  # K: consecutive frames per sample (the paper: 3-5)
    image_size: int = 192
    batch_size: int = 2
    steps: int = 2000
    lr: float = 1e-3
    lr_warmup: int = 100
    lr_decay: str = "cosine"  # the rate falls to 0 by ``steps``: a student's last steps settle its texture
    grad_clip: float = 100.0
    distill_weight: float = 10.0  # squared error on [0, 1] pixels is small against the relative perceptual terms
    alpha: float = 10.0  # difference weighting; 0: plain distillation (ablation)
    low_rank_weight: float = 1.0  # 0: no low-rank loss (ablation)
    perceptual_scale: float = 1.0  # times teacher B's own loss weights
    bf16: bool | None = None
    seed: int = 0
    checkpoint_every_s: float = 120.0
    checkpoint_every_steps: int = 0
    max_seconds: float = 0.0
    vgg: str | None = None
    device: str = "cpu"

    def card_fields(self) -> dict:
        return asdict(self)


class RecurrentTeacher:
    """Teacher A, the flow-recurrent net, run over each sequence as a render runs it (shot start,
    then the warped previous output, rounded to uint8 levels); B beside it."""

    def __init__(self, a: TransformerNet, b: TransformerNet):
        self.a, self.b = a, b

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, backward: torch.Tensor, step_mask: torch.Tensor):
        """(N, K, 3, S, S) outputs of teacher A and of teacher B."""
        from pipeline.flow import warp_torch

        n, k = frames.shape[:2]
        outs_a, prev = [], None
        for i in range(k):
            x = frames[:, i]
            if prev is None:
                inp = recurrent_input(x, torch.zeros_like(x), torch.zeros_like(step_mask[:, i]))
            else:
                inp = recurrent_input(x, warp_torch(prev, backward[:, i]), step_mask[:, i])
            prev = _quantize(self.a(inp))
            outs_a.append(prev)
        out_b = self.b(frames.flatten(0, 1)).clamp(0, 1).view_as(frames)
        return torch.stack(outs_a, 1), out_b


def _teachers(cfg: DistillConfig, blend_teacher):
    """(teacher, card of B): ``teacher(frames, backward, step_mask)`` gives the (N, K, 3, S, S)
    outputs of A and B. ``blend_teacher(frame_ckpt, device)`` makes the FLOW_BLEND one (the render
    method lives in a layer above this one: methods.flow_blend.BlendTeacher)."""
    b, card_b = load_style_model(cfg.teacher_frame)
    if b.config.in_channels != 3:
        raise InputError(f"{cfg.teacher_frame}: teacher B must be a per-frame net (3 channels)")
    if cfg.teacher_flow == FLOW_BLEND:
        if blend_teacher is None:
            raise InputError("a flow-blend teacher A needs distill(..., blend_teacher=BlendTeacher)")
        return blend_teacher(cfg.teacher_frame, cfg.device), card_b
    a, card_a = load_style_model(cfg.teacher_flow)
    if a.config.in_channels != RECURRENT_CHANNELS:
        raise InputError(f"{cfg.teacher_flow}: teacher A must be a flow-recurrent net "
                         f"({RECURRENT_CHANNELS} channels), not {a.config.in_channels}, or {FLOW_BLEND}")
    if card_a.get("style_image_sha256_16") != card_b.get("style_image_sha256_16"):
        raise InputError("the two teachers were trained on different paintings")
    for net in (a, b):
        net.eval().requires_grad_(False)
    return RecurrentTeacher(*on_device(cfg.device, a, b)), card_b


def distill(cfg: DistillConfig, *, restart: bool = False, progress: bool = True, log=print,
            blend_teacher=None) -> Path:
    """Train the student and write its checkpoint to ``cfg.out``. Returns its path."""
    from tqdm import tqdm

    from pipeline.flow import warp_torch
    from pipeline.memtune import tune_malloc

    if cfg.frames < 2:
        raise InputError("distillation needs at least 2 consecutive frames (--frames)")
    if cfg.size not in SIZES:
        raise InputError(f"unknown model size {cfg.size!r}; choose from {', '.join(SIZES)}")
    tune_malloc()
    teacher, card_b = _teachers(cfg, blend_teacher)
    conf_b = card_b.get("config", {})
    if cfg.data is None:
        if not conf_b.get("data"):
            raise InputError("teacher B's card does not record its content photos; pass --data")
        data = [resolve_recorded(str(p), "content", "content data folder") for p in data_folders(conf_b["data"])]
    else:
        data = cfg.data
    files = list_images(data)
    style_path = cfg.style or resolve_recorded(conf_b.get("style") or card_b["style_image"], "styles", "style image")
    style_size = int(conf_b.get("style_size") or 512)
    loss_weights = {k: float(v) * cfg.perceptual_scale for k, v in card_b["losses"]["weights"].items()
                    if k in ("content", "style", "tv", "range", "tone")}
    loss_weights.update(distill=cfg.distill_weight, low_rank=cfg.low_rank_weight)
    out = prepare_output(cfg.out)
    torch.manual_seed(cfg.seed)
    device = cfg.device
    use_bf16 = bf16_supported(device) if cfg.bf16 is None else cfg.bf16
    vgg, weights, target = loss_setup(load_rgb(style_path, max_side=style_size), cfg.vgg, device)
    arch = SIZES[cfg.size] if cfg.norm is None else replace(SIZES[cfg.size], norm=cfg.norm)
    if cfg.init:
        from .train import warm_start

        student = warm_start(cfg.init, arch)
    else:
        student = TransformerNet(arch)
    student, vgg = on_device(device, student, vgg)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    sequences = SyntheticSequences(files, cfg.image_size)
    flow_id = FLOW_BLEND if cfg.teacher_flow == FLOW_BLEND else file_digest(cfg.teacher_flow)
    identity = {"teacher_flow": flow_id, "teacher_frame": file_digest(cfg.teacher_frame),
                "size": cfg.size, "norm": arch.norm, "frames": cfg.frames, "image_size": cfg.image_size,
                "batch_size": cfg.batch_size, "seed": cfg.seed}
    if cfg.init:  # a state from another start point must not be resumed
        identity["init"] = file_digest(cfg.init)
    run = Run(out, student, opt, gen, identity, restart=restart, log=log, every_s=cfg.checkpoint_every_s,
              every_steps=cfg.checkpoint_every_steps, grad_clip=cfg.grad_clip, lr_warmup=cfg.lr_warmup,
              lr_decay=cfg.lr_decay, total_steps=cfg.steps)
    run.start_clock()
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc=f"distill {Path(style_path).stem}",
               dynamic_ncols=True)
    student.train()
    while run.step < cfg.steps and not run.out_of_time(cfg.max_seconds):
        s = sequences.batch(gen, cfg.batch_size, cfg.frames).to(device)
        s.frames = _quantize(s.frames)  # 8-bit frames, as a film's are: the teachers' and the student's
        with autocast(device, use_bf16):
            out_a, out_b = teacher(s.frames, s.backward, s.step_mask)
            x = s.frames.flatten(0, 1)
            raw = student(x)
            y = straight_through_clamp(raw)
            feats_y = vgg(y)
            with torch.no_grad():
                feats_x = vgg(x)
        terms = L.perceptual_terms(feats_y, feats_x, target, y, raw, x)
        terms["distill"] = L.distillation_loss(y, out_a.flatten(0, 1), out_b.flatten(0, 1), cfg.alpha)
        y_seq = y.float().view_as(s.frames)
        to_last = s.to_last.flatten(0, 1)
        aligned_y = warp_torch(y_seq.flatten(0, 1), to_last).view_as(s.frames)
        aligned_x = warp_torch(s.frames.flatten(0, 1), to_last).view_as(s.frames)
        terms["low_rank"] = L.low_rank_loss(aligned_y, aligned_x, s.mask)
        run.update(terms, L.weighted_total(terms, loss_weights), bar, output=raw)
    bar.close()
    run.checkpoint()
    student.eval()
    card = {
        "name": out.stem,
        "kind": "style-transfer",
        "method": "distilled",
        "method_detail": ("Chen et al. 2020 optical-flow distillation: a one-frame student following the "
                          f"{'flow-blend' if cfg.teacher_flow == FLOW_BLEND else 'flow-recurrent'} teacher, "
                          "weighted by where it differs from the per-frame teacher, "
                          "with the low-rank loss over K flow-aligned frames and the perceptual losses"),
        "teachers": {"flow": ({"name": FLOW_BLEND, "method": "flow-blend over teacher B, default options, "
                                                             "exact flow"} if cfg.teacher_flow == FLOW_BLEND else
                              {"name": Path(cfg.teacher_flow).name, "sha256_16": identity["teacher_flow"]}),
                     "frame": {"name": Path(cfg.teacher_frame).name, "sha256_16": identity["teacher_frame"]}},
        **({"init": {"name": Path(cfg.init).name, "sha256_16": identity["init"]}} if cfg.init else {}),
        "style_image": Path(style_path).name,
        "style_image_sha256_16": card_b.get("style_image_sha256_16"),
        "training_data": {"folders": [f"{p.parent.name}/{p.name}" for p in data_folders(data)],
                          "images": len(files),
                          "sequences": f"synthetic steady camera moves, {cfg.frames} frames, exact flow"},
        **run_card(run, use_bf16, weights, loss_weights, alpha=cfg.alpha),
        "config": portable_config(dict(cfg.card_fields(), data=data)),
        "trained_at": now_utc(),
    }
    return save_style_model(out, student, card)
