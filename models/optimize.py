"""Gatys et al.'s optimization of the image itself, with the losses the nets train with.

A feed-forward net approximates, in one pass, what this finds in hundreds: the image that
minimises the content + style (+ TV, range, tone) losses for one photo. Run with the net's own
loss network, style target and weights, it is the optimum the net is judged against
(benchmarks/style_quality.py) and the start of an optimization render method for hero shots.

- ``init="photo"`` (Gatys et al.) starts from the photo, ``"noise"`` from uniform noise. The
  difference shows what the losses alone ask for: a net starts from nothing, so an optimum
  that holds the photo's tones only because it started from them is not one a net can reach.
- L-BFGS (strong Wolfe line search) converges in far fewer steps than Adam at this size; Adam
  (``lr`` in pixel units) is there for images too large for L-BFGS's history.
- The pixels are optimised raw and judged through the inward clamp, with the range penalty,
  exactly as the nets' outputs are.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from . import losses as L
from .transformer import straight_through_clamp


@dataclass(frozen=True)
class OptimizeConfig:
    steps: int = 150
    optimizer: str = "lbfgs"  # "lbfgs" or "adam"
    init: str = "photo"  # "photo" or "noise"
    lr: float = 0.02  # Adam only: pixels in [0, 1]
    bf16: bool = False  # autocast the loss network (only where it measures as good)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def optimize(photo: torch.Tensor, vgg, target: L.StyleTarget, weights: dict,
             cfg: OptimizeConfig = OptimizeConfig()) -> tuple[torch.Tensor, dict]:
    """Optimise an image for ``photo`` (1, 3, H, W in [0, 1]). Returns (image in [0, 1], record).

    ``record``: the terms of the result, the total loss at every evaluation, time, evaluations.
    """
    if cfg.optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: lbfgs or adam")
    if cfg.init not in ("photo", "noise"):
        raise ValueError(f"unknown init {cfg.init!r}: photo or noise")
    device = photo.device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    with torch.no_grad(), autocast:
        feats_x = {k: v.float() for k, v in vgg(photo).items()}
    if cfg.init == "photo":
        start = photo.detach().clone(memory_format=torch.contiguous_format)
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        start = torch.rand(photo.shape, generator=g).to(device)
    raw = start.requires_grad_(True)
    totals: list[float] = []

    def evaluate() -> tuple[dict, torch.Tensor]:
        y = straight_through_clamp(raw)
        with autocast:
            feats_y = vgg(y)
        terms = L.perceptual_terms(feats_y, feats_x, target, y, raw, photo)
        return terms, L.weighted_total(terms, weights)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        _, total = evaluate()
        total.backward()
        totals.append(float(total.detach()))
        return total

    t0 = time.perf_counter()
    if cfg.optimizer == "lbfgs":
        opt = torch.optim.LBFGS([raw], lr=1.0, max_iter=cfg.steps, history_size=50,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
        opt.step(closure)
    else:
        opt = torch.optim.Adam([raw], lr=cfg.lr)
        for _ in range(cfg.steps):
            closure()
            opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        terms, total = evaluate()
    record = {
        "terms": {k: float(v) for k, v in terms.items()},
        "total": float(total),
        "history": totals,
        "evaluations": len(totals),
        "seconds": round(seconds, 2),
        "config": cfg.to_dict(),
    }
    return raw.detach().clamp(0, 1), record


# ---------------------------------------------------------------- the optimum as a cached reference


def optimum_key(style_sha: str, style_size: int, photo_sha: str, size: int, weights: dict,
                cfg: OptimizeConfig) -> str:
    """Content address of one optimum: painting, photo, size, loss weights and optimizer settings."""
    import hashlib
    import json

    blob = json.dumps({"style": style_sha, "style_size": style_size, "photo": photo_sha, "size": size,
                       "weights": {k: float(v) for k, v in sorted(weights.items()) if v},
                       "optimizer": cfg.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class OptimumCache:
    """Optimum images (PNG) with their records (JSON), by ``optimum_key``: minutes each on a CPU."""

    def __init__(self, folder):
        from pathlib import Path

        self.folder = Path(folder)

    def paths(self, key: str):
        return self.folder / f"{key}.png", self.folder / f"{key}.json"

    def get(self, key: str) -> torch.Tensor | None:
        import numpy as np
        from PIL import Image

        png, _ = self.paths(key)
        if not png.exists():
            return None
        return torch.from_numpy(np.asarray(Image.open(png).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255

    def put(self, key: str, image: torch.Tensor, record: dict) -> None:
        import json
        import os

        import numpy as np
        from PIL import Image

        self.folder.mkdir(parents=True, exist_ok=True)
        png, js = self.paths(key)
        arr = (image[0].permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        tmp = png.with_name(f"{png.stem}.{os.getpid()}.part.png")
        Image.fromarray(arr).save(tmp)
        js.write_text(json.dumps(record, indent=1))
        os.replace(tmp, png)  # the image last: a PNG in the cache is a complete entry
