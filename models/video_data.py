"""Two-frame training pairs for the video phase (Ruder et al. fast variant).

A pair is frame t-1, frame t, the backward flow t -> t-1 on frame t's pixels
and the reliability mask of frame t's pixels (pipeline.flow conventions), so
``warp_torch(prev, backward) ~ cur`` wherever the mask is 1. Two sources, mixed
per sample (Ruder's recipe uses both):

* synthetic: a still photo seen by a camera that makes a small random affine
  move (shift, zoom, rotation; exact analytic flow), plus a patch of another
  photo sliding over it (occlusion). Endless and exact.
* real clips: consecutive frames decoded once at start at a small working size,
  with DIS flow and the reliability mask, kept in memory. Real motion, real
  flow errors - what the stylizer sees at render time.

All randomness of ``PairSampler.sample`` comes from one torch.Generator, so a
resumed training run draws the same pairs as an uninterrupted one; the clip
cache is built from its own seed, so it is the same in every run. The net's
7-channel input built from a pair is models/recurrent.py's ``recurrent_input``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.synthetic import affine_flow

from .data import data_folders, load_rgb

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"}
#: ../shared/data/videos beside the repository (absent on most machines).
DEFAULT_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"

# Synthetic motion at a 256 px crop (scaled with the crop size): Ruder's "shift"
# and "zoom_out" moves combined, plus a small rotation.
MAX_SHIFT_PX = 10.0
ZOOM_RANGE = (0.95, 1.05)
MAX_ROTATION_DEG = 3.0
OBJECT_SIDE = (0.2, 0.45)  # pasted patch side, as a fraction of the crop
MAX_OBJECT_STEP_PX = 6  # patch displacement per frame (whole pixels: no resampling)
#: A real pair whose reliable fraction is below this is a cut or a flow failure: skipped.
MIN_RELIABLE = 0.3
#: Exposure of a darkened pair (``PairSampler(dark_fraction=...)``): a gain drawn log-uniformly
#: from this range, 0.01 being a fade from black (the test video opens with 30 frames of mean
#: level 0-5 of 255), and a fade between the two frames of up to this factor.
DARK_GAIN = (0.01, 0.35)
MAX_FADE = 1.3


@dataclass
class PairBatch:
    """A batch of pairs as tensors: frames in [0, 1], flow in pixels, mask in [0, 1]."""

    prev: torch.Tensor  # (N, 3, S, S) frame t-1
    cur: torch.Tensor  # (N, 3, S, S) frame t
    backward: torch.Tensor  # (N, 2, S, S) flow t -> t-1, on frame t's pixels
    mask: torch.Tensor  # (N, 1, S, S) reliability of frame t's pixels

    def to(self, device: str) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in (self.prev, self.cur, self.backward, self.mask)))


# ---------------------------------------------------------------- small helpers


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return lo + int(torch.randint(hi - lo + 1, (), generator=g))


def _in_frame(flow: np.ndarray) -> np.ndarray:
    h, w = flow.shape[:2]
    tx = np.arange(w, dtype=np.float32)[None, :] + flow[..., 0]
    ty = np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]
    return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def _pair_tensors(prev, cur, backward, mask) -> tuple[torch.Tensor, ...]:
    """(H, W, C) numpy arrays -> CHW float32 tensors (uint8 frames scaled to [0, 1])."""
    def chw(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).float()
        t = t[..., None] if t.dim() == 2 else t
        return t.permute(2, 0, 1)

    scale = (lambda a: chw(a) / 255.0) if prev.dtype == np.uint8 else chw
    return scale(prev), scale(cur), chw(backward), chw(mask)


def _darken(g: torch.Generator, prev: torch.Tensor, cur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair as a dark shot or a fade from black, rounded to 8-bit levels as a decoder gives it.

    Photos and clips are lit; a film's night scenes and fades are not, and there instance norm
    sees a frame of little contrast, so what a recurrent net feeds back weighs most in its
    statistics (the first flow-recurrent net with instance norm swung its light on such frames).
    """
    gain = math.exp(_uniform(g, math.log(DARK_GAIN[0]), math.log(DARK_GAIN[1])))
    fade = _uniform(g, 1.0, MAX_FADE)

    def expose(x: torch.Tensor, k: float) -> torch.Tensor:
        return torch.floor((x * k).clamp(0, 1) * 255.0 + 0.5) / 255.0

    return expose(prev, gain), expose(cur, gain * fade)


def _hflip(prev, cur, backward, mask):
    """Mirror a pair: the flow's x component changes sign."""
    backward = backward[:, ::-1] * np.array([-1.0, 1.0], np.float32)
    return prev[:, ::-1], cur[:, ::-1], backward, mask[:, ::-1]


# ---------------------------------------------------------------- synthetic pairs


def _camera_move(g: torch.Generator, size: int) -> np.ndarray:
    """3x3 random small affine move of the frame about its centre."""
    k = size / 256.0
    shift = np.array([_uniform(g, -1, 1), _uniform(g, -1, 1)]) * MAX_SHIFT_PX * k
    zoom = _uniform(g, *ZOOM_RANGE)
    angle = math.radians(_uniform(g, -MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    c = (size - 1) / 2.0
    rot = zoom * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c + shift - rot @ np.array([c, c])
    return m


class SyntheticPairs:
    """Camera moves over still photos, with a pasted patch of another photo moving on top."""

    def __init__(self, files: list[Path], size: int, load: Callable[[Path], np.ndarray] = load_rgb):
        if not files:
            raise InputError("synthetic video pairs need at least one content photo")
        self.files, self.size, self._load = files, size, load
        self._decoded: dict[Path, np.ndarray] = {}  # decoded once: a JPEG decode per sample starves a GPU

    def load(self, path: Path) -> np.ndarray:
        if path not in self._decoded:
            self._decoded[path] = self._load(path)
        return self._decoded[path]

    def _photo(self, g: torch.Generator, min_side: float) -> np.ndarray:
        """A random photo as float32 [0, 1], scaled so its short side is ``min_side``, maybe mirrored."""
        img = self.load(self.files[_randint(g, 0, len(self.files) - 1)])
        s = min_side / min(img.shape[:2])
        w, h = max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        img = cv2.resize(img.astype(np.float32) / 255.0, (w, h), interpolation=interp)
        img = np.clip(img, 0.0, 1.0)
        return img[:, ::-1].copy() if _uniform(g) < 0.5 else img

    def sample(self, g: torch.Generator) -> tuple[np.ndarray, ...]:
        """One pair: prev, cur (S, S, 3) float32, backward (S, S, 2), mask (S, S) float32."""
        s = self.size
        photo = self._photo(g, s * _uniform(g, 1.0, 1.3))
        # One view is a plain crop (no resampling), the other the crop moved; which of
        # the two is frame t is random, so neither is always the softer one.
        crisp = np.eye(3)
        crisp[:2, 2] = [-_randint(g, 0, photo.shape[1] - s), -_randint(g, 0, photo.shape[0] - s)]
        moved = _camera_move(g, s) @ crisp
        views = [crisp, moved] if _uniform(g) < 0.5 else [moved, crisp]
        prev, cur = (cv2.warpAffine(photo, m[:2], (s, s), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT_101) for m in views)
        backward = affine_flow(views[1], views[0], (s, s))  # frame t pixel -> frame t-1 pixel
        mask = _in_frame(backward)
        self._paste_object(g, prev, cur, backward, mask)
        return prev, cur, backward, mask.astype(np.float32)

    def _paste_object(self, g, prev, cur, backward, mask) -> None:
        """Slide a patch by a whole-pixel step between the frames; mark the background it uncovers."""
        s = self.size
        side = max(2, round(s * _uniform(g, *OBJECT_SIDE)))
        patch = self._photo(g, side * _uniform(g, 1.0, 2.0))
        y, x = _randint(g, 0, patch.shape[0] - side), _randint(g, 0, patch.shape[1] - side)
        patch = patch[y:y + side, x:x + side]
        step = max(1, round(MAX_OBJECT_STEP_PX * s / 256))
        vx, vy = _randint(g, -step, step), _randint(g, -step, step)
        x0 = _randint(g, max(0, -vx), s - side - max(0, vx))
        y0 = _randint(g, max(0, -vy), s - side - max(0, vy))
        # Background of frame t that came from under the patch in t-1 (any bilinear tap on it).
        tx = np.arange(s, dtype=np.float32)[None, :] + backward[..., 0]
        ty = np.arange(s, dtype=np.float32)[:, None] + backward[..., 1]
        uncovered = (tx > x0 - 1) & (tx < x0 + side) & (ty > y0 - 1) & (ty < y0 + side)
        mask &= ~uncovered
        prev[y0:y0 + side, x0:x0 + side] = patch
        box = (slice(y0 + vy, y0 + vy + side), slice(x0 + vx, x0 + vx + side))
        cur[box] = patch
        backward[box] = (-vx, -vy)
        mask[box] = True  # the patch is fully visible in both frames


@dataclass
class SequenceBatch:
    """K consecutive frames with exact flow (distillation): frames (N, K, 3, S, S) in [0, 1];
    ``backward[:, k]`` (N, 2, S, S) takes frame k's pixels to frame k-1 (k >= 1; index 0 is zeros),
    ``to_last[:, k]`` frame K-1's pixels to frame k; ``mask`` (N, 1, S, S): pixels of frame K-1 seen
    in all K frames; ``step_mask[:, k]`` (N, 1, S, S): frame k's pixels seen in frame k-1."""

    frames: torch.Tensor
    backward: torch.Tensor
    to_last: torch.Tensor
    mask: torch.Tensor
    step_mask: torch.Tensor

    def to(self, device: str) -> "SequenceBatch":
        return SequenceBatch(*(t.to(device) for t in (self.frames, self.backward, self.to_last, self.mask,
                                                      self.step_mask)))


class SyntheticSequences(SyntheticPairs):
    """K frames of one steady camera move over a still photo (the same small affine step each frame)."""

    def sample_sequence(self, g: torch.Generator, k: int) -> tuple[np.ndarray, ...]:
        s = self.size
        photo = self._photo(g, s * _uniform(g, 1.1, 1.4))
        view = np.eye(3)
        view[:2, 2] = [-_randint(g, 0, photo.shape[1] - s), -_randint(g, 0, photo.shape[0] - s)]
        step = _camera_move(g, s)
        views = [view]
        for _ in range(k - 1):
            views.append(step @ views[-1])
        frames = np.stack([cv2.warpAffine(photo, m[:2], (s, s), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_REFLECT_101) for m in views])
        backward = np.stack([np.zeros((s, s, 2), np.float32)]
                            + [affine_flow(views[i], views[i - 1], (s, s)) for i in range(1, k)])
        to_last = np.stack([affine_flow(views[-1], views[i], (s, s)) for i in range(k)])
        step_mask = np.stack([np.ones((s, s), bool)] + [_in_frame(b) for b in backward[1:]])
        mask = np.logical_and.reduce([_in_frame(f) for f in to_last])
        return frames, backward, to_last, mask, step_mask

    def batch(self, g: torch.Generator, n: int, k: int) -> SequenceBatch:
        parts = [self.sample_sequence(g, k) for _ in range(n)]

        def t(i, chw=True):
            a = torch.from_numpy(np.stack([p[i] for p in parts]).astype(np.float32))
            return a.permute(0, 1, 4, 2, 3).contiguous() if chw else a

        return SequenceBatch(t(0), t(1), t(2), t(3, chw=False)[:, None], t(4, chw=False)[:, :, None])


# ---------------------------------------------------------------- real clips


def list_videos(folders) -> list[Path]:
    """All video files below the given folders, in a stable order."""
    files: list[Path] = []
    for folder in data_folders(folders):
        if not folder.is_dir():
            raise InputError(f"{folder}: video folder not found")
        files += sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    return files


def clip_working_size(display: tuple[int, int], crop: int, margin: float = 1.15) -> tuple[int, int]:
    """(width, height) with the short side ``margin`` x the crop (even sides), keeping the aspect."""
    w, h = display
    k = crop * margin / min(w, h)
    return max(crop, 2 * round(w * k / 2)), max(crop, 2 * round(h * k / 2))


@dataclass
class ClipPair:
    """A real pair at the clip's working size (compact: uint8 frames, float16 flow and mask)."""

    prev: np.ndarray
    cur: np.ndarray
    backward: np.ndarray
    mask: np.ndarray
    source: str
    t: int


def _clip_pairs(path: Path, crop: int, count: int, g: torch.Generator, backend) -> list[ClipPair]:
    """Up to ``count`` consecutive-frame pairs of one clip, with flow, from one sequential decode."""
    from pipeline import media
    from pipeline.flow import compute_pair

    info = media.probe(path)
    size = clip_working_size(info.display_size, crop)
    n = info.frame_count
    wanted = sorted(int(t) + 1 for t in torch.randperm(n - 1, generator=g)[:count])
    keep = set(wanted) | {t - 1 for t in wanted}
    frames = {t: f for t, f in enumerate(media.decode_frames(info, 0, wanted[-1] + 1, size)) if t in keep}
    pairs = []
    for t in wanted:
        fwd, bwd, mask = compute_pair(backend, frames[t - 1], frames[t])
        if float(mask.mean()) < MIN_RELIABLE:
            continue
        pairs.append(ClipPair(frames[t - 1], frames[t], bwd.astype(np.float16), mask.astype(np.float16),
                              path.name, t))
    return pairs


class ClipPairs:
    """Pairs from real clips with DIS flow, built once (deterministically from ``seed``)."""

    def __init__(self, videos: list[Path], size: int, *, pairs_per_clip: int = 16, seed: int = 0,
                 flow_preset: str = "medium", log=print):
        from pipeline.flow import make_flow_backend

        self.size = size
        backend = make_flow_backend("dis", preset=flow_preset)
        g = torch.Generator().manual_seed(seed)
        self.pairs: list[ClipPair] = []
        self.clips: list[str] = []
        for path in videos:
            try:
                found = _clip_pairs(path, size, pairs_per_clip, g, backend)
            except InputError as e:  # one unreadable clip should not stop training
                log(f"skipping video {path.name}: {e}")
                continue
            self.pairs += found
            self.clips.append(path.name)
            log(f"video pairs: {len(found)} from {path.name}")

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, g: torch.Generator) -> tuple[np.ndarray, ...]:
        """A random crop of a random cached pair: prev, cur uint8; backward, mask float32."""
        p = self.pairs[_randint(g, 0, len(self.pairs) - 1)]
        h, w = p.cur.shape[:2]
        y, x = _randint(g, 0, h - self.size), _randint(g, 0, w - self.size)
        box = (slice(y, y + self.size), slice(x, x + self.size))
        return p.prev[box], p.cur[box], p.backward[box].astype(np.float32), p.mask[box].astype(np.float32)


# ---------------------------------------------------------------- the mix


class PairSampler:
    """Batches of pairs, each sample synthetic or real with probability set by ``mix``.

    ``mix`` is (synthetic, video) weights; Ruder et al. mix shift:1, zoom_out:1,
    video:3. Without real clips every sample is synthetic. A fraction ``dark_fraction`` of the
    pairs, of either source, is darkened (``_darken``).
    """

    def __init__(self, files: list[Path], size: int, generator: torch.Generator, *,
                 clips: ClipPairs | None = None, mix: tuple[float, float] = (3, 1), dark_fraction: float = 0.0):
        if min(mix) < 0 or sum(mix) <= 0:
            raise InputError(f"data mix {mix} needs non-negative weights, not all zero")
        self.synthetic = SyntheticPairs(files, size) if mix[0] > 0 else None
        self.clips = clips if clips is not None and len(clips) and mix[1] > 0 else None
        if self.synthetic is None and self.clips is None:
            raise InputError("the data mix asks for real clips only, but no video pairs are available")
        if not 0.0 <= dark_fraction <= 1.0:
            raise InputError(f"dark_fraction must be in [0, 1], not {dark_fraction}")
        self.dark_fraction = dark_fraction
        self.p_synthetic = 1.0 if self.clips is None else (0.0 if self.synthetic is None else mix[0] / sum(mix))
        self.size, self.g = size, generator

    def sample_one(self) -> tuple[torch.Tensor, ...]:
        source = self.synthetic if _uniform(self.g) < self.p_synthetic else self.clips
        pair = source.sample(self.g)
        if _uniform(self.g) < 0.5:
            pair = _hflip(*pair)
        prev, cur, backward, mask = _pair_tensors(*pair)
        if self.dark_fraction and _uniform(self.g) < self.dark_fraction:
            prev, cur = _darken(self.g, prev, cur)
        return prev, cur, backward, mask

    def sample(self, batch: int) -> PairBatch:
        parts = list(zip(*(self.sample_one() for _ in range(batch))))
        return PairBatch(*(torch.stack(p) for p in parts))
