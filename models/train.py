"""Training of feed-forward style models (image phase, Johnson et al.).

One plain loop: random crops of content photos -> transform net -> VGG
features -> content + relative Gram style + TV losses -> Adam. The full
training state (weights, Adam moments, step, RNG, loss averages) is written
atomically every few minutes to ``OUT.state.safetensors`` so a killed run
resumes exactly where its last checkpoint left it; the shipped checkpoint
(fp16 weights + model card) is written at the end.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pipeline.errors import FilmstyleError, InputError

from . import losses as L
from .checkpoint import file_digest, save_style_model
from .transformer import SIZES, TransformerNet, straight_through_clamp
from .vgg import find_weights, loss_network

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
#: ../shared/data beside the repository: where a card's relative paths point.
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


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
    # with two seeds (a flat output; see _Run's collapse guard)
    lr_warmup: int = 200
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
    fields_that_must_match: tuple = field(default=("style", "size", "norm", "image_size", "batch_size", "seed"),
                                         repr=False)

    def card_fields(self) -> dict:
        d = asdict(self)
        d.pop("fields_that_must_match")
        return d


def load_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if max_side and max(im.size) > max_side:
                s = max_side / max(im.size)
                im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
            return np.asarray(im).copy()
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)


def portable(path: str | Path, keep: int = 1) -> str:
    """The last ``keep`` parts of a path: what a model card records (never the machine's layout)."""
    return "/".join(Path(path).parts[-keep:])


def portable_config(d: dict) -> dict:
    """A training config for a card: the painting by file name, data folders by their last two parts."""
    d = dict(d)
    for k in ("style", "init", "out", "vgg"):
        if d.get(k):
            d[k] = portable(d[k])
    if d.get("data"):
        d["data"] = [portable(p, 2) for p in data_folders(d["data"])]
    if d.get("videos"):
        d["videos"] = [portable(p, 2) for p in data_folders(d["videos"])]
    return d


def resolve_recorded(path: str, under: str, what: str) -> str:
    """A path from a card: as is where it exists, else under ../shared/data/``under``; else a clear error."""
    if Path(path).exists():
        return path
    candidate = DATA_ROOT / under / path
    if candidate.exists():
        return str(candidate)
    raise InputError(f"the init checkpoint's card records its {what} as {path!r} (looked for it here and in "
                     f"{DATA_ROOT / under}); pass it explicitly")


def data_folders(data) -> list[Path]:
    return [Path(d) for d in ([data] if isinstance(data, (str, Path)) else data)]


def list_images(data) -> list[Path]:
    """All images below one or more folders, in a stable order."""
    files: list[Path] = []
    for folder in data_folders(data):
        if not folder.is_dir():
            raise InputError(f"{folder}: data folder not found")
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise InputError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the data folder")
        files += found
    return files


class CropSampler:
    """Random square crops, drawn only from a torch.Generator so that resuming is exact.

    The photos are decoded once and kept (uint8) on the training device: a GPU step takes
    milliseconds, and decoding JPEGs for every crop would leave it waiting on the CPU.
    """

    def __init__(self, files: list[Path], size: int, generator: torch.Generator, device: str = "cpu"):
        self.files, self.size, self.g = files, size, generator
        self.images = [torch.from_numpy(load_rgb(p)).permute(2, 0, 1).contiguous().to(device) for p in files]

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.g))

    def sample(self, batch: int) -> torch.Tensor:
        out = []
        for _ in range(batch):
            idx = int(torch.randint(len(self.files), (), generator=self.g))
            img = self.images[idx]
            h, w = img.shape[-2:]
            # Scale so the short side is 1.0-1.3x the crop: crops see objects at varied scales.
            scale = self.size * (1.0 + 0.3 * self._rand()) / min(h, w)
            nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            t = F.interpolate(img[None].float().div_(255.0), size=(nh, nw), mode="bilinear", antialias=True,
                              align_corners=False)[0]
            y = int(self._rand() * (nh - self.size + 1))
            x = int(self._rand() * (nw - self.size + 1))
            crop = t[:, y:y + self.size, x:x + self.size]
            if self._rand() < 0.5:
                crop = crop.flip(-1)
            out.append(crop)
        return torch.stack(out).clamp(0, 1)


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:  # AVX-512 BF16 / AMX make bf16 convolutions faster than fp32 on CPU
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except Exception:
        return False


# ---------------------------------------------------------------- training state


def _state_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".state.safetensors")


def save_state(path: Path, net, opt, step: int, gen: torch.Generator, meta: dict) -> None:
    """Weights, Adam moments, RNG and step in one safetensors file (no pickle), atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).cpu().contiguous()
    tensors["rng.torch"] = gen.get_state()
    meta = dict(meta, step=step, param_groups=opt_state["param_groups"])
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={"filmstyle.train": json.dumps(meta)})
    os.replace(tmp, path)


def load_state(path: Path, net, opt, gen: torch.Generator) -> tuple[int, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["filmstyle.train"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng.torch"])
    return int(meta["step"]), meta


# ---------------------------------------------------------------- the loop


def sample_grid(net, photos: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        out = net.stylize(photos).clamp(0, 1)
    grid = torch.cat([torch.cat(list(photos), dim=2), torch.cat(list(out), dim=2)], dim=1)
    img = (grid.permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8)
    tmp = path.with_name(path.name + ".part.png")
    Image.fromarray(img).save(tmp)
    os.replace(tmp, path)


def _center_crop(img: np.ndarray, size: int) -> torch.Tensor:
    t = to_tensor(img)[None]
    s = size / min(t.shape[-2:])
    # Explicit output size: a scale factor can floor the short side to size - 1 (321 * 192/321 = 191.99).
    h, w = (max(size, round(v * s)) for v in t.shape[-2:])
    t = F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    y, x = (h - size) // 2, (w - size) // 2
    return t[0, :, y:y + size, x:x + size].clamp(0, 1)


def _prepare_output(out: str | Path) -> Path:
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out.parent}: cannot create output folder ({e.strerror})") from None
    return out


def _loss_setup(style_img: np.ndarray, vgg_path: str | None, device: str):
    """The VGG loss network, its weights' origin and the style target (Gram matrices)."""
    weights = find_weights(vgg_path)
    vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS))), weights).to(device)
    with torch.no_grad():
        target = L.StyleTarget(vgg(to_tensor(style_img)[None].to(device)))
    return vgg, weights, target


class TrainingDiverged(FilmstyleError):
    """The loss blew up and rolling back to the last healthy checkpoint at a lower rate did not help."""


class TrainingCollapsed(FilmstyleError):
    """The net's output went flat: its ReLUs died and no gradient can bring them back."""


class _Run:
    """What every training loop shares: resume, the optimizer step, loss averages, timed checkpoints.

    Divergence guard: full-size nets without normalization layers blew up late in several runs
    (the loss rising from ~2 to 1e3-1e9 within a few dozen steps). A checkpoint is only written
    while the loss average is near its best, and when the average exceeds ``BLOW_UP`` times its
    best the run reloads the last checkpoint, halves the learning rate and goes on.

    Collapse guard: one candy run's output went to a single flat colour within its first 50
    steps (every ReLU before the head dead; only the head's bias still learns) and would have
    trained on for half an hour. The spatial spread of the output is tracked; a flat average
    after the warm-up stops the run with an error.
    """

    WARMUP = 100  # steps before the best average counts (the first averages are from noise)
    BLOW_UP = 4.0  # average total loss over its best: diverged
    HEALTHY = 1.5  # average and current total under this many times the best: safe to checkpoint
    MAX_ROLLBACKS = 3
    FLAT = 1e-3  # average spatial std of the output (pixels in [0, 1]) below which it is flat

    def __init__(self, out: Path, net, opt, gen: torch.Generator, identity: dict, *, restart: bool, log,
                 every_s: float, every_steps: int, grad_clip: float = 0.0, lr_warmup: int = 0):
        self.net, self.opt, self.gen, self.identity = net, opt, gen, identity
        self.grad_clip, self.lr_warmup = grad_clip, lr_warmup
        self.every_s, self.every_steps = every_s, every_steps
        self.state_path = _state_path(out)
        self.step, self.history = 0, {"elapsed_s": 0.0, "ema": {}}
        if self.state_path.exists() and not restart:
            self.step, meta = load_state(self.state_path, net, opt, gen)
            if meta.get("identity") != identity:
                raise InputError(
                    f"{self.state_path}: a training state for different settings exists "
                    f"({meta.get('identity')}); pass --restart to discard it"
                )
            self.history = meta["history"]
            log(f"resuming from step {self.step} ({self.state_path})")
        self.ema: dict = self.history["ema"]
        self.log = log

    def start_clock(self) -> None:
        self.t_start = time.monotonic() - self.history["elapsed_s"]
        self.last_ckpt = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def out_of_time(self, limit: float) -> bool:
        return bool(limit) and self.elapsed() >= limit

    def checkpoint(self) -> None:
        self.history["elapsed_s"] = self.elapsed()
        save_state(self.state_path, self.net, self.opt, self.step, self.gen,
                   {"identity": self.identity, "history": self.history})

    def update(self, terms: dict, total: torch.Tensor, bar, output: torch.Tensor | None = None) -> float:
        """One optimizer step on ``total``; averages, progress and a checkpoint when due. Returns now.

        ``output``: the net's (N, C, H, W) output, for the collapse guard.
        """
        if output is not None:
            terms = dict(terms, output_std=output.detach().float().flatten(2).std(dim=2).mean())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        # The norm is tracked always (it is the first sign of a run going unstable), clipped when asked.
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip or float("inf"))
        terms = dict(terms, grad_norm=norm)
        # Warm-up scales the rate for this step only: the groups keep the real rate (which a
        # rollback halves and a checkpoint saves).
        ramp = min(1.0, (self.step + 1) / self.lr_warmup) if self.lr_warmup else 1.0
        rates = [g["lr"] for g in self.opt.param_groups]
        for g in self.opt.param_groups:
            g["lr"] *= ramp
        self.opt.step()
        for g, lr in zip(self.opt.param_groups, rates):
            g["lr"] = lr
        self.step += 1
        named = dict(terms, total=total)
        values = torch.stack([v.detach().float().reshape(()) for v in named.values()]).tolist()  # one sync
        for k, v in zip(named, values):
            self.ema[k] = v if k not in self.ema else 0.98 * self.ema[k] + 0.02 * v
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in self.ema.items()})
        now = time.monotonic()
        best = self.history.get("best_total_ema")
        if self.step >= self.WARMUP:
            if self.ema.get("output_std", 1.0) < self.FLAT:
                raise TrainingCollapsed(
                    f"the net's output went flat by step {self.step} (dead ReLUs): it cannot learn from here; "
                    f"start again (--restart) with another --seed or a lower --lr")
            if best is not None and not self.ema["total"] <= self.BLOW_UP * best:  # "not <=": NaN too
                self._roll_back()
                bar.n = self.step
                return now
            self.history["best_total_ema"] = min(self.ema["total"], best if best is not None else float("inf"))
        due = (self.every_steps and self.step % self.every_steps == 0) or (
            not self.every_steps and now - self.last_ckpt >= self.every_s)
        if due and self._healthy(values[-1]):
            self.checkpoint()
            self.last_ckpt = now
        return now

    def _healthy(self, total: float) -> bool:
        best = self.history.get("best_total_ema")
        return best is None or (self.ema["total"] <= self.HEALTHY * best and total <= 3 * self.HEALTHY * best)

    def _roll_back(self) -> None:
        at, ema = self.step, self.ema["total"]
        rollbacks = self.history.get("rollbacks", [])
        if len(rollbacks) >= self.MAX_ROLLBACKS or not self.state_path.exists():
            raise TrainingDiverged(
                f"training diverged at step {at} (loss average {ema:.3g}, best {self.history.get('best_total_ema'):.3g})"
                + (f" after {len(rollbacks)} rollbacks" if rollbacks else ", before the first checkpoint")
                + f"; {self.state_path} holds the last healthy state: resume with a lower --lr")
        self.step, meta = load_state(self.state_path, self.net, self.opt, self.gen)
        self.history = meta["history"]
        self.ema = self.history["ema"]
        for group in self.opt.param_groups:
            group["lr"] *= 0.5
        lr = self.opt.param_groups[0]["lr"]
        self.history["rollbacks"] = rollbacks + [{"at_step": at, "loss_average": ema, "to_step": self.step,
                                                  "new_lr": lr}]
        self.log(f"loss diverged at step {at} (average {ema:.3g}): back to step {self.step}, learning rate {lr:g}")
        self.checkpoint()  # the lower rate survives a restart


def _autocast(device: str, enabled: bool):
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=enabled)


def _run_card(run, use_bf16: bool, weights, loss_weights: dict, **loss_notes) -> dict:
    """Model-card fields every training phase records: steps, time, precision, loss network, losses."""
    return {
        "steps": run.step,
        "train_time_s": round(run.elapsed(), 1),
        "bf16_autocast": use_bf16,
        "rollbacks": run.history.get("rollbacks", []),  # divergences survived (see _Run)
        "loss_network": weights.source,
        "losses": {
            "content_layers": list(L.CONTENT_LAYERS),
            "style_layers": list(L.STYLE_LAYERS),
            "normalization": NORMALIZATION,
            **loss_notes,
            "weights": loss_weights,
            "final_ema": {k: round(v, 5) for k, v in run.ema.items()},
        },
    }


def train(cfg: TrainConfig, *, restart: bool = False, progress: bool = True, log=print) -> Path:
    """Train (or resume) and write the style checkpoint to ``cfg.out``. Returns its path."""
    from tqdm import tqdm

    from pipeline.memtune import tune_malloc

    tune_malloc()
    files = list_images(cfg.data)
    style_img = load_rgb(cfg.style, max_side=cfg.style_size)
    if cfg.size not in SIZES:
        raise InputError(f"unknown model size {cfg.size!r}; choose from {', '.join(SIZES)}")
    out = _prepare_output(cfg.out)
    torch.manual_seed(cfg.seed)
    device = cfg.device
    use_bf16 = bf16_supported(device) if cfg.bf16 is None else cfg.bf16
    vgg, weights, target = _loss_setup(style_img, cfg.vgg, device)

    net = TransformerNet(replace(SIZES[cfg.size], norm=cfg.norm)).to(device)
    if device.startswith("cuda"):  # cuDNN's fastest layout and algorithms for these convolutions
        torch.backends.cudnn.benchmark = True
        net, vgg = net.to(memory_format=torch.channels_last), vgg.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = CropSampler(files, cfg.image_size, gen, device)

    style_hash = file_digest(cfg.style)
    identity = {k: getattr(cfg, k) for k in cfg.fields_that_must_match}
    identity["style"] = style_hash
    run = _Run(out, net, opt, gen, identity, restart=restart, log=log,
               every_s=cfg.checkpoint_every_s, every_steps=cfg.checkpoint_every_steps,
               grad_clip=cfg.grad_clip, lr_warmup=cfg.lr_warmup)

    photos = torch.stack([_center_crop(load_rgb(p), cfg.image_size) for p in files[:3]]).to(device)
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
        with _autocast(device, use_bf16):
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
        "training_data": {"folders": [f"{p.parent.name}/{p.name}" for p in data_folders(cfg.data)],
                          "images": len(files)},
        **_run_card(run, use_bf16, weights, loss_weights),
        "config": portable_config(cfg.card_fields()),
        "trained_at": _now_utc(),
    }
    return save_style_model(out, net, card)


NORMALIZATION = "relative: per-layer squared error / target energy; Gram normalized by C*H*W"


def _now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- video phase (flow-recurrent)

#: Output temporal weight, with content weight 1, in our relative units. Ruder et al.'s
#: conversion gives 2e3-1.6e4 (pixel MSE 50 on 0-255 against content 1 on raw relu3_3), but
#: that freezes a strongly styling net: starry_night, 400 steps at 128 px from its image net,
#: then the first 48 cockatoo frames at 480 px (Farneback warping error / style loss against
#: per-frame): weight 2e3 -> 0.03x / +203% (a near-still image), 200 -> 0.15x / +62%,
#: 50 -> 0.28x / +2%. Targets: at most 0.5x and +15%.
DEFAULT_TEMPORAL_WEIGHT = 50.0
RECURRENT_CHANNELS = 7  # frame, warped previous output, mask


@dataclass
class VideoTrainConfig:
    init: str  # image-phase checkpoint (3 channels), or a flow-recurrent one to continue from
    out: str
    data: tuple[str, ...] | list[str] | str | None = None  # content photos; None: the init card's folders
    videos: tuple[str, ...] | list[str] | str | None = None  # clip folders; None: ../shared/data/videos if present
    style: str | None = None  # None: the style image named in the init card
    style_size: int | None = None  # None: the init card's
    image_size: int = 256
    batch_size: int = 4
    steps: int = 2000
    lr: float = 2e-4  # fine-tuning: below the image phase's 1e-3
    grad_clip: float = 0.0
    temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT  # output-level (ReCoNet, luminance-compensated)
    temporal_feature_weight: float = 0.0  # feature-level on encoder outputs (ReCoNet); off by default
    first_frame_fraction: float = 0.25  # samples trained as shot starts (zeros in the extra channels)
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
    from .video_data import DEFAULT_VIDEOS, list_videos

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


def train_video(cfg: VideoTrainConfig, *, restart: bool = False, progress: bool = True, log=print) -> Path:
    """Fine-tune a per-frame model into a flow-recurrent one (Ruder et al. fast variant). Returns the checkpoint.

    Each step: O_{t-1} = net([I_{t-1}, 0, 0]) (shot-start mode, no gradient,
    rounded to uint8 levels as at render time), then
    O_t = net([I_t, M * W(O_{t-1}), M]) with W the backward warp and M frame
    t's reliability; losses on O_t: content + style (+ TV, range) as in the
    image phase, plus ReCoNet's luminance-compensated output temporal loss
    (and optionally the feature-level one). A fraction of the samples runs
    O_t in shot-start mode (M = 0) so the net keeps working at cuts.
    """
    from tqdm import tqdm

    from pipeline.flow import warp_torch
    from pipeline.memtune import tune_malloc

    from .video_data import ClipPairs, PairSampler, recurrent_input

    tune_malloc()
    net, init_card = load_recurrent_init(cfg.init)
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
    loss_weights["temporal_feature"] = cfg.temporal_feature_weight
    if not 0.0 <= cfg.first_frame_fraction <= 1.0:
        raise InputError(f"first_frame_fraction must be in [0, 1], not {cfg.first_frame_fraction}")
    out = _prepare_output(cfg.out)
    videos = _video_folders(cfg.videos)
    torch.manual_seed(cfg.seed)
    device = cfg.device
    use_bf16 = bf16_supported(device) if cfg.bf16 is None else cfg.bf16
    vgg, weights, target = _loss_setup(style_img, cfg.vgg, device)
    if weights.source != init_card.get("loss_network", weights.source):
        log(f"note: the init model was trained with {init_card['loss_network']}, this run uses {weights.source}")

    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    clips = None
    if videos and cfg.mix[1] > 0:
        clips = ClipPairs(videos, cfg.image_size, pairs_per_clip=cfg.pairs_per_clip, seed=cfg.seed,
                          flow_preset=cfg.flow_preset, log=log)
    elif cfg.mix[1] > 0:
        log("no real clips found: training on synthetic motion only")
    sampler = PairSampler(files, cfg.image_size, gen, clips=clips, mix=tuple(cfg.mix))

    style_hash = file_digest(style_path)
    identity = {"init": init_hash, "style": style_hash, "image_size": cfg.image_size,
                "batch_size": cfg.batch_size, "seed": cfg.seed, "mix": list(cfg.mix),
                "first_frame_fraction": cfg.first_frame_fraction,
                "videos": [p.name for p in videos], "pairs_per_clip": cfg.pairs_per_clip}
    run = _Run(out, net, opt, gen, identity, restart=restart, log=log,
               every_s=cfg.checkpoint_every_s, every_steps=cfg.checkpoint_every_steps,
               grad_clip=cfg.grad_clip)
    run.start_clock()

    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress,
               desc=f"train --video {Path(style_path).stem}", dynamic_ncols=True)
    net.train()
    while run.step < cfg.steps and not run.out_of_time(cfg.max_seconds):
        b = sampler.sample(cfg.batch_size).to(device)
        zeros = torch.zeros_like(b.mask)
        with torch.no_grad(), _autocast(device, use_bf16):
            x_prev = recurrent_input(b.prev, torch.zeros_like(b.prev), zeros)
            f_prev = net.encode(x_prev)
            out_prev = _quantize(net.decode(f_prev, x_prev))
        warped_prev = warp_torch(out_prev, b.backward)
        # Shot-start samples see zeros in the extra channels and get no temporal loss.
        recurrent = (torch.rand(b.mask.shape[0], generator=gen) >= cfg.first_frame_fraction)
        mask = b.mask * recurrent.to(b.mask).view(-1, 1, 1, 1)
        with _autocast(device, use_bf16):
            x_cur = recurrent_input(b.cur, warped_prev, mask)
            f_cur = net.encode(x_cur)
            raw = net.decode(f_cur, x_cur)
            y = straight_through_clamp(raw)
            feats_y = vgg(y)
            with torch.no_grad():
                feats_x = vgg(b.cur)
        terms = L.perceptual_terms(feats_y, feats_x, target, y, raw, b.cur)
        terms["temporal"] = L.temporal_output_loss(y.float(), warped_prev, b.cur,
                                                   warp_torch(b.prev, b.backward), mask)
        if cfg.temporal_feature_weight:
            flow = _resize_flow(b.backward, tuple(f_cur.shape[-2:]))
            terms["temporal_feature"] = L.temporal_feature_loss(f_cur, warp_torch(f_prev.float(), flow), mask)
        run.update(terms, L.weighted_total(terms, loss_weights), bar, output=raw)
    bar.close()
    run.checkpoint()
    net.eval()

    card = {
        "name": out.stem,
        "kind": "style-transfer",
        "method": "flow-recurrent",
        "method_detail": ("Ruder et al. fast variant: 7-channel input [frame, mask * warped previous output, "
                          "mask], fine-tuned from a per-frame model; ReCoNet output temporal loss with the "
                          "luminance constraint"),
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
        "first_frame_fraction": cfg.first_frame_fraction,
        **_run_card(run, use_bf16, weights, loss_weights, temporal_normalization=(
            "output: squared error summed over RGB, mean over pixels and batch (pixels in [0, 1]); "
            "feature: mean over C*H*W and batch")),
        # Resolved settings, so this checkpoint can itself be the init of a further run.
        "config": portable_config(dict(cfg.card_fields(), data=data, style=style_path, style_size=style_size)),
        "trained_at": _now_utc(),
    }
    return save_style_model(out, net, card)
