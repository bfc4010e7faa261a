"""What every training loop shares (models/train.py, models/train_video.py).

``Run`` holds a loop's bookkeeping: resume, the optimizer step (warm-up, clipping), loss
averages, the divergence and collapse guards, and timed checkpoints. The full training state
(weights, Adam moments, step, RNG, loss averages) is written atomically every few minutes to
``OUT.state.safetensors`` so a killed run resumes exactly where its last checkpoint left it.
Also here: the loss network and style target, bf16 autocast, sample grids and the model-card
fields every phase records.
"""
from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.errors import FilmstyleError, InputError

from . import losses as L
from .data import to_tensor
from .vgg import find_weights, loss_network

NORMALIZATION = "relative: per-layer squared error / target energy; Gram normalized by C*H*W"


def bf16_supported(device: str) -> bool:
    """Train in bf16 autocast where it is faster: the GPU supports it, or the CPU's timing chose it
    (``pipeline.device.cpu_precision``: about 2x fp32 with AVX-512 BF16 / AMX, 10x slower on AVX2)."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    from pipeline.device import cpu_precision

    return cpu_precision() == "bf16"


def on_device(device: str, *modules: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """``modules`` on ``device``, channels-last: cuDNN and oneDNN alike run these convolutions faster
    so (a step of batch 8 at 256 px, bf16 on a 2-core AMD EPYC with AVX-512 BF16: 5.9 s against 7.3
    s); on CUDA with cuDNN's autotuner on (the shapes repeat every step)."""
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    return tuple(m.to(device, memory_format=torch.channels_last) for m in modules)


def autocast(device: str, enabled: bool):
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=enabled)


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


# ---------------------------------------------------------------- the run


class TrainingDiverged(FilmstyleError):
    """The loss blew up and rolling back to the last healthy checkpoint at a lower rate did not help."""


class TrainingCollapsed(FilmstyleError):
    """The net's output went flat: its ReLUs died and no gradient can bring them back."""


class Run:
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
                 every_s: float, every_steps: int, grad_clip: float = 0.0, lr_warmup: int = 0,
                 lr_decay: str = "constant", total_steps: int = 0):
        if lr_decay not in LR_DECAYS:
            raise InputError(f"unknown learning-rate decay {lr_decay!r}; choose from {', '.join(LR_DECAYS)}")
        self.net, self.opt, self.gen, self.identity = net, opt, gen, identity
        self.grad_clip, self.lr_warmup = grad_clip, lr_warmup
        self.lr_decay, self.total_steps = lr_decay, total_steps
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
        # Warm-up and decay scale the rate for this step only: the groups keep the real rate (which
        # a rollback halves and a checkpoint saves).
        ramp = lr_factor(self.step, self.lr_warmup, self.total_steps, self.lr_decay)
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


LR_DECAYS = ("constant", "cosine")


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """The share of the learning rate used at (0-based) ``step``: a linear ramp over ``warmup``
    steps, then either constant or a cosine from 1 to 0 over the remaining steps up to ``total``
    (Loshchilov & Hutter's schedule without restarts: the last steps take small moves that settle
    the weights instead of leaving them wherever the last full-rate step threw them)."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay == "cosine" and total > warmup:
        t = min(1.0, max(0.0, (step - warmup) / (total - warmup)))
        ramp *= 0.5 * (1.0 + math.cos(math.pi * t))
    return ramp


# ---------------------------------------------------------------- setup and records


def prepare_output(out: str | Path) -> Path:
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out.parent}: cannot create output folder ({e.strerror})") from None
    return out


def loss_setup(style_img: np.ndarray, vgg_path: str | None, device: str):
    """The VGG loss network, its weights' origin and the style target (Gram matrices)."""
    weights = find_weights(vgg_path)
    vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS))), weights).to(device)
    with torch.no_grad():
        target = L.StyleTarget(vgg(to_tensor(style_img)[None].to(device)))
    return vgg, weights, target


def sample_grid(net, photos: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        out = net.stylize(photos).clamp(0, 1)
    grid = torch.cat([torch.cat(list(photos), dim=2), torch.cat(list(out), dim=2)], dim=1)
    img = (grid.permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8)
    tmp = path.with_name(path.name + ".part.png")
    Image.fromarray(img).save(tmp)
    os.replace(tmp, path)


def run_card(run, use_bf16: bool, weights, loss_weights: dict, **loss_notes) -> dict:
    """Model-card fields every training phase records: steps, time, precision, loss network, losses."""
    return {
        "steps": run.step,
        "train_time_s": round(run.elapsed(), 1),
        "bf16_autocast": use_bf16,
        "rollbacks": run.history.get("rollbacks", []),  # divergences survived (see Run)
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


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
