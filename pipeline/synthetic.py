"""Synthetic clips with exact ground truth, made from photographs shipped with scikit-image.

Every frame is an affine view of a still photo (a "camera" that pans, zooms or
rotates), so the forward optical flow between two frames is known exactly:
with M_t the matrix taking photo pixels to frame-t pixels, a frame-t pixel x
moves to M_{t+1} M_t^{-1} x in frame t+1. Cuts between different photos give
known shot boundaries. ``python -m pipeline.synthetic OUT.mp4`` writes the demo clip.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import wave
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from .errors import OutputError

MOVES = ("pan", "zoom", "rotate")
#: pan: travel as a fraction of the frame width; zoom: total magnification; rotate: total degrees.
DEFAULT_AMOUNT = {"pan": 0.25, "zoom": 1.3, "rotate": 12.0}
AUDIO_RATE = 48000


def load_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from ``skimage.data`` by name (e.g. "astronaut", "coffee", "chelsea")."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3], dtype=np.uint8)


def _camera_path(n_frames: int, size: tuple[int, int], move: str, amount: float) -> list[np.ndarray]:
    """3x3 matrices taking canvas coordinates (origin at the path's centre) to frame pixels."""
    w, h = size
    mats = []
    for t in range(n_frames):
        s = t / (n_frames - 1) if n_frames > 1 else 0.0
        centre, zoom, angle = np.zeros(2), 1.0, 0.0
        if move == "pan":  # mostly horizontal, a little vertical so both flow components are non-zero
            centre = (s - 0.5) * amount * np.array([w, 0.25 * h])
        elif move == "zoom":  # geometric, so every step magnifies by the same ratio
            zoom = amount**s
        else:
            angle = math.radians((s - 0.5) * amount)
        rot = zoom * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        m = np.eye(3)
        m[:2, :2] = rot
        m[:2, 2] = np.array([(w - 1) / 2, (h - 1) / 2]) - rot @ centre
        mats.append(m)
    return mats


def _fit_photo(img: np.ndarray, mats: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Resize the photo to cover every view (plus a margin for interpolation taps).

    Returns the resized photo and the matrices from its pixels to frame pixels.
    """
    w, h = size
    corners = np.array([[-1, -1, 1], [w, -1, 1], [-1, h, 1], [w, h, 1]], float).T
    seen = np.hstack([np.linalg.inv(m) @ corners for m in mats])[:2]
    lo, hi = seen.min(axis=1), seen.max(axis=1)
    need = hi - lo + 4
    ph, pw = img.shape[:2]
    k = max(need[0] / pw, need[1] / ph)
    out_w, out_h = math.ceil(pw * k), math.ceil(ph * k)
    resized = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    to_canvas = np.eye(3)
    to_canvas[:2, 2] = (lo + hi) / 2 - np.array([(out_w - 1) / 2, (out_h - 1) / 2])
    return resized, [m @ to_canvas for m in mats]


def _render(img: np.ndarray, mats: list[np.ndarray], size: tuple[int, int]) -> Iterator[np.ndarray]:
    for m in mats:
        yield cv2.warpAffine(img, m[:2], size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def affine_flow(m0: np.ndarray, m1: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Exact forward flow (h, w, 2) in pixels (x, y) from the view m0 to the view m1."""
    w, h = size
    f = m1 @ np.linalg.inv(m0) - np.eye(3)
    xs = np.arange(w, dtype=np.float64)[None, :]
    ys = np.arange(h, dtype=np.float64)[:, None]
    flow = np.empty((h, w, 2), np.float32)
    flow[..., 0] = f[0, 0] * xs + f[0, 1] * ys + f[0, 2]
    flow[..., 1] = f[1, 0] * xs + f[1, 1] * ys + f[1, 2]
    return flow


def _views(photo: np.ndarray | str, n_frames: int, size: tuple[int, int], move: str, amount: float | None):
    """The fitted photo and one photo->frame matrix per frame."""
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    if move not in MOVES:
        raise ValueError(f"unknown camera move {move!r}; choose one of {', '.join(MOVES)}")
    img = load_photo(photo) if isinstance(photo, str) else photo
    return _fit_photo(img, _camera_path(n_frames, size, move, DEFAULT_AMOUNT[move] if amount is None else amount), size)


def camera_move(
    photo: np.ndarray | str,
    n_frames: int,
    size: tuple[int, int] = (640, 360),
    move: str = "pan",
    amount: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, h, w, 3) uint8 RGB of a camera move over ``photo`` (an array or a
    ``skimage.data`` name) and the exact forward flows (n-1, h, w, 2) float32 in
    pixels (x, y), flow[t] taking frame t to frame t+1."""
    size = (int(size[0]), int(size[1]))
    img, mats = _views(photo, n_frames, size, move, amount)
    frames = np.stack(list(_render(img, mats, size)))
    flows = np.zeros((n_frames - 1, size[1], size[0], 2), np.float32)
    for t, (a, b) in enumerate(zip(mats, mats[1:])):
        flows[t] = affine_flow(a, b, size)
    return frames, flows


def moving_object(
    photo: np.ndarray | str,
    n_frames: int,
    size: tuple[int, int] = (640, 360),
    move: str = "pan",
    amount: float | None = None,
    *,
    patch: np.ndarray | str = "chelsea",
    patch_size: int | None = None,
    velocity: tuple[int, int] = (4, 2),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A camera move with a square patch sliding over it, for occlusion tests.

    Returns frames, exact forward flows and ``occluded`` (n-1, h, w) bool: pixels
    of frame t with no clean match in frame t+1 (covered by the patch, touching
    its edge, or gone out of the frame). The patch moves by whole pixels so its
    frames need no resampling.
    """
    frames, flows = camera_move(photo, n_frames, size, move, amount)
    h, w = frames.shape[1:3]
    side = patch_size or h // 3
    tile = cv2.resize(load_photo(patch) if isinstance(patch, str) else patch, (side, side), interpolation=cv2.INTER_AREA)
    vx, vy = int(velocity[0]), int(velocity[1])
    x0, y0 = w // 4, h // 4

    def box(t: int) -> tuple[slice, slice]:
        x, y = x0 + t * vx, y0 + t * vy
        if not (0 <= x <= w - side and 0 <= y <= h - side):
            raise ValueError("the patch leaves the frame: use fewer frames or a smaller velocity/patch")
        return slice(y, y + side), slice(x, x + side)

    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    occluded = np.zeros((max(0, n_frames - 1), h, w), bool)
    for t in range(n_frames):
        frames[t][box(t)] = tile
    for t in range(n_frames - 1):
        # Where the background goes; covered if any bilinear tap there falls on the patch in t+1.
        tx, ty = xs + flows[t, ..., 0], ys + flows[t, ..., 1]
        ry, rx = box(t + 1)
        covered = (tx > rx.start - 1) & (tx < rx.stop) & (ty > ry.start - 1) & (ty < ry.stop)
        occluded[t] = covered | (tx < 0) | (tx > w - 1) | (ty < 0) | (ty > h - 1)
        occluded[t][box(t)] = False  # the patch itself stays in view (box(t+1) checked it)
        flows[t][box(t)] = (vx, vy)
    return frames, flows, occluded


# --- demo clip -------------------------------------------------------------------------------

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea")


def demo_shot_bounds(n_shots: int, fps: Fraction = Fraction(24), seconds_per_shot: float = 3) -> list[tuple[int, int]]:
    """Frame ranges [start, end) of the demo clip's shots (hard cuts at each start > 0)."""
    n = round(Fraction(seconds_per_shot) * Fraction(fps))
    return [(i * n, (i + 1) * n) for i in range(n_shots)]


def _tones(bounds: Sequence[tuple[int, int]], fps: Fraction) -> np.ndarray:
    """Mono int16 music: per shot a rising major arpeggio on a new root, so the audio changes at each cut."""
    roots = (220.0, 261.63, 329.63, 392.0, 293.66, 246.94)
    pieces = []
    for i, (start, end) in enumerate(bounds):
        a, b = (round(Fraction(f) / Fraction(fps) * AUDIO_RATE) for f in (start, end))
        for k, ratio in enumerate((1.0, 1.25, 1.5, 2.0)):  # four notes per shot
            n = (b - a) * (k + 1) // 4 - (b - a) * k // 4
            t = np.arange(n) / AUDIO_RATE
            env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01) * np.exp(-2.0 * t)  # no clicks, soft decay
            pieces.append(0.3 * env * np.sin(2 * np.pi * roots[i % len(roots)] * ratio * t))
    return (np.concatenate(pieces) * 32767).astype(np.int16)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(AUDIO_RATE)
        f.writeframes(samples.tobytes())


def make_demo_clip(
    out_path: str | os.PathLike,
    *,
    width: int = 640,
    height: int = 360,
    fps: Fraction = Fraction(24, 1),
    seconds_per_shot: float = 3,
    shots: Sequence[str] = DEMO_PHOTOS,
) -> Path:
    """Write an H.264/AAC MP4: one shot per photo (pan, zoom, rotate, ...) with hard cuts and music."""
    from . import ffmpeg_tools, media  # late: camera_move alone needs no PyAV/ffmpeg

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = (width, height)
    bounds = demo_shot_bounds(len(shots), fps, seconds_per_shot)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".demo-") as tmp:
        video, audio = Path(tmp) / "video.mp4", Path(tmp) / "audio.wav"
        with media.SegmentWriter(video, fps, size) as writer:
            for i, (name, (start, end)) in enumerate(zip(shots, bounds)):
                img, mats = _views(name, end - start, size, MOVES[i % len(MOVES)], None)
                for frame in _render(img, mats, size):
                    writer.write(frame)
        _write_wav(audio, _tones(bounds, fps))
        partial = Path(tmp) / out_path.name
        cmd = [media.ffmpeg_binary(), *ffmpeg_tools.GLOBAL_ARGS, "-i", str(video), "-i", str(audio),
               "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "128k",
               "-movflags", "+faststart", str(partial)]
        done = ffmpeg_tools.run(cmd)
        if done.returncode != 0:
            raise OutputError(f"{out_path}: could not mux the demo audio ({ffmpeg_tools.last_error_line(done.stderr)})")
        os.replace(partial, out_path)  # atomic: never a half-written demo clip
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print("usage: python -m pipeline.synthetic OUT.mp4", file=sys.stderr)
        return 2
    print(make_demo_clip(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
