"""ffmpeg command lines and process helpers for pipeline.media.

ffmpeg-python only *builds* command lines here; media.py starts and watches
the processes itself (ffmpeg-python would call ffprobe, which the bundled
static ffmpeg lacks, and it does not drain stderr while we stream stdout).
Also: colour tag tables, how untagged sources are decoded, and which audio
and subtitle codecs go into which container.
"""
from __future__ import annotations

import collections
import functools
import io
import logging
import math
import os
import shutil
import subprocess
import threading
from fractions import Fraction
from typing import Sequence

import av
import ffmpeg

log = logging.getLogger(__name__)

# Global options go right after the binary: ffmpeg >= 7 ignores trailing options.
GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-y", "-loglevel", "error")


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """$FILMSTYLE_FFMPEG, then ffmpeg on PATH, then imageio-ffmpeg's static build."""
    env = os.environ.get("FILMSTYLE_FFMPEG")
    if env:
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # imported late: only needed when nothing else exists

    return imageio_ffmpeg.get_ffmpeg_exe()


def build_cmd(stream: "ffmpeg.nodes.OutputStream", *extra_global: str) -> list[str]:
    """Compile an ffmpeg-python graph with our global options in front."""
    compiled = stream.compile(cmd=ffmpeg_binary())
    return [compiled[0], *GLOBAL_ARGS, *extra_global, *compiled[1:]]


def rational(value: Fraction) -> str:
    """'30000/1001' style string ffmpeg parses exactly (a float would round)."""
    value = Fraction(value)
    return f"{value.numerator}/{value.denominator}"


def size_arg(size: Sequence[int]) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def track_timescale(fps: Fraction) -> int:
    """A movie timescale that represents every frame duration exactly.

    Segments and the assembled film must all use the same one, so concat by
    stream copy never has to re-round timestamps.
    """
    num = Fraction(fps).numerator
    return num * 90000 // math.gcd(num, 90000)


class StderrDrain:
    """Reads a process's stderr on a thread so a chatty ffmpeg never blocks on a full pipe."""

    def __init__(self, pipe, keep_lines: int = 40):
        self._pipe = pipe
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in iter(self._pipe.readline, b""):
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self._lines.append(line)
        except (OSError, ValueError):
            pass  # pipe closed under us while killing the process

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def last_line(self) -> str:
        """The most useful single line of ffmpeg's complaint (for one-line errors)."""
        return self._lines[-1] if self._lines else "no error output"

    def text(self) -> str:
        return "\n".join(self._lines)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ffmpeg to completion; stdout discarded, stderr captured (communicate drains it)."""
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)


def last_error_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no error output"


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Kill a still-running ffmpeg and reap it (used when a consumer stops early)."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - kill is not ignorable
        pass
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except (OSError, ValueError):
                pass


# AVColorSpace / AVColorRange / AVColorPrimaries / AVColorTransferCharacteristic
# numbers (as PyAV reports them) -> ffmpeg's names. 2 / 0 mean "unspecified".
COLOR_SPACES = {0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                8: "ycgco", 9: "bt2020nc", 10: "bt2020c", 11: "smpte2085",
                12: "chroma-derived-nc", 13: "chroma-derived-c", 14: "ictcp"}
COLOR_RANGES = {1: "tv", 2: "pc"}
COLOR_PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                   8: "film", 9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432",
                   22: "ebu3213"}
COLOR_TRCS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m",
              8: "linear", 9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e",
              13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084",
              17: "smpte428", 18: "arib-std-b67"}

# Source matrix tag -> the scale filter's in_color_matrix value.
_SCALE_MATRIX = {"bt709": "bt709", "bt470bg": "bt601", "smpte170m": "bt601", "fcc": "fcc",
                 "smpte240m": "smpte240m", "bt2020nc": "bt2020", "bt2020c": "bt2020"}


def input_matrix(color_space: str | None, width: int, height: int) -> str:
    """YCbCr matrix to decode with.

    Tagged sources use their tag. Untagged ones follow what players do (and
    what encoders of such files almost always assumed): HD and larger
    (width >= 1280 or height >= 720) is BT.709, SD is BT.601.
    """
    if color_space in _SCALE_MATRIX:
        return _SCALE_MATRIX[color_space]
    return "bt709" if (width >= 1280 or height >= 720) else "bt601"


def input_range(color_range: str | None, pix_fmt: str) -> str:
    """Untagged YUV is limited (tv) range, except the legacy full-range yuvj formats."""
    if color_range in ("tv", "pc"):
        return color_range
    return "pc" if pix_fmt.startswith("yuvj") else "tv"


def build_graph(*parts: str) -> str:
    return ",".join(p for p in parts if p)


# --------------------------------------------------------------------------- pipes

def read_into(pipe, buf: memoryview) -> int:
    """Fill ``buf`` from a raw pipe; returns bytes read (short only at EOF)."""
    got = 0
    while got < len(buf):
        n = pipe.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def grow_pipe(pipe, nbytes: int) -> None:
    """Bigger pipe buffer = fewer context switches per frame (Linux only; best effort)."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), 1031, min(nbytes, 1 << 20))  # F_SETPIPE_SZ
    except (ImportError, OSError):
        pass


# --------------------------------------------------------------------------- command lines

def decode_cmd(info, start: int, count: int, size: tuple[int, int], deep: bool = False) -> list[str]:
    """ffmpeg -> rawvideo rgb24 (``deep``: rgb48le) on stdout for frames [start, start + count) of a
    VideoInfo.

    CFR: input-side -ss to half a frame before ``start``, as an absolute
    timestamp (-seek_timestamp: ffmpeg's idea of the file's start time, which
    depends on the streams mapped, never shifts it). ffmpeg seeks to the
    preceding keyframe, decodes, and drops frames whose pts is before the
    target, so the first frame out is exactly ``start``. VFR sources and
    containers that do not seek exactly: no seek; select by decoded index
    (exact, but reads from frame 0). Autorotation runs before our filters, so
    ``size`` is in display orientation.
    """
    in_opts, select = {}, ""
    if start > 0 and (info.is_vfr or not info.seekable):
        select = rf"select=gte(n\,{start})"
    elif start > 0:
        target = info.start_time + (start - 0.5) / float(info.fps)
        in_opts.update(seek_timestamp=1, ss=f"{target:.6f}")
    rgb = "rgb48le" if deep else "rgb24"
    out = ffmpeg.input(info.path, **in_opts).output(
        "pipe:", format="rawvideo", pix_fmt=rgb, map=f"0:{info.video_index}",
        vf=build_graph(select, _rgb_scale(info, size), f"format={rgb}"), fps_mode="passthrough",
        **{"frames:v": count})
    return build_cmd(out)


def decode_at_cmd(info, seconds: float, count: int, size: tuple[int, int]) -> list[str]:
    """ffmpeg -> rawvideo rgb24 for ``count`` frames from ``seconds`` after the first frame: a seek
    by timestamp (to the frame shown then, not an exact index on VFR or MPEG-TS input), so a look at
    one moment of a long film decodes from one keyframe, never from the start."""
    target = info.start_time + max(0.0, seconds)
    out = ffmpeg.input(info.path, seek_timestamp=1, ss=f"{target:.6f}").output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", map=f"0:{info.video_index}",
        vf=build_graph("", _rgb_scale(info, size), "format=rgb24"), fps_mode="passthrough",
        **{"frames:v": count})
    return build_cmd(out)


def _rgb_scale(info, size: tuple[int, int]) -> str:
    """Scale to ``size`` with the source's matrix and range, to full-range RGB."""
    dw, dh = info.display_size
    shrink = size[0] <= dw and size[1] <= dh and tuple(size) != (dw, dh)
    return (f"scale={size[0]}:{size[1]}"
            f":flags={'area' if shrink else 'bicubic'}+accurate_rnd+full_chroma_int"
            f":in_color_matrix={input_matrix(info.color_space, info.width, info.height)}"
            f":in_range={input_range(info.color_range, info.pix_fmt)}:out_range=pc")


SEGMENT_FORMATS = {".mp4": "mp4", ".mov": "mov", ".m4v": "mp4", ".mkv": "matroska", ".ts": "mpegts"}


def encode_cmd(path: str, fps: Fraction, size: tuple[int, int], delivery, info=None, *, gop: int | None = None,
               threads: int | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """rawvideo rgb24 (rgb48le for a delivery deeper than 8 bits) on stdin -> one segment of ``delivery`` (``pipeline.delivery``) with fixed,
    concat-safe settings.

    The frames are in the source's (``info``'s) primaries and transfer; they are converted to the
    delivery's colour when it differs, then to YCbCr with the output's matrix in limited range (or
    kept RGB, full range, for lossless image-sequence segments) and tagged so (ffmpeg >= 7 takes the
    encoder's colour tags from the frames).
    """
    fmt = SEGMENT_FORMATS.get(os.path.splitext(path)[1].lower(), "mp4")
    tags, pix_fmt = delivery.tags(info), delivery.segment_pix_fmt
    rgb = delivery.sequence
    rng = "pc" if rgb else "tv"
    vf = build_graph(
        delivery.convert_filter(info),
        "" if rgb else ("scale=flags=bicubic+accurate_rnd+full_chroma_int:in_range=pc"
                        f":out_color_matrix={delivery.out_matrix(info)}:out_range=tv"),
        f"format={pix_fmt}",
        f"setparams=colorspace={'gbr' if rgb else tags.matrix}:color_primaries={tags.primaries}"
        f":color_trc={tags.transfer}:range={rng}")
    encoder, codec_opts = delivery.segment_encoder()
    opts = {"c:v": encoder, "pix_fmt": pix_fmt, "an": None, "format": fmt, "vf": vf,
            "colorspace": "rgb" if rgb else tags.matrix, "color_primaries": tags.primaries,
            "color_trc": tags.transfer, "color_range": rng, "fps_mode": "cfr", "r": rational(fps),
            "flags": "+cgop", **codec_opts}  # closed GOPs: every segment decodes on its own
    if gop:
        opts["g"] = gop
    if threads:
        opts["threads"] = threads
    if fmt in ("mp4", "mov"):
        opts["video_track_timescale"] = track_timescale(fps)
    out = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb48le" if delivery.depth > 8 else "rgb24",
                       s=size_arg(size), framerate=rational(fps)).output(path, **opts)
    cmd = build_cmd(out)
    cmd[-1:-1] = list(extra_args)  # just before the output file name
    return cmd


OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska",
                  ".webm": "webm"}


def assemble_cmd(listfile: str, out: str, info, fmt: str, fps: Fraction, frames: int,
                 audio: bool, subtitles: bool, lead: float = 0.0) -> list[str]:
    """Concat demuxer + stream copy for video; the source's audio/subtitles mapped beside it.

    A render of the whole film keeps all of the source's audio: what plays before the first
    frame (``lead``: seconds from the file's first timestamp to its first video frame), after
    the last one, and where it starts late. ffmpeg starts each input at the file's first
    timestamp; the source is shifted by ``-lead`` so that its first video frame falls on the
    rendered first frame, and audio before it gets negative times, which the muxer turns into
    a start offset of the picture (``avoid_negative_ts``), so every offset survives. A render
    of part of the film takes the source from the timestamp of its first frame (absolute -ss)
    for as long as the picture lasts (-t).
    """
    video_in = ffmpeg.input(listfile, format="concat", safe=0)
    streams, opts = [video_in["v:0"]], {"c:v": "copy", "format": fmt}
    if fmt in ("mp4", "mov"):
        opts.update(video_track_timescale=track_timescale(fps), movflags="+faststart")
    if info is not None and (audio and info.audio or subtitles and info.subtitles):
        if frames >= info.frame_count:
            src = ffmpeg.input(info.path, itsoffset=f"{-lead:.6f}")
            opts["avoid_negative_ts"] = "make_non_negative"
        else:
            src = ffmpeg.input(info.path, seek_timestamp=1, ss=f"{info.start_time:.6f}",
                               t=f"{float(Fraction(frames) / Fraction(fps)):.6f}")
        for wanted, mapper in ((audio, audio_map), (subtitles, subtitle_map)):
            if wanted:
                more, more_opts = mapper(info, fmt, src)
                streams += more
                opts.update(more_opts)
        opts["map_metadata"] = 1
    return build_cmd(ffmpeg.output(*streams, out, **opts))


def mezzanine_cmd(info, out: str, rate: Fraction) -> list[str]:
    """VFR source -> near-lossless CFR x264 video at ``rate`` (video only: ``-frames:v`` would end
    the audio with the picture; ``mux_cmd`` adds the source's audio and subtitles after)."""
    src = ffmpeg.input(info.path)
    opts = {"c:v": "libx264", "crf": 10, "preset": "veryfast", "fps_mode": "cfr",
            "r": rational(rate), "format": "matroska", "map_metadata": 0,
            # CFR resampling may pad the tail: keep exactly the source's duration
            "frames:v": max(2, round(info.duration * rate))}
    return build_cmd(ffmpeg.output(src[str(info.video_index)], out, **opts))


def mux_cmd(video: str, info, out: str) -> list[str]:
    """The video of ``video`` beside every audio and subtitle stream of the source ``info``, all
    stream copies, in Matroska; both inputs start at their first timestamp, as they did."""
    v, src = ffmpeg.input(video), ffmpeg.input(info.path)
    a_streams, a_opts = audio_map(info, "matroska", src)
    s_streams, s_opts = subtitle_map(info, "matroska", src)
    return build_cmd(ffmpeg.output(v["v:0"], *a_streams, *s_streams, out, format="matroska", map_metadata=1,
                                   **{"c:v": "copy", **a_opts, **s_opts}))


def remux_cmd(info, out: str) -> list[str]:
    """Stream copy into Matroska (exact seeking), audio and subtitles kept."""
    src = ffmpeg.input(info.path)
    a_streams, a_opts = audio_map(info, "matroska", src)
    s_streams, s_opts = subtitle_map(info, "matroska", src)
    return build_cmd(ffmpeg.output(src[str(info.video_index)], *a_streams, *s_streams, out,
                                   format="matroska", map_metadata=0,
                                   **{"c:v": "copy", **a_opts, **s_opts}))


COMMON_RATES = tuple(Fraction(r) for r in ("24000/1001", "24", "25", "30000/1001", "30",
                                            "48", "50", "60000/1001", "60", "12", "15"))


def tidy_rate(avg: Fraction) -> Fraction:
    """A CFR rate near an average: a common rate within 0.2 %, else in 1/1000 steps.

    Matroska stores 1 ms timestamps and frame durations in ns, so an odd
    rational like 3840000/239239 would not survive the round trip exactly.
    """
    near = [r for r in COMMON_RATES if abs(Fraction(avg) / r - 1) < Fraction(2, 1000)]
    if near:  # the closest: 24 and 24000/1001 are both within 0.2 % of 24
        return min(near, key=lambda r: abs(Fraction(avg) - r))
    return Fraction(round(Fraction(avg) * 1000), 1000)


# --------------------------------------------------------------------------- stream mapping

TEXT_SUBTITLES = {"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text"}
# Audio that players actually handle in MP4/MOV (ffmpeg would also mux e.g. Vorbis).
_MP4_AUDIO = {"aac", "mp3", "mp2", "ac3", "eac3", "alac", "flac", "opus"}


@functools.lru_cache(maxsize=None)
def supported_codecs(fmt: str) -> frozenset[str]:
    with av.open(io.BytesIO(), "w", format=fmt) as c:
        return frozenset(c.supported_codecs)


def audio_fits(codec: str, fmt: str) -> bool:
    if fmt == "webm":
        return codec in ("opus", "vorbis")
    if fmt == "mp4":
        return codec in _MP4_AUDIO
    if fmt == "mov":
        return codec in _MP4_AUDIO or codec.startswith("pcm_")
    return codec in supported_codecs(fmt)


def audio_map(info, fmt: str, src) -> tuple[list, dict]:
    """Every audio stream: stream copy when the container takes the codec, else AAC (Opus for WebM)."""
    streams, opts = [], {}
    for k, a in enumerate(info.audio):
        streams.append(src[str(a.index)])
        if audio_fits(a.codec, fmt):
            opts[f"c:a:{k}"] = "copy"
        else:
            opts[f"c:a:{k}"] = "libopus" if fmt == "webm" else "aac"
            opts[f"b:a:{k}"] = f"{min(512, 64 * max(1, a.channels))}k"
    return streams, opts


def subtitle_map(info, fmt: str, src) -> tuple[list, dict]:
    """Text subtitles: mov_text in MP4/MOV, WebVTT in WebM, copy (or SRT) in Matroska.

    Bitmap subtitles survive only in Matroska; elsewhere they are dropped with a warning.
    """
    streams, opts = [], {}
    for s in info.subtitles:
        text = s.codec in TEXT_SUBTITLES
        if fmt in ("mp4", "mov"):
            codec = "mov_text" if text else None
        elif fmt == "webm":
            codec = "webvtt" if text else None
        elif s.codec in supported_codecs(fmt):
            codec = "copy"
        else:
            codec = "srt" if text else None
        if codec is None:
            log.warning("%s: subtitle stream %d (%s) cannot go into %s; dropped",
                        info.path, s.index, s.codec, fmt)
            continue
        opts[f"c:s:{len(streams)}"] = codec
        streams.append(src[str(s.index)])
    return streams, opts
