"""Shot detection (PySceneDetect detectors) and shot-list I/O.

Frame numbers are indices into the decoded frame sequence (frame 0 is the first
frame ``media.decode_frames`` yields), so they line up with every other stage.
That is why we feed the detectors ourselves instead of letting SceneManager
open the file: PySceneDetect's backends number frames from timestamps, which
drifts from the decode order on variable-frame-rate input.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from . import media
from .errors import InputError

log = logging.getLogger(__name__)

# PySceneDetect's auto-downscale target: frames are shrunk until the long side is about this wide.
_DETECT_WIDTH = 256
_PROGRESS_EVERY = 24
# Two frames are "the same picture" across a short segment when their colour histograms (HSV,
# 8x4x4 bins, half the L1 distance: 0 same, 1 disjoint) differ by less than this. Measured on the
# shared clips (pyscenedetect_testvideo, goldeneye, cockatoo, bigbuckbunny, carphone): frames 3
# apart in one shot differ by 0.002-0.064 (median), 0.46 at worst (a fade, the handheld cockatoo:
# 0.38 at the 99th percentile); the hard cuts by 0.49-0.99.
_SAME_PICTURE = 0.35
# Bump when the rule turning detector cuts into shots changes: cached shot lists are recomputed.
_RULES_VERSION = 2


@dataclass(frozen=True)
class Shot:
    """Frames [start, end) of one shot; ``index`` is its position in the film."""

    index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ShotParams:
    detector: str = "adaptive"
    threshold: float | None = None  # None: the detector's own default
    min_shot_frames: int = 15
    downscale: int | None = None  # None: PySceneDetect's automatic factor

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"unknown shot detector {self.detector!r}; choose one of {', '.join(DETECTORS)}")
        if self.min_shot_frames < 1:
            raise ValueError("min_shot_frames must be >= 1")
        if self.downscale is not None and self.downscale < 1:
            raise ValueError("downscale must be >= 1 (or None for automatic)")


def _detector(class_name: str, threshold_arg: str) -> Callable[[ShotParams], object]:
    def make(params: ShotParams):
        import scenedetect.detectors  # lazy: costs ~0.3 s, and most importers only need Shot

        # The detector reports every cut; shots_from_cuts applies the minimum length, and only to
        # false detections (a short shot after a true cut stays a shot).
        kwargs: dict = {"min_scene_len": 1}
        if params.threshold is not None:
            kwargs[threshold_arg] = params.threshold
        return getattr(scenedetect.detectors, class_name)(**kwargs)

    return make


#: name -> factory(params) returning a fresh PySceneDetect detector.
DETECTORS: dict[str, Callable[[ShotParams], object]] = {
    "adaptive": _detector("AdaptiveDetector", "adaptive_threshold"),  # fast cuts, robust to camera motion
    "content": _detector("ContentDetector", "threshold"),  # fast cuts, HSV difference
    "threshold": _detector("ThresholdDetector", "threshold"),  # fades to/from black
    "hash": _detector("HashDetector", "threshold"),  # fast cuts, perceptual hash
    "histogram": _detector("HistogramDetector", "threshold"),  # fast cuts, luma histogram
}


def detect_shots(
    path: str | os.PathLike,
    params: ShotParams = ShotParams(),
    *,
    frame_count: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    source_hash: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Shot]:
    """Split a video into shots that tile [0, frame_count) with no gaps.

    ``frame_count`` defaults to the probed count. With ``cache_dir`` the result
    is stored as JSON keyed by (source hash, params, frame_count, PySceneDetect
    version) and read back on the next call without decoding. ``progress(n)``
    is called with the number of frames analysed since its last call (so
    ``tqdm.update`` fits); it is not called on a cache hit.
    """
    path = Path(path)
    cache_file = None
    if cache_dir is not None:
        source_hash = source_hash or media.content_hash(path)
        cache_file = Path(cache_dir) / f"shots-{_cache_key(source_hash, params, frame_count)}.json"
        if cache_file.exists():
            try:
                shots = read_shots(cache_file)
                log.info("shots: cache hit %s", cache_file)
                return shots
            except InputError as e:  # a damaged cache entry only costs a re-detection
                log.warning("shots: ignoring cache entry: %s", e)
    shots = _detect(path, params, frame_count, progress)
    if cache_file is not None:
        write_shots(shots, cache_file)
    return shots


def _cache_key(source_hash: str, params: ShotParams, frame_count: int | None) -> str:
    blob = json.dumps(
        {"source": source_hash, "params": asdict(params), "frames": frame_count, "scenedetect": version("scenedetect"),
         "rules": _RULES_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Pictures:
    """A colour histogram per analysed frame (256 bytes each: 33 MB for 90 minutes at 24 fps)."""

    def __init__(self):
        self.hists: list[np.ndarray] = []

    def add(self, rgb: np.ndarray) -> None:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
        self.hists.append((h / max(h.sum(), 1.0)).astype(np.float16))

    def same(self, i: int, j: int) -> bool:
        a, b = self.hists[i].astype(np.float32), self.hists[j].astype(np.float32)
        return 0.5 * float(np.abs(a - b).sum()) < _SAME_PICTURE


class CutScanner:
    """Frames in, one at a time, through a PySceneDetect detector; shots out (``shots_from_cuts``)."""

    def __init__(self, params: ShotParams, fps):
        self.params, self.fps = params, fps
        self.detector = DETECTORS[params.detector](params)
        self.pictures = _Pictures()
        self.cuts: list = []

    def add(self, rgb: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        n = len(self.pictures.hists)
        self.pictures.add(rgb)
        # Detectors expect OpenCV's BGR order (hue matters to the content score).
        self.cuts += self.detector.process_frame(FrameTimecode(n, self.fps), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def shots(self) -> list[Shot]:
        from scenedetect import FrameTimecode

        total = len(self.pictures.hists)
        cuts = self.cuts + self.detector.post_process(FrameTimecode(max(0, total - 1), self.fps))
        return shots_from_cuts([tc.frame_num for tc in cuts], total, self.params.min_shot_frames,
                               same_picture=self.pictures.same)


def detect_size(display_size: tuple[int, int], params: ShotParams) -> tuple[int, int]:
    """The size frames are analysed at (PySceneDetect's automatic downscale, or ``params.downscale``)."""
    width, height = display_size
    factor = params.downscale or max(1.0, max(width, height) / _DETECT_WIDTH)
    return max(2, round(width / factor)), max(2, round(height / factor))


def _detect(path: Path, params: ShotParams, frame_count: int | None, progress) -> list[Shot]:
    """Run the detector over downscaled frames of the whole file."""
    info = media.probe(path)
    total = info.frame_count if frame_count is None else frame_count
    scanner = CutScanner(params, info.fps)
    for n, rgb in enumerate(media.decode_frames(info, 0, total, detect_size(info.display_size, params),
                                                chunk_hint=_PROGRESS_EVERY)):
        scanner.add(rgb)
        if progress is not None and (n + 1) % _PROGRESS_EVERY == 0:
            progress(_PROGRESS_EVERY)
    if progress is not None and total % _PROGRESS_EVERY:
        progress(total % _PROGRESS_EVERY)
    return scanner.shots()


def shots_from_cuts(cuts: Iterable[int], frame_count: int, min_frames: int = 1,
                    same_picture: Callable[[int, int], bool] | None = None) -> list[Shot]:
    """Shots between cut frames (first frames of new shots).

    ``min_frames`` only removes false detections, never a short shot after a true cut. Cuts
    less than ``min_frames`` apart form a group:
    - two cuts around a segment after which the picture comes back (``same_picture(frame before
      it, frame after it)``) are a flash: neither is a cut. Otherwise the segment is a short shot.
    - three or more are a burst (a fade, a whip pan crossing the threshold frame after frame):
      the first is the cut, unless the picture comes back after the last (a flicker: none).
    - a cut less than ``min_frames`` after the first frame is a fade-in's artefact.
    Any other short segment is a shot, the last one of the film included. Without
    ``same_picture`` (a cut list without its frames) no picture is taken to come back.
    """
    if frame_count < 1:
        raise ValueError(f"frame_count must be >= 1, got {frame_count}")
    kept = [c for c in sorted(set(cuts)) if min_frames <= c < frame_count]
    groups: list[list[int]] = []
    for c in kept:
        if groups and c - groups[-1][-1] < min_frames:
            groups[-1].append(c)
        else:
            groups.append([c])
    bounds = [0]
    for g in groups:
        comes_back = len(g) > 1 and same_picture is not None and same_picture(g[0] - 1, g[-1])
        if comes_back:
            continue
        bounds += g if len(g) == 2 else g[:1]
    bounds.append(frame_count)
    return [Shot(i, a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def check_tiling(shots: Sequence[Shot], frame_count: int | None = None) -> None:
    """Raise ValueError unless shots are numbered 0..n-1 and tile [0, frame_count) contiguously."""
    if not shots:
        raise ValueError("shot list is empty")
    expected_start = 0
    for i, shot in enumerate(shots):
        if shot.index != i:
            raise ValueError(f"shot {i} has index {shot.index}; shots must be numbered 0..{len(shots) - 1} in order")
        if shot.start != expected_start:
            gap = "gap" if shot.start > expected_start else "overlap"
            raise ValueError(f"shot {i} starts at frame {shot.start}, expected {expected_start} ({gap})")
        if shot.end <= shot.start:
            raise ValueError(f"shot {i} is empty or reversed: [{shot.start}, {shot.end})")
        expected_start = shot.end
    if frame_count is not None and expected_start != frame_count:
        raise ValueError(f"shots end at frame {expected_start} but the video has {frame_count} frames")


def write_shots(shots: Sequence[Shot], path: str | os.PathLike) -> Path:
    """Write shots as .json ({"shots": [...]}) or .csv (index,start,end), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: shot lists are .json or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            if suffix == ".json":
                json.dump({"shots": [asdict(s) for s in shots]}, f, indent=1)
            else:
                writer = csv.writer(f)
                writer.writerow(["index", "start", "end"])
                writer.writerows((s.index, s.start, s.end) for s in shots)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_shots(path: str | os.PathLike) -> list[Shot]:
    """Read a shot list written by :func:`write_shots` (or edited by hand) and check it tiles."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())["shots"]
        elif path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            raise InputError(f"{path}: shot lists are .json or .csv")
        shots = [Shot(int(r.get("index", i)), int(r["start"]), int(r["end"])) for i, r in enumerate(rows)]
        check_tiling(shots)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: not a valid shot list ({e})") from e
    return shots
