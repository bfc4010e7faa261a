"""Probe a video file (PyAV): what the pipeline needs to know before it decodes a frame.

``probe`` counts the frames that really decode (from packet timestamps, without decoding them
all), finds the true frame rate of constant- and variable-rate files, the display geometry
(SAR, rotation), the colour tags, whether ffmpeg can seek the container frame-exactly, and the
audio and subtitle streams to carry into the output. ``VideoInfo`` is the value every later
stage plans with; it round-trips through JSON for the render plan and the node files.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline import ffmpeg_tools as ft
from pipeline.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["AudioStream", "SubtitleStream", "VideoInfo", "probe", "existing_file"]

# --------------------------------------------------------------------------- value types

@dataclass(frozen=True)
class AudioStream:
    index: int  # absolute stream index in the source container
    codec: str
    channels: int
    sample_rate: int
    language: str | None = None


@dataclass(frozen=True)
class SubtitleStream:
    index: int
    codec: str
    language: str | None = None


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: Fraction
    frame_count: int
    duration: float
    width: int
    height: int
    sar: Fraction
    rotation: int
    pix_fmt: str
    color_space: str | None
    color_range: str | None
    color_primaries: str | None
    color_trc: str | None
    codec: str
    is_vfr: bool
    audio: tuple[AudioStream, ...] = ()
    subtitles: tuple[SubtitleStream, ...] = ()
    # Timestamp (seconds, as stored in the file) of frame 0: frame k is shown at
    # about start_time + k / fps. Seeks use absolute timestamps (-seek_timestamp)
    # so ffmpeg's choice of the file's start time never shifts a frame index.
    start_time: float = 0.0
    video_index: int = 0  # absolute index of the video stream used
    # ffmpeg seeks this container frame-exactly (MP4/MOV with a sample table,
    # Matroska). MPEG-TS, FLV, fragmented MP4... may land after the target or
    # nowhere: decode_frames then decodes from frame 0 and picks by index, and
    # normalize_vfr remuxes them (stream copy) into Matroska once.
    seekable: bool = True

    @property
    def bit_depth(self) -> int:
        """Bits per sample of the video (8 when the pixel format is unknown)."""
        try:
            import av

            fmt = av.VideoFormat(self.pix_fmt)
            return max(c.bits for c in fmt.components) if fmt.components else 8
        except (ValueError, TypeError):
            return 8

    @property
    def display_size(self) -> tuple[int, int]:
        """Square-pixel size as shown: width scaled by SAR, then swapped for 90/270."""
        w = max(1, round(self.width * self.sar))
        h = self.height
        return (h, w) if self.rotation in (90, 270) else (w, h)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fps"] = ft.rational(self.fps)
        d["sar"] = ft.rational(self.sar)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VideoInfo":
        d = dict(d)
        d["fps"] = Fraction(d["fps"])
        d["sar"] = Fraction(d["sar"])
        d["audio"] = tuple(AudioStream(**a) for a in d.get("audio", ()))
        d["subtitles"] = tuple(SubtitleStream(**s) for s in d.get("subtitles", ()))
        return cls(**d)


# --------------------------------------------------------------------------- probe

_MOV_FAMILY = ("mov", "mp4")


def probe(path) -> VideoInfo:
    """Describe the first video stream of ``path``; raise InputError if it is unusable."""
    p = existing_file(path)
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"{p}: cannot be read as video: corrupt, truncated or not a media "
                         f"file ({_av_reason(e)})") from None
    with container:
        stream = _video_stream(container, p)
        timing = _packet_timing(container, stream, p)
        ctx = stream.codec_context
        tags = _colour_tags(ctx)
        audio = tuple(_audio_info(s) for s in container.streams.audio)
        subs = tuple(_subtitle_info(s) for s in container.streams.subtitles)
        base = dict(path=str(p), width=ctx.width, height=ctx.height,
                    sar=_sar(stream), pix_fmt=ctx.pix_fmt or "unknown", codec=ctx.name,
                    audio=audio, subtitles=subs, video_index=stream.index,
                    start_time=float((stream.start_time or 0) * stream.time_base))
    frame_count = timing["count"]
    if timing["truncated"]:
        # The index promises more than the file holds: a cut-off download or copy.
        # Rendering what decodes would deliver a silently shortened film.
        raise InputError(f"{p}: file is truncated: its index lists {frame_count} frames but the data ends early")
    if frame_count < 2:
        what = "has no decodable frames" if frame_count == 0 else "has only 1 frame"
        raise InputError(f"{p}: {what}; need at least 2")
    rotation, frame_tags = _first_frame_props(p, base["video_index"])
    tags = {k: v or frame_tags.get(k) for k, v in tags.items()}
    fps, is_vfr, duration = _rate(timing, frame_count, stream_fallback=timing["rates"], path=p)
    return VideoInfo(fps=fps, frame_count=frame_count, duration=duration, rotation=rotation,
                     is_vfr=is_vfr, seekable=timing["seekable"], **tags, **base)


def existing_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if not p.is_file():
        raise InputError(f"{p}: is not a regular file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty (0 bytes)")
    return p


def _av_reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


def _video_stream(container, p: Path):
    # Cover art in audio files is a one-picture "video" stream: not a film.
    streams = [s for s in container.streams.video
               if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        raise InputError(f"{p}: has no video stream")
    return streams[0]


def _packet_timing(container, stream, p: Path) -> dict:
    """Frame timestamps (stream time base) without decoding, and whether seeks are exact.

    MP4/MOV carry a full sample table: read it from the index (no I/O). Other
    containers are demuxed (video packets only). Truncation is flagged when
    the index points past the end of the file.
    """
    rates = [r for r in (stream.guessed_rate, stream.average_rate) if r]
    info = {"tb": stream.time_base, "rates": rates, "truncated": False,
            "duration": stream.duration, "seekable": False}
    fmt = container.format.name
    entries = stream.index_entries if any(f in fmt for f in _MOV_FAMILY) else None
    if entries is not None and len(entries) > 0:
        size = p.stat().st_size
        kept = [e for e in entries if not e.is_discard]
        info["truncated"] = any(e.pos + e.size > size for e in kept)
        # Decode times of every sample (edit-list discards too): same spacing as pts.
        info["ts"] = sorted(e.timestamp for e in entries)
        info["count"] = len(kept)
        info["seekable"] = not _is_fragmented_mp4(p)
        return info
    ts, count, keyed = [], 0, False
    try:
        for pkt in container.demux(stream):
            # Flush packets, and (streams cut mid-GOP) packets before the first
            # keyframe, which no decoder can show.
            keyed = keyed or pkt.is_keyframe
            if pkt.size == 0 or not keyed:
                continue
            if pkt.pts is not None:
                ts.append(pkt.pts)
            count += not pkt.is_discard  # frames an edit list drops are not shown
    except av.FFmpegError as e:
        log.warning("%s: demuxing stopped early (%s)", p, _av_reason(e))
        info["truncated"] = True
    info.update(ts=sorted(ts), count=count, seekable=fmt == "matroska,webm")
    return info


def _is_fragmented_mp4(p: Path) -> bool:
    """True when top-level 'moof' boxes exist (seeking there may land past the target)."""
    with open(p, "rb") as f:
        for _ in range(1000):
            header = f.read(8)
            if len(header) < 8:
                return False
            size, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind == b"moof":
                return True
            if size == 1:
                size = int.from_bytes(f.read(8), "big") - 8
            elif size == 0:
                return False  # box runs to the end of the file
            f.seek(size - 8, os.SEEK_CUR)
    return False


def _rate(timing: dict, count: int, stream_fallback, path: Path):
    """(fps, is_vfr, duration) from presentation-timestamp deltas.

    CFR: a constant delta gives the exact rate (1001 ticks of 1/30000 -> 30000/1001);
    rounded timestamps (Matroska's 1 ms) are matched to the container's declared
    rate. VFR: the average rate, frame_count / stream duration.
    """
    tb = Fraction(timing["tb"]) if timing["tb"] else None
    ts = timing["ts"][:count]
    deltas = np.diff(np.asarray(ts, dtype=np.int64)) if len(ts) >= 2 and tb else None
    if deltas is None or len(deltas) == 0 or deltas.max() <= 0:
        if not stream_fallback:
            raise InputError(f"{path}: has no timestamps or frame rate")
        fps = Fraction(stream_fallback[0])
        return fps, False, float(count / fps)
    mean = (ts[-1] - ts[0]) / len(deltas)
    tolerance = max(1.0, 0.005 * mean)  # one tick of rounding, or 0.5 % jitter
    is_vfr = bool(np.abs(deltas - mean).max() > tolerance + 1e-9)
    if not is_vfr:
        fps = _cfr_rate(deltas, mean, tb, stream_fallback)
        return fps, False, float(count / fps)
    span = timing["duration"] or (ts[-1] - ts[0] + int(np.median(deltas)))
    duration = Fraction(span) * tb
    return Fraction(count) / duration, True, float(duration)


def _cfr_rate(deltas, mean: float, tb: Fraction, declared) -> Fraction:
    if deltas.min() == deltas.max():
        return 1 / (int(deltas[0]) * tb)
    # Rounded timestamps (Matroska/FLV 1 ms): the simplest rate whose ideal span
    # matches the measured one within the rounding (one tick over the whole run).
    span = mean * len(deltas)
    for rate in (*ft.COMMON_RATES, *declared):
        if abs(float(len(deltas) / (Fraction(rate) * tb)) - span) <= 1.0 + 1e-6:
            return Fraction(rate)
    return Fraction(1 / (mean * float(tb))).limit_denominator(1001)


def _sar(stream) -> Fraction:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar and sar > 0 else Fraction(1)


def _colour_tags(ctx) -> dict:
    return {"color_space": ft.COLOR_SPACES.get(ctx.colorspace),
            "color_range": ft.COLOR_RANGES.get(ctx.color_range),
            "color_primaries": ft.COLOR_PRIMARIES.get(ctx.color_primaries),
            "color_trc": ft.COLOR_TRCS.get(ctx.color_trc)}


def _first_frame_props(p: Path, index: int) -> tuple[int, dict]:
    """Rotation (display matrix side data) and colour tags of the first decoded frame.

    PyAV exposes the display matrix only on frames. Its angle is
    counter-clockwise; we report the clockwise turn needed for display.
    """
    try:
        with av.open(str(p), metadata_errors="ignore") as c:
            stream = c.streams[index]
            frame = next(c.decode(stream), None)
    except av.FFmpegError as e:
        raise InputError(f"{p}: video does not decode ({_av_reason(e)})") from None
    if frame is None:
        raise InputError(f"{p}: has no decodable frames; need at least 2")
    ccw = frame.rotation or 0
    rotation = (-round(ccw / 90) * 90) % 360
    tags = {"color_space": ft.COLOR_SPACES.get(frame.colorspace),
            "color_range": ft.COLOR_RANGES.get(frame.color_range),
            "color_primaries": ft.COLOR_PRIMARIES.get(frame.color_primaries),
            "color_trc": ft.COLOR_TRCS.get(frame.color_trc)}
    return rotation, tags


def _language(stream) -> str | None:
    lang = (stream.metadata or {}).get("language")
    return None if not lang or lang == "und" else lang


def _audio_info(s) -> AudioStream:
    ctx = s.codec_context
    return AudioStream(index=s.index, codec=ctx.name, channels=ctx.channels,
                       sample_rate=ctx.sample_rate, language=_language(s))


def _subtitle_info(s) -> SubtitleStream:
    ctx = s.codec_context
    name = ctx.name if ctx is not None else "unknown"
    return SubtitleStream(index=s.index, codec=name, language=_language(s))
