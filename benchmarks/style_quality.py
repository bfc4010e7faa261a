"""How strongly each shipped style styles, and how much content survives.

On the BSDS500 *test* photos (never used in training), for every shipped style:
- style loss of the unstyled photo and of the stylized photo against the style
  image (relative Gram loss over relu1_2..relu4_3, as in training); the ratio
  is how much closer to the painting the net brings each photo;
- content loss (relu3_3, relative) between the stylized photo and the photo,
  next to the same loss between two unrelated test photos: the content bound.
  A stylized photo must stay well below "a different photo" (we require
  < 0.75 of it): its objects are still where they were.

Writes a markdown table (README) and docs/styles.png, a contact sheet of
style, photo and result for three test photos.

    .venv/bin/python benchmarks/style_quality.py [--limit 200] [--sheet docs/styles.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONTENT_BOUND = 0.75  # fraction of the unrelated-photo content loss a stylized photo must stay under
SHEET_PHOTOS = ("10081.jpg", "100039.jpg", "101084.jpg")


def load(path, max_side=None) -> torch.Tensor:
    from models.train import load_rgb, to_tensor

    return to_tensor(load_rgb(path, max_side))[None]


@torch.no_grad()
def evaluate(style_name: str, photos: list[Path], vgg) -> dict:
    from models import losses as L
    from models.checkpoint import load_style_model, resolve_style

    net, card = load_style_model(resolve_style(style_name))
    style_img = DATA / "styles" / card["style_image"]
    target = L.StyleTarget(vgg(load(style_img, card.get("config", {}).get("style_size", 320))))
    before, after, content = [], [], []
    for p in photos:
        x = load(p)
        y = net.stylize(x).clamp(0, 1)
        fx, fy = vgg(x), vgg(y)
        before.append(float(L.style_loss(fx, target)))
        after.append(float(L.style_loss(fy, target)))
        content.append(float(L.content_loss(fy, fx)))
    return {"style_before": float(np.mean(before)), "style_after": float(np.mean(after)),
            "ratio": float(np.mean(before) / np.mean(after)), "content": float(np.mean(content)),
            "style_image": card["style_image"], "steps": card.get("steps")}


@torch.no_grad()
def unrelated_content_loss(photos: list[Path], vgg, pairs: int = 50) -> float:
    from models import losses as L

    rng = np.random.default_rng(0)
    vals = []
    for _ in range(pairs):
        i, j = rng.choice(len(photos), 2, replace=False)
        a, b = load(photos[i]), load(photos[j])
        if a.shape != b.shape:  # portrait vs landscape: compare at a common size
            b = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear", antialias=True)
        vals.append(float(L.content_loss(vgg(b), vgg(a))))
    return float(np.mean(vals))


@torch.no_grad()
def contact_sheet(styles: list[str], out: Path, height: int = 200) -> None:
    from PIL import Image

    from models.checkpoint import load_style_model, resolve_style
    from models.train import load_rgb

    def fit(img: np.ndarray) -> Image.Image:
        im = Image.fromarray(img)
        return im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)

    rows = []
    for name in styles:
        net, card = load_style_model(resolve_style(name))
        tiles = [fit(load_rgb(DATA / "styles" / card["style_image"], 800))]
        for photo in SHEET_PHOTOS:
            img = load_rgb(DATA / "content" / "bsds500" / "test" / photo)
            y = net.stylize(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).clamp(0, 1)
            tiles += [fit(img), fit((y[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))]
        rows.append(tiles)
    gap = 6
    width = max(sum(t.width for t in r) + gap * (len(r) - 1) for r in rows)
    sheet = Image.new("RGB", (width, len(rows) * (height + gap) - gap), "white")
    for r, tiles in enumerate(rows):
        x = 0
        for i, t in enumerate(tiles):
            sheet.paste(t, (x, r * (height + gap)))
            x += t.width + (gap * 3 if i == 0 else gap)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="test photos to use (default: all 200)")
    ap.add_argument("--styles", nargs="*", default=None, help="default: every shipped style")
    ap.add_argument("--sheet", default=str(ROOT / "docs" / "styles.png"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from models import losses as L
    from models.checkpoint import shipped_styles
    from models.vgg import loss_network
    from pipeline.memtune import tune_malloc

    tune_malloc()
    test_dir = DATA / "content" / "bsds500" / "test"
    if not test_dir.is_dir():
        sys.exit(f"skipped: {test_dir} is absent")
    photos = sorted(test_dir.glob("*.jpg"))[: args.limit]
    styles = args.styles or list(shipped_styles())
    vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS))))
    unrelated = unrelated_content_loss(photos, vgg)
    results = {name: evaluate(name, photos, vgg) for name in styles}
    print(f"{len(photos)} BSDS500 test photos; loss network: {vgg.source}")
    print(f"content loss between unrelated photos: {unrelated:.3f}; bound for stylized photos: "
          f"{CONTENT_BOUND} x that = {CONTENT_BOUND * unrelated:.3f}")
    print("| style | steps | style loss, photo | style loss, stylized | reduction | content loss | within bound |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ok = r["ratio"] >= 5 and r["content"] < CONTENT_BOUND * unrelated
        print(f"| {name} | {r['steps']} | {r['style_before']:.3f} | {r['style_after']:.3f} | {r['ratio']:.1f}x | "
              f"{r['content']:.3f} | {'yes' if ok else 'NO'} |")
    if args.sheet:
        contact_sheet(styles, Path(args.sheet))
        print(f"contact sheet: {args.sheet}")
    if args.json:
        Path(args.json).write_text(json.dumps({"unrelated_content": unrelated, "styles": results}, indent=2))


if __name__ == "__main__":
    main()
