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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pipeline.errors import InputError

from . import losses as L
from .checkpoint import file_digest, save_style_model
from .transformer import SIZES, TransformerNet, straight_through_clamp
from .vgg import find_weights, loss_network

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class TrainConfig:
    style: str
    data: tuple[str, ...] | list[str] | str  # one or more folders of content images
    out: str
    size: str = "full"
    image_size: int = 256
    style_size: int = 320
    batch_size: int = 4
    steps: int = 2000
    lr: float = 1e-3
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 1e-1
    range_weight: float = 1.0  # penalty on raw outputs outside [0, 1] (the clamp is straight-through)
    bf16: bool | None = None  # None: on when the CPU/GPU supports it
    seed: int = 0
    checkpoint_every_s: float = 120.0
    checkpoint_every_steps: int = 0  # 0: by time only (tests set it)
    sample_every_s: float = 300.0
    vgg: str | None = None
    device: str = "cpu"
    fields_that_must_match: tuple = field(default=("style", "size", "image_size", "batch_size", "seed"), repr=False)

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
    """Random square crops, drawn only from a torch.Generator so that resuming is exact."""

    def __init__(self, files: list[Path], size: int, generator: torch.Generator):
        self.files, self.size, self.g = files, size, generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.g))

    def sample(self, batch: int) -> torch.Tensor:
        out = []
        for _ in range(batch):
            idx = int(torch.randint(len(self.files), (), generator=self.g))
            img = load_rgb(self.files[idx])
            h, w = img.shape[:2]
            # Scale so the short side is 1.0-1.3x the crop: crops see objects at varied scales.
            scale = self.size * (1.0 + 0.3 * self._rand()) / min(h, w)
            nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            t = F.interpolate(to_tensor(img)[None], size=(nh, nw), mode="bilinear", antialias=True,
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

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).contiguous()
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
    img = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    tmp = path.with_name(path.name + ".part.png")
    Image.fromarray(img).save(tmp)
    os.replace(tmp, path)


def _center_crop(img: np.ndarray, size: int) -> torch.Tensor:
    t = to_tensor(img)[None]
    s = size / min(t.shape[-2:])
    t = F.interpolate(t, scale_factor=s, mode="bilinear", antialias=True, align_corners=False, recompute_scale_factor=False)
    h, w = t.shape[-2:]
    y, x = (h - size) // 2, (w - size) // 2
    return t[0, :, y:y + size, x:x + size].clamp(0, 1)


def train(cfg: TrainConfig, *, restart: bool = False, progress: bool = True, log=print) -> Path:
    """Train (or resume) and write the style checkpoint to ``cfg.out``. Returns its path."""
    from tqdm import tqdm

    from pipeline.memtune import tune_malloc

    tune_malloc()
    files = list_images(cfg.data)
    style_img = load_rgb(cfg.style, max_side=cfg.style_size)
    if cfg.size not in SIZES:
        raise InputError(f"unknown model size {cfg.size!r}; choose from {', '.join(SIZES)}")
    out = Path(cfg.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out.parent}: cannot create output folder ({e.strerror})") from None
    torch.manual_seed(cfg.seed)
    device = cfg.device
    use_bf16 = bf16_supported(device) if cfg.bf16 is None else cfg.bf16

    weights = find_weights(cfg.vgg)
    vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS)))
                       , weights).to(device)
    with torch.no_grad():
        target = L.StyleTarget(vgg(to_tensor(style_img)[None].to(device)))

    net = TransformerNet(SIZES[cfg.size]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = CropSampler(files, cfg.image_size, gen)

    style_hash = file_digest(cfg.style)
    identity = {k: getattr(cfg, k) for k in cfg.fields_that_must_match}
    identity["style"] = style_hash
    state_path = _state_path(out)
    step, history = 0, {"elapsed_s": 0.0, "ema": {}}
    if state_path.exists() and not restart:
        step, meta = load_state(state_path, net, opt, gen)
        if meta.get("identity") != identity:
            raise InputError(
                f"{state_path}: a training state for different settings exists "
                f"({meta.get('identity')}); pass --restart to discard it"
            )
        history = meta["history"]
        log(f"resuming from step {step} ({state_path})")

    photos = torch.stack([_center_crop(load_rgb(p), cfg.image_size) for p in files[:3]]).to(device)
    samples_path = out.with_name(out.stem + ".samples.png")
    ema: dict = history["ema"]
    t_start = time.monotonic() - history["elapsed_s"]
    last_ckpt = last_sample = time.monotonic()

    def checkpoint() -> None:
        history["elapsed_s"] = time.monotonic() - t_start
        save_state(state_path, net, opt, step, gen, {"identity": identity, "history": history})

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"train {Path(cfg.style).stem}",
               dynamic_ncols=True)
    net.train()
    while step < cfg.steps:
        x = sampler.sample(cfg.batch_size).to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16):
            raw = net(x)
            y = straight_through_clamp(raw)
            feats_y = vgg(y)
            with torch.no_grad():
                feats_x = vgg(x)
        terms = {
            "content": L.content_loss(feats_y, feats_x),
            "style": L.style_loss(feats_y, target),
            "tv": L.tv_loss(y.float()),
            "range": L.range_loss(raw.float()),
        }
        total = (cfg.content_weight * terms["content"] + cfg.style_weight * terms["style"]
                 + cfg.tv_weight * terms["tv"] + cfg.range_weight * terms["range"])
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        step += 1
        for k, v in dict(terms, total=total).items():
            v = float(v.detach())
            ema[k] = v if k not in ema else 0.98 * ema[k] + 0.02 * v
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in ema.items()})
        now = time.monotonic()
        if (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0) or (
            not cfg.checkpoint_every_steps and now - last_ckpt >= cfg.checkpoint_every_s
        ):
            checkpoint()
            last_ckpt = now
        if now - last_sample >= cfg.sample_every_s:
            net.eval()
            sample_grid(net, photos, samples_path)
            net.train()
            last_sample = now
    bar.close()
    checkpoint()
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
        "steps": step,
        "train_time_s": round(time.monotonic() - t_start, 1),
        "bf16_autocast": use_bf16,
        "loss_network": weights.source,
        "losses": {
            "content_layers": list(L.CONTENT_LAYERS),
            "style_layers": list(L.STYLE_LAYERS),
            "normalization": "relative: per-layer squared error / target energy; Gram normalized by C*H*W",
            "weights": {"content": cfg.content_weight, "style": cfg.style_weight, "tv": cfg.tv_weight,
                        "range": cfg.range_weight},
            "final_ema": {k: round(v, 5) for k, v in ema.items()},
        },
        "config": cfg.card_fields(),
        "trained_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return save_style_model(out, net, card)
