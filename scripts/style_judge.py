"""What scripts/train_styles.py judges its nets with: the quick judge on the packed test photos,
the choice of the A/B's normalization, and the optimum of the judge's photos (a subprocess)."""
from __future__ import annotations

import json
from pathlib import Path


# ---------------------------------------------------------------- judging


class Judge:
    """Style, content and tone of a net on the packed test photos, at the judge's width (512)."""

    def __init__(self, pack_dir: Path, device: str, vgg_path: str, photos: int, paintings: dict[str, str]):
        import torch

        from models import losses as L
        from models.data import load_rgb, to_tensor
        from models.vgg import find_weights, loss_network

        self.torch, self.L, self.device = torch, L, device
        self.vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS))),
                                find_weights(vgg_path)).to(device)
        self.photos = [to_tensor(load_rgb(p, 512))[None].to(device)
                       for p in sorted((pack_dir / "test").glob("*.jpg"))[:photos]]
        self.pack, self.paintings = pack_dir, paintings
        self._targets: dict = {}
        self._to_tensor, self._load = to_tensor, load_rgb

    def target(self, style: str):
        if style not in self._targets:
            from models.train import TrainConfig

            img = self._to_tensor(self._load(self.pack / "styles" / self.paintings[style], TrainConfig.style_size))
            img = img[None].to(self.device)
            with self.torch.no_grad():
                self._targets[style] = self.L.StyleTarget(self.vgg(img))
        return self._targets[style]

    def net(self, ckpt: Path, style: str) -> dict:
        """The judge's numbers (benchmarks/style_quality.py's measure) on the packed test photos."""
        from benchmarks.style_quality import mean_rows, measure
        from models.checkpoint import load_style_model

        net, _ = load_style_model(ckpt, device=self.device)
        net = net.float().eval()
        target = self.target(style)
        with self.torch.no_grad():
            rows = [measure(self.vgg, target, x, net.stylize(x)) for x in self.photos]
        return dict(mean_rows(rows), photos=len(rows))


def pick_norm(ab: dict, n_styles: int) -> tuple[str, str]:
    """The norm with the lowest mean style x content over the A/B styles among those keeping tone >= 0.9."""
    scores = {}
    for norm, per_style in ab.items():
        if len(per_style) < n_styles:
            continue  # a run failed
        tone = min(r["tone"] for r in per_style.values())
        score = sum(r["style"] * r["content"] for r in per_style.values()) / len(per_style)
        scores[norm] = (tone >= 0.9, -score)
    if not scores:
        raise RuntimeError("every A/B run failed")
    best = max(scores, key=lambda n: scores[n])
    why = ", ".join(f"{n}: tone ok {ok}, style x content {-s:.4f}" for n, (ok, s) in scores.items())
    return best, why


# ---------------------------------------------------------------- optimum (a subprocess too)


def run_optimum(pack_dir: Path, out: Path, device: str, vgg_path: str, paintings: dict[str, str], photos: int,
                steps: int) -> None:
    """The optimum (models/optimize.py) of the first ``photos`` test photos for every painting."""
    import numpy as np
    import torch
    from PIL import Image

    from models import losses as L
    from models.optimize import OptimizeConfig, optimize
    from models.data import load_rgb, to_tensor
    from models.train import TrainConfig
    from models.vgg import find_weights, loss_network

    d = TrainConfig(style="", data="", out="")
    weights = {"content": d.content_weight, "style": d.style_weight, "tv": d.tv_weight,
               "range": d.range_weight, "tone": d.tone_weight}
    vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS))), find_weights(vgg_path)).to(device)
    photos = sorted((pack_dir / "test").glob("*.jpg"))[:photos]
    out.mkdir(parents=True, exist_ok=True)
    records = {}
    for style, file in paintings.items():
        with torch.no_grad():
            painting = to_tensor(load_rgb(pack_dir / "styles" / file, d.style_size))[None].to(device)
            target = L.StyleTarget(vgg(painting))
        for p in photos:
            x = to_tensor(load_rgb(p, 256))[None].to(device)  # the reference size: 256 px
            y, rec = optimize(x, vgg, target, weights, OptimizeConfig(steps=steps))
            with torch.no_grad():
                rec["tone_correlation"] = float(L.tone_correlation(y, x)[0])
            rec.pop("history")
            records[f"{style}/{p.name}"] = rec
            Image.fromarray((y[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)).save(
                out / f"{style}__{p.stem}.png")
        (out / "optimum.json").write_text(json.dumps({"weights": weights, "steps": steps, "records": records,
                                                      "style_size": d.style_size, "loss_network": vgg.source},
                                                     indent=1))
