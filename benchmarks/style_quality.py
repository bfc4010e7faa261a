"""The style judge: does each shipped net paint like its painting, keep the photo, keep its light?

On the BSDS500 *test* photos (never used in training), for every shipped style:
- at the working width 512, on all 200: the style loss (relative Gram loss over
  relu1_2..relu4_3 against the painting, as in training) of the photo and of the stylized photo,
  their ratio (the reduction), the content loss (relu3_3, relative) and the tone correlation
  (models/losses.tone_correlation: 1 = light and dark where the photo has them);
- against the optimum on the first 10, at 256 px: the same numbers for Gatys optimization of the
  image itself (models/optimize.py, 150 L-BFGS steps from the photo) with the net's own loss
  network, painting size and loss weights. The optimum costs minutes per photo on a CPU, so it
  is cached (content-addressed: painting, photo, size, weights, optimizer) in
  $FILMSTYLE_CACHE/optimum (default ~/.cache/filmstyle/optimum); ``--import-optimum DIR`` takes
  the optima that scripts/train_styles.py computed on a GPU.
Targets (issue 17): tone >= 0.9; reduction >= 5x; net style <= 2x the optimum's at content
<= 1.25x the optimum's. Writes the README table and docs/styles.png (painting; then per photo:
photo, net, optimum).

    .venv/bin/python benchmarks/style_quality.py [--limit 200] [--styles starry_night mosaic]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.args import add_device_option  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TEST = DATA / "content" / "bsds500" / "test"
WIDTH, OPTIMUM_SIDE, OPTIMUM_PHOTOS = 512, 256, 10  # the optimum: long side 256 px
SHEET_PHOTOS = ("10081.jpg", "100039.jpg", "101084.jpg")  # among the first 10: they have optima
TARGETS = {"tone": 0.9, "reduction": 5.0, "style_vs_optimum": 2.0, "content_vs_optimum": 1.25}


def at_width(path: Path, width: int) -> torch.Tensor:
    from models.data import load_rgb, to_tensor

    x = to_tensor(load_rgb(path))[None]
    h, w = x.shape[-2:]
    return torch.nn.functional.interpolate(x, size=(max(4, round(h * width / w)), width), mode="bilinear",
                                           antialias=True, align_corners=False).clamp(0, 1)


def at_long_side(path: Path, side: int) -> torch.Tensor:
    """The photo with its long side at ``side`` (the optimum's size: 256 px, portrait or landscape)."""
    from models.data import load_rgb, to_tensor

    return to_tensor(load_rgb(path, side))[None]


def cache_folder() -> Path:
    from pipeline.paths import cache_root

    return cache_root() / "optimum"


class Style:
    """A shipped (or given) net with what judging it needs: painting target, loss weights."""

    def __init__(self, name: str, vgg, device: str = "cpu", precision: str = "fp32"):
        from models import losses as L
        from methods import resolve_style
        from models.checkpoint import load_style_model
        from models.data import load_rgb, to_tensor
        from models.train import TrainConfig

        from models.inference import for_inference

        self.name, self.device, self.precision = name, device, precision
        self.net, self.card = load_style_model(resolve_style(name))
        self.net = self.net.to(device)
        # what a render runs (models/inference.py): the judge's numbers must not move with it
        self.fast = for_inference(self.net, precision)
        cfg = self.card.get("config", {})
        self.style_size = int(cfg.get("style_size") or TrainConfig.style_size)
        self.painting = DATA / "styles" / self.card["style_image"]
        with torch.no_grad():
            self.target = L.StyleTarget(vgg(to_tensor(load_rgb(self.painting, self.style_size))[None].to(device)))
        self.weights = {k: float(v) for k, v in self.card["losses"]["weights"].items()
                        if k in ("content", "style", "tv", "range", "tone")}

    @torch.no_grad()
    def stylize(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        return self.fast.stylize(x).float().clamp(0, 1).contiguous()


@torch.no_grad()
def measure(vgg, target, x: torch.Tensor, y: torch.Tensor) -> dict:
    from models import losses as L

    fx, fy = vgg(x), vgg(y)
    return {"style_photo": float(L.style_loss(fx, target)), "style": float(L.style_loss(fy, target)),
            "content": float(L.content_loss(fy, fx)), "tone": float(L.tone_correlation(y, x)[0])}


def mean_rows(rows: list[dict]) -> dict:
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["reduction"] = out["style_photo"] / out["style"]
    out["tone_min"] = float(min(r["tone"] for r in rows))
    return out


def judge_net(style: Style, photos: list[Path], vgg) -> dict:
    rows = []
    for p in photos:
        x = at_width(p, WIDTH).to(style.device)
        rows.append(measure(vgg, style.target, x, style.stylize(x)))
    return mean_rows(rows)


def optimum_for(style: Style, photo: Path, vgg, cache, compute: bool = True) -> torch.Tensor | None:
    """The cached optimum of ``photo``; computed (and cached) when missing, unless ``compute`` is off."""
    from models.checkpoint import file_digest
    from models.optimize import OptimizeConfig, optimize, optimum_key

    cfg = OptimizeConfig()
    key = optimum_key(file_digest(style.painting), style.style_size, file_digest(photo), OPTIMUM_SIDE,
                      style.weights, cfg)
    y = cache.get(key)
    if y is not None:
        return y.to(style.device)
    if compute:
        print(f"  optimum of {style.name} on {photo.name} (not cached: minutes on a CPU)", flush=True)
        y, record = optimize(at_long_side(photo, OPTIMUM_SIDE).to(style.device), vgg, style.target, style.weights, cfg)
        record.pop("history")
        cache.put(key, y.cpu(), dict(record, loss_network=vgg.source, photo=photo.name, style=style.painting.name))
    return y


def judge_against_optimum(style: Style, photos: list[Path], vgg, cache, compute: bool = True) -> dict:
    """Net and optimum on the same photos at 256 px. When an optimum is missing and not computed,
    the net's numbers alone ("optimum": None): they still compare two nets of one style, and with
    an optimum measured elsewhere on the same photos."""
    net_rows, opt_rows = [], []
    for p in photos:
        x = at_long_side(p, OPTIMUM_SIDE).to(style.device)
        net_rows.append(measure(vgg, style.target, x, style.stylize(x)))
        opt = optimum_for(style, p, vgg, cache, compute) if len(opt_rows) == len(net_rows) - 1 else None
        if opt is not None:
            opt_rows.append(measure(vgg, style.target, x, opt))
    net = mean_rows(net_rows)
    if len(opt_rows) < len(net_rows):
        return {"net": net, "optimum": None}
    opt = mean_rows(opt_rows)
    return {"net": net, "optimum": opt, "style_vs_optimum": net["style"] / opt["style"],
            "content_vs_optimum": net["content"] / opt["content"]}


def import_optimum(folder: Path, cache) -> int:
    """Take the optima of scripts/train_styles.py (``optimum.json`` + STYLE__PHOTO.png) into the cache."""
    from PIL import Image

    from models.checkpoint import file_digest
    from models.optimize import OptimizeConfig, optimum_key
    from models.train import TrainConfig

    meta = json.loads((folder / "optimum.json").read_text())
    count = 0
    for name, record in meta["records"].items():
        style, photo = name.split("/")
        png = folder / f"{style}__{Path(photo).stem}.png"
        painting, original = DATA / "styles" / f"{style}.jpg", TEST / photo
        if not (png.exists() and painting.exists() and original.exists()):
            continue
        cfg = OptimizeConfig(**record["config"])
        key = optimum_key(file_digest(painting), meta.get("style_size", TrainConfig.style_size), file_digest(original),
                          OPTIMUM_SIDE,
                          meta["weights"], cfg)
        img = torch.from_numpy(np.asarray(Image.open(png).convert("RGB")).copy()).permute(2, 0, 1)[None] / 255.0
        cache.put(key, img.float(), dict(record, imported_from=str(folder), note=meta.get("note", "")))
        count += 1
    return count


@torch.no_grad()
def contact_sheet(styles: list[Style], vgg, cache, out: Path, height: int = 180, compute: bool = True) -> None:
    """Per style: the painting, then for each sheet photo the photo, the net and the optimum
    (a grey tile where the optimum is not cached and ``compute`` is off)."""
    from PIL import Image

    from models.data import load_rgb

    def tile(t: torch.Tensor) -> Image.Image:
        im = Image.fromarray((t[0].permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8))
        return im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)

    rows = []
    for s in styles:
        painting = Image.fromarray(load_rgb(s.painting, 800))
        tiles = [painting.resize((max(1, round(painting.width * height / painting.height)), height), Image.LANCZOS)]
        for name in SHEET_PHOTOS:
            x = at_width(TEST / name, WIDTH).to(s.device)
            opt = optimum_for(s, TEST / name, vgg, cache, compute)
            tiles += [tile(x), tile(s.stylize(x)), tile(opt if opt is not None else torch.full_like(x, 0.8))]
        rows.append(tiles)
    gap = 6
    width = max(sum(t.width for t in r) + gap * (len(r) + 2) for r in rows)
    sheet = Image.new("RGB", (width, len(rows) * (height + gap) - gap), "white")
    for r, tiles in enumerate(rows):
        x = 0
        for i, t in enumerate(tiles):
            sheet.paste(t, (x, r * (height + gap)))
            x += t.width + (gap * 4 if i % 3 == 0 else gap)  # a wider gap before each photo's triple
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


@torch.no_grad()
def scale_sheet(style: str, out: Path, photo: Path = DATA / "content" / "chicago.jpg", width: int = 640,
                scales=(1.0, 1.5, 2.0, 3.0)) -> None:
    """The stroke-size control (``--style-scale``) on one photo at the default working width."""
    from PIL import Image, ImageDraw

    from methods import RunSettings, make_method, resolve_style

    x = at_width(photo, width)
    frame = (x[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    tiles = []
    for s in scales:
        y, _ = make_method("per-frame", resolve_style(style), RunSettings(style_scale=s)).stylize(frame[None], 0, None)
        im = Image.fromarray(y[0])
        ImageDraw.Draw(im).text((8, 8), f"--style-scale {s:g}", fill=(255, 255, 255))
        tiles.append(im)
    sheet = Image.new("RGB", (2 * tiles[0].width + 6, 2 * tiles[0].height + 6), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % 2) * (t.width + 6), (i // 2) * (t.height + 6)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def verdict(row: dict, vs: dict | None) -> str:
    """"yes" only when every target was measured and met: without the optimum (not computed, or
    skipped with --optimum-photos 0) a net that meets the tone and reduction targets is "no optimum"."""
    ok = row["tone"] >= TARGETS["tone"] and row["reduction"] >= TARGETS["reduction"]
    if vs is None or vs["optimum"] is None:
        return "no optimum" if ok else "NO"
    ok = ok and vs["style_vs_optimum"] <= TARGETS["style_vs_optimum"] \
        and vs["content_vs_optimum"] <= TARGETS["content_vs_optimum"]
    return "yes" if ok else "NO"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="test photos for the net (default: all 200)")
    ap.add_argument("--styles", nargs="*", default=None, help="default: every shipped style")
    ap.add_argument("--optimum-photos", type=int, default=OPTIMUM_PHOTOS, help="0: skip the optimum")
    ap.add_argument("--import-optimum", default=None, metavar="DIR", help="optima from scripts/train_styles.py")
    ap.add_argument("--cached-only", action="store_true",
                    help="compare with the optimum only where it is cached (computing one takes minutes)")
    ap.add_argument("--sheet", default=str(ROOT / "docs" / "styles.png"), help="'' for none")
    ap.add_argument("--scale-sheet", default=None, metavar="PNG",
                    help="also draw the --style-scale picture (docs/style_scale.png) with the first style")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="run the nets in bf16 as a render on a bf16-fast CPU does (the losses stay fp32)")
    ap.add_argument("--json", default=None)
    add_device_option(ap, "the nets, the loss network and the optimizer")
    args = ap.parse_args()

    from benchmarks.common import cpu_description
    from models import losses as L
    from models.checkpoint import shipped_styles
    from models.optimize import OptimumCache
    from models.vgg import loss_network
    from pipeline.device import resolve_device
    from pipeline.memtune import tune_malloc

    tune_malloc()
    device = resolve_device(args.device)
    if not TEST.is_dir():
        sys.exit(f"skipped: {TEST} is absent")
    cache = OptimumCache(cache_folder())
    if args.import_optimum:
        print(f"imported {import_optimum(Path(args.import_optimum), cache)} optima into {cache.folder}")
    photos = sorted(TEST.glob("*.jpg"))[: args.limit]
    vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS)))).to(device)
    styles = [Style(n, vgg, device, args.precision) for n in (args.styles or list(shipped_styles()))]
    results = {}
    for s in styles:
        row = judge_net(s, photos, vgg)
        vs = judge_against_optimum(s, sorted(TEST.glob("*.jpg"))[: args.optimum_photos], vgg, cache,
                                   compute=not args.cached_only) if args.optimum_photos else None
        results[s.name] = {"net": row, "vs_optimum": vs, "steps": s.card.get("steps"),
                           "norm": s.net.config.norm, "weights": s.weights}
        print(f"{s.name}: {json.dumps(results[s.name])}", flush=True)

    print(f"\n{len(photos)} BSDS500 test photos at width {WIDTH}; optimum on {args.optimum_photos} at {OPTIMUM_SIDE} px; "
          f"loss network: {vgg.source}; device: {device}; CPU: {cpu_description()}")
    print("| style | net | tone (min) | style loss photo -> net | reduction | content | "
          "optimum: style / content / tone | net at 256: style / content | style vs opt | content vs opt | targets met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        n, vs = r["net"], r["vs_optimum"]
        if vs and vs["optimum"]:
            opt = (f"{vs['optimum']['style']:.3f} / {vs['optimum']['content']:.3f} / {vs['optimum']['tone']:.3f} | "
                   f"{vs['net']['style']:.3f} / {vs['net']['content']:.3f} | {vs['style_vs_optimum']:.2f}x | "
                   f"{vs['content_vs_optimum']:.2f}x")
        elif vs:
            opt = f"not cached | {vs['net']['style']:.3f} / {vs['net']['content']:.3f} | - | -"
        else:
            opt = "- | - | - | -"
        print(f"| {name} | {r['norm']}, {r['steps']} steps | {n['tone']:.3f} ({n['tone_min']:.2f}) | "
              f"{n['style_photo']:.3f} -> {n['style']:.3f} | {n['reduction']:.1f}x | {n['content']:.3f} | {opt} | "
              f"{verdict(n, vs)} |")
    if args.sheet:
        contact_sheet(styles, vgg, cache, Path(args.sheet), compute=bool(args.optimum_photos) and not args.cached_only)
        print(f"contact sheet: {args.sheet}")
    if args.scale_sheet:
        names = [st.name for st in styles]
        scale_sheet("starry_night" if "starry_night" in names else names[0], Path(args.scale_sheet))
        print(f"style-scale sheet: {args.scale_sheet}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
