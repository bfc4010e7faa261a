"""``filmstyle preview``: see a style on a film in a minute, before committing hours to a render.

Two files: ``PREFIX.png``, a contact sheet of N moments spread over the film (one row each: the
source, then every style), and ``PREFIX.mp4``, a few seconds of source | stylized side by side
around a cut (where the temporal state resets, so the place a flicker or a pop would show).

It decodes only what it shows: each moment is one seek by time (``media.decode_at``), and the cut
is looked for in a window of low-resolution frames in the middle of the film. No content hash,
no shot detection over the whole film, no mezzanine for a VFR source: on a feature-length input
the cost is the nets', not the film's length. The nets run per frame (a style's per-frame net,
whatever method the render will use), so a moment takes one net call.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import media
from pipeline.ffmpeg_tools import tidy_rate
from pipeline.errors import InputError, OutputError

CUT_WINDOW_S = 40.0  # seconds of film searched for a cut, centred on the middle


@dataclass
class PreviewResult:
    sheet: str
    clip: str | None
    moments_s: list[float]
    cut_s: float | None  # the cut the clip is centred on (None: no cut found, the clip is the middle)
    seconds: float
    stages: dict = field(default_factory=dict)


def _stylizers(styles: list[str], device: str):
    from methods import RunSettings, make_method, resolve_style
    from pipeline.device import defaults_for

    run = RunSettings(device=device, precision=defaults_for(device).precision, batch=defaults_for(device).batch)
    return [make_method("per-frame", resolve_style(s, "per-frame"), run) for s in styles]


def _column_label(style: str) -> str:
    """A shipped name as given; a checkpoint by its file name and, when it is not a per-frame net,
    its method (a style's student beside its per-frame net must not read as the same column)."""
    if not style.endswith(".safetensors"):
        return style
    from models.checkpoint import read_card

    method = read_card(style).get("method")
    name = Path(style).stem
    return f"{name} ({method})" if method and not method.startswith("per-frame") else name


def _stylize(method, frames: np.ndarray) -> np.ndarray:
    out, _ = method.stylize(frames, 0, None)
    return out


def find_cut(info: media.VideoInfo, window_s: float = CUT_WINDOW_S) -> float | None:
    """Seconds (from the first frame) of the hard cut nearest the film's middle, within a window."""
    from pipeline.shots import CutScanner, ShotParams, detect_size

    params = ShotParams()
    start = max(0.0, info.duration / 2 - window_s / 2)
    count = max(2, int(min(window_s, info.duration) * float(info.fps)))
    frames = media.decode_at(info, start, count, detect_size(info.display_size, params))
    scanner = CutScanner(params, info.fps)
    for f in frames:
        scanner.add(f)
    cuts = [start + shot.start / float(info.fps) for shot in scanner.shots()[1:]]
    return min(cuts, key=lambda c: abs(c - info.duration / 2)) if cuts else None


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2

    tile = np.ascontiguousarray(tile)
    for colour, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, thick, cv2.LINE_AA)
    return tile


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial.png")
    try:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OutputError(f"{path}: cannot write the contact sheet")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def preview(input_path: str, styles: list[str], prefix: str, *, moments: int = 8, width: int = 480,
            clip_width: int = 320, clip_seconds: float = 5.0, device: str = "cpu", log=print) -> PreviewResult:
    """Write ``prefix``.png (contact sheet) and ``prefix``.mp4 (side by side around a cut)."""
    if not styles:
        raise InputError("preview needs at least one --style")
    if moments < 1 or clip_seconds < 0:
        raise InputError("preview: --frames must be >= 1 and --clip-seconds >= 0")
    t0 = time.perf_counter()
    stages = {}
    info = media.probe(input_path)
    out = Path(prefix)
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output folder does not exist")
    nets = _stylizers(styles, device)
    labels = [_column_label(s) for s in styles]
    stages["probe+load"] = time.perf_counter() - t0

    t = time.perf_counter()
    size = media.working_size(info, min(width, info.display_size[0]))
    span = max(info.duration - 1 / float(info.fps), 0.0)
    times = [span * (k + 0.5) / moments for k in range(moments)]
    sources = np.stack([media.decode_at(info, s, 1, size)[0] for s in times])
    stages["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    columns = [sources] + [_stylize(net, sources) for net in nets]
    stages["stylize"] = time.perf_counter() - t
    gap = 4
    rows = []
    for i, s in enumerate(times):
        tiles = [_label(columns[0][i], f"{int(s // 3600):d}:{int(s % 3600 // 60):02d}:{s % 60:05.2f}")]
        tiles += [_label(columns[j + 1][i], labels[j]) for j in range(len(nets))]
        rows.append(np.concatenate([np.pad(x, ((0, gap), (0, gap), (0, 0)), constant_values=255) for x in tiles], 1))
    sheet = out.with_name(out.name + ".png")
    _write_png(sheet, np.concatenate(rows, 0))

    clip_path, cut = None, None
    if clip_seconds > 0:
        t = time.perf_counter()
        cut = find_cut(info)
        stages["find cut"] = time.perf_counter() - t
        t = time.perf_counter()
        centre = cut if cut is not None else info.duration / 2
        start = min(max(0.0, centre - clip_seconds / 2), max(0.0, info.duration - clip_seconds))
        csize = media.working_size(info, min(clip_width, info.display_size[0]))
        frames = media.decode_at(info, start, max(1, round(clip_seconds * float(info.fps))), csize)
        styled = _stylize(nets[0], frames)
        clip_path = str(out.with_name(out.name + ".mp4"))
        rate = tidy_rate(info.fps)  # a VFR film's average rate can be an odd fraction no encoder takes
        with media.SegmentWriter(clip_path, rate, (2 * csize[0], csize[1]), crf=18, preset="veryfast") as w:
            w.write(np.concatenate([frames, styled], axis=2))
        stages["clip"] = time.perf_counter() - t
    result = PreviewResult(sheet=str(sheet), clip=clip_path, moments_s=times, cut_s=cut,
                           seconds=time.perf_counter() - t0, stages={k: round(v, 2) for k, v in stages.items()})
    if log:
        where = f"around the cut at {cut:.2f} s" if cut is not None else "from the middle (no cut found there)"
        log(f"wrote {sheet} ({moments} moments x {len(styles)} style(s))"
            + (f" and {clip_path} ({clip_seconds:g} s side by side {where})" if clip_path else "")
            + f" in {result.seconds:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in result.stages.items())})")
    return result
