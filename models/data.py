"""Content and style photos for training: loading, the paths a model card records, random crops.

Every trainer (models/train.py, models/train_video.py, models/video_data.py) reads its photos
through here; so do the judges (benchmarks/, scripts/train_styles.py, pipeline/evaluate.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from pipeline.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
#: ../shared/data beside the repository: where a card's relative paths point.
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


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


def center_crop(img: np.ndarray, size: int) -> torch.Tensor:
    t = to_tensor(img)[None]
    s = size / min(t.shape[-2:])
    # Explicit output size: a scale factor can floor the short side to size - 1 (321 * 192/321 = 191.99).
    h, w = (max(size, round(v * s)) for v in t.shape[-2:])
    t = F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    y, x = (h - size) // 2, (w - size) // 2
    return t[0, :, y:y + size, x:x + size].clamp(0, 1)


def portable(path: str | Path, keep: int = 1) -> str:
    """The last ``keep`` parts of a path: what a model card records (never the machine's layout)."""
    return "/".join(Path(path).parts[-keep:])


def portable_config(d: dict) -> dict:
    """A training config for a card: the painting by file name, data folders by their last two parts."""
    d = dict(d)
    for k in ("style", "init", "out", "vgg", "teacher_flow", "teacher_frame"):
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
