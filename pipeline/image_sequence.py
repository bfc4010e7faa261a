"""Image-sequence masters: a rendered video -> a folder of numbered PNG/TIFF/EXR frames, the film's
audio beside them as WAV files, and a manifest, put in place only when all of it is written.

The folder ``NAME/`` holds ``NAME.0000000.png`` ... (numbered from 0, the render's first frame),
``NAME.audio1.wav`` ... (one per audio stream of the source) and ``filmstyle-sequence.json``: frame
rate, frame count, pattern, colour, and each WAV's offset to frame 0. Audio that starts after the
first frame is padded with silence, so every WAV lines up with frame 0 as an editor places it;
audio that starts *before* the picture (a lead-in) keeps every sample, starts earlier, and the
manifest gives the negative offset. A render of part of the film gets the audio of that part.
WAVs switch to RF64 past 4 GiB (a 90-minute 5.1 mix at 24 bits is 4.7 GB).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from fractions import Fraction
from pathlib import Path

import av

from . import ffmpeg_tools as ft
from .delivery import SEQUENCE_MANIFEST, Delivery
from .errors import OutputError

EXTENSIONS = {"png": "png", "tiff": "tif", "exr": "exr"}


def frame_pattern(name: str, delivery: Delivery) -> str:
    return f"{name}.%07d.{EXTENSIONS[delivery.codec]}"


def _images_cmd(video: str, pattern: str, delivery: Delivery, source) -> list[str]:
    """The lossless RGB video -> numbered images in the delivery's format. EXR gets display-linear
    values (the transfer undone), as compositing software reads it."""
    import ffmpeg

    spec = delivery.spec
    opts = {"c:v": spec.encoder, "pix_fmt": delivery.pix_fmt, "start_number": 0, "format": "image2",
            **spec.options}
    if delivery.codec == "exr":
        opts["vf"] = delivery.linear_filter(source)
        opts["format:v"] = "half" if delivery.depth == 16 else "float"
    return ft.build_cmd(ffmpeg.input(video).output(pattern, **opts))


def _stream_start(path: str, index: int) -> float | None:
    with av.open(path) as c:
        s = c.streams[index]
        return None if s.start_time is None else float(s.start_time * s.time_base)


def _wav_cmd(info, stream, out: str, delay: float, partial_s: float | None) -> list[str]:
    """One audio stream -> WAV (its own PCM codec, else 24-bit), padded by ``delay`` seconds when
    it starts after the picture; ``partial_s``: only the picture's span (a partial render)."""
    import ffmpeg

    sr = stream.sample_rate
    filters = []
    if delay > 0:
        filters.append(f"adelay=delays={round(delay * sr)}S:all=1")
    elif delay < 0 and partial_s is not None:  # a partial render starts at its first frame
        filters.append(f"atrim=start_sample={round(-delay * sr)}")
        filters.append("asetpts=PTS-STARTPTS")
    if partial_s is not None:
        filters.append(f"atrim=end_sample={round(partial_s * sr)}")
    codec = stream.codec if stream.codec in ("pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le") else "pcm_s24le"
    opts = {"c:a": codec, "format": "wav", "rf64": "auto", "map_metadata": -1}
    if filters:
        opts["af"] = ",".join(filters)
    src = ffmpeg.input(info.path)
    return ft.build_cmd(ffmpeg.output(src[str(stream.index)], out, **opts))


def write_sequence(video: str, folder: str | os.PathLike, *, source, delivery: Delivery, fps: Fraction,
                   frames: int) -> Path:
    """Write the image sequence of ``video`` (the render's concatenated lossless segments), the
    audio of ``source`` (a VideoInfo or None) and the manifest into ``folder``, atomically: they
    are written into a hidden sibling folder that replaces ``folder`` when everything succeeded."""
    target = Path(folder)
    name = target.name
    tmp = target.with_name(f".{name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        tmp.mkdir(parents=False)
    except OSError as e:
        raise OutputError(f"{target}: cannot write in {target.parent} ({e.strerror})") from None
    try:
        tags = delivery.tags(source)
        pattern = frame_pattern(name, delivery)
        proc = ft.run(_images_cmd(video, str(tmp / pattern), delivery, source))
        if proc.returncode != 0:
            raise OutputError(f"{target}: writing the images failed ({ft.last_error_line(proc.stderr)})")
        written = len(list(tmp.glob(f"{name}.*.{EXTENSIONS[delivery.codec]}")))
        if written != frames:
            raise OutputError(f"{target}: wrote {written} images of {frames} frames")
        audio = _write_audio(source, tmp, name, fps, frames) if source is not None else []
        manifest = {"frames": frames, "fps": f"{fps.numerator}/{fps.denominator}", "pattern": pattern,
                    "first_number": 0, "delivery": delivery.to_dict(),
                    "colour": {"primaries": tags.primaries,
                               "transfer": "linear" if delivery.codec == "exr" else tags.transfer},
                    "audio": audio, "source": os.path.basename(source.path) if source is not None else None}
        (tmp / SEQUENCE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_audio(info, folder: Path, name: str, fps: Fraction, frames: int) -> list[dict]:
    picture_start = info.start_time
    partial = None if frames >= info.frame_count else float(Fraction(frames) / Fraction(fps))
    out = []
    for k, stream in enumerate(info.audio, start=1):
        start = _stream_start(info.path, stream.index)
        delay = 0.0 if start is None else start - picture_start
        wav = f"{name}.audio{k}.wav"
        proc = ft.run(_wav_cmd(info, stream, str(folder / wav), delay, partial))
        if proc.returncode != 0:
            raise OutputError(f"{folder}: writing audio stream {stream.index} failed "
                              f"({ft.last_error_line(proc.stderr)})")
        offset = 0.0 if delay > 0 or partial is not None else delay
        out.append({"file": wav, "offset_s": round(offset, 6), "source_stream": stream.index,
                    "sample_rate": stream.sample_rate, "channels": stream.channels,
                    "language": stream.language})
    return out


def _swap_into_place(tmp: Path, target: Path) -> None:
    """``tmp`` becomes ``target``; an earlier sequence there is replaced (check_output let only an
    empty folder or filmstyle's own sequence through)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
