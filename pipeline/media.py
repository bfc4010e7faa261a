"""Media I/O: decode frames and encode segments (ffmpeg pipes), assemble; probing is in probe.py.

Frame indices are the currency of the whole pipeline, so everything here is
frame-exact: ``probe`` counts the frames that really decode, ``decode_frames``
returns the same pixels for a frame whether it is read alone or in a long run,
and ``SegmentWriter``/``assemble`` produce constant-frame-rate video whose
segments concatenate by stream copy.

Colour: decoding converts YUV->RGB explicitly with the source's matrix and
range (untagged: BT.709 for HD and larger, BT.601 for SD; limited range unless
a yuvj format). Encoding converts RGB->YUV with BT.709, limited range, and tags
the stream so.
"""
from __future__ import annotations

import logging
import operator
import os
import subprocess
import tempfile
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from pipeline import ffmpeg_tools as ft
from pipeline.delivery import Delivery
from pipeline.errors import FilmstyleError, InputError, OutputError
from pipeline.ffmpeg_tools import ffmpeg_binary
from pipeline.hashing import file_hash
from pipeline.jsonfile import read_json_dict, write_json_atomic
from pipeline.paths import cache_root
from pipeline.probe import AudioStream, SubtitleStream, VideoInfo, existing_file, probe

log = logging.getLogger(__name__)

__all__ = ["ffmpeg_binary", "AudioStream", "SubtitleStream", "VideoInfo", "probe",
           "working_size", "decode_frames", "SegmentWriter", "assemble", "normalize_vfr",
           "content_hash"]



def working_size(info: VideoInfo, width: int, multiple: int = 2) -> tuple[int, int]:
    """Size at ``width`` keeping the display aspect, both sides a multiple of ``multiple``."""
    dw, dh = info.display_size

    def snap(x: float) -> int:
        return max(multiple, int(x / multiple + 0.5) * multiple)

    return snap(width), snap(width * dh / dw)


# --------------------------------------------------------------------------- decode

def decode_frames(info_or_path, start: int, end: int, size: tuple[int, int] | None = None,
                  *, chunk_hint: int | None = None, deep: bool = False) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames [start, end) at ``size`` (default: display size); ``deep``: uint16
    frames (full 16-bit scale), for sources with more than 8 bits a sample.

    CFR sources seek on the input side to half a frame before ``start``;
    ffmpeg then decodes from the preceding keyframe and drops frames by pts
    (accurate seek), so a frame is bit-identical however a range is split.
    VFR sources and containers ffmpeg cannot seek exactly (``not
    info.seekable``; normalize_vfr fixes both once) are decoded from frame 0
    and selected by index: slow but exact. ``chunk_hint`` (frames the caller
    will read at a time) only sizes the pipe buffer. Closing the generator
    early kills ffmpeg.
    """
    info = info_or_path if isinstance(info_or_path, VideoInfo) else probe(info_or_path)
    start, end = operator.index(start), operator.index(end)  # numpy ints would overflow
    if start < 0 or end < start:
        raise ValueError(f"bad frame range [{start}, {end})")
    if end > info.frame_count:
        raise InputError(f"{info.path}: frame {end - 1} requested but it has "
                         f"{info.frame_count} frames")
    w, h = size if size is not None else info.display_size
    cmd = ft.decode_cmd(info, start, end - start, (int(w), int(h)), deep=deep)
    return _read_frames(info.path, cmd, start, end, (int(w), int(h)), chunk_hint,
                        np.dtype("<u2") if deep else np.dtype(np.uint8))


def decode_at(info: VideoInfo, seconds: float, count: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Up to ``count`` RGB frames from ``seconds`` after the first frame (a seek by time: see
    ``ffmpeg_tools.decode_at_cmd``); fewer near the end of the film."""
    w, h = size if size is not None else info.display_size
    cmd = ft.decode_at_cmd(info, seconds, count, (int(w), int(h)))
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise FilmstyleError(f"{cmd[0]}: cannot run ffmpeg ({e.strerror})") from None
    out, err = proc.communicate()
    n = len(out) // (int(w) * int(h) * 3)
    if proc.returncode != 0 or n == 0:
        raise InputError(f"{info.path}: no frame decoded at {seconds:.3f} s ({ft.last_error_line(err)})")
    frames = np.frombuffer(out[: n * int(w) * int(h) * 3], np.uint8).reshape(n, int(h), int(w), 3)
    return frames.copy()


def _read_frames(path: str, cmd: list[str], start: int, end: int, size: tuple[int, int],
                 chunk_hint: int | None, dtype: np.dtype = np.dtype(np.uint8)) -> Iterator[np.ndarray]:
    w, h = size
    frame_bytes = w * h * 3 * dtype.itemsize
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)
    except OSError as e:
        raise FilmstyleError(f"{cmd[0]}: cannot run ffmpeg ({e.strerror})") from None
    ft.grow_pipe(proc.stdout, frame_bytes * max(1, min(chunk_hint or 1, 4)))
    drain = ft.StderrDrain(proc.stderr)
    index = start
    try:
        while index < end:
            frame = np.empty((h, w, 3), dtype=dtype)
            if ft.read_into(proc.stdout, memoryview(frame).cast("B")) < frame_bytes:
                proc.wait()
                drain.join()
                raise InputError(f"{path}: decoding stopped at frame {index} of [{start}, {end}) "
                                 f"({drain.last_line()})")
            index += 1
            yield frame
    finally:
        ft.stop(proc)
        drain.join()


# --------------------------------------------------------------------------- encode

class SegmentWriter:
    """Encode RGB frames to a video segment through ffmpeg's stdin.

    Every segment of a render gets identical settings (the delivery's codec, pixel format and
    colour tags, timescale, closed GOPs, no audio) so segments concatenate by stream copy.
    The file appears at ``path`` only after ffmpeg succeeded.
    """

    def __init__(self, path, fps: Fraction, size: tuple[int, int], *, delivery: Delivery | None = None,
                 source: VideoInfo | None = None, crf: int = 18, preset: str = "medium",
                 gop: int | None = None, threads: int | None = None, extra_args: Sequence[str] = ()):
        """``delivery``: codec, bit depth and colour (default: H.264 at ``crf`` and ``preset``);
        ``source``: the film the frames come from (its colour is the frames' colour)."""
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.size = (int(size[0]), int(size[1]))
        delivery = delivery or Delivery(crf=crf, preset=preset)
        pix_fmt = delivery.segment_pix_fmt
        if pix_fmt.startswith(("yuv420", "yuv422", "p010")) and (self.size[0] % 2 or self.size[1] % 2):
            raise ValueError(f"{self.path}: {pix_fmt} needs even dimensions, got {self.size}")
        self.frames = 0
        # Deeper than 8 bits: frames go in as 16-bit RGB, so the output's extra bits are not made up
        # by the encoder's conversion (8-bit frames are widened exactly here).
        self._wide = delivery.depth > 8
        self._tmp = _claim_temp(self.path)
        cmd = ft.encode_cmd(str(self._tmp), self.fps, self.size, delivery, source, gop=gop, threads=threads,
                            extra_args=extra_args)
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            self._tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.path}: cannot start ffmpeg ({e.strerror})") from None
        self._drain = ft.StderrDrain(self._proc.stderr)
        self._closed = False

    def write(self, frame_or_batch: np.ndarray) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        arr = np.asarray(frame_or_batch)
        if arr.ndim == 3:
            arr = arr[None]
        w, h = self.size
        if arr.dtype not in (np.uint8, np.uint16) or arr.ndim != 4 or arr.shape[1:] != (h, w, 3):
            raise ValueError(f"{self.path}: expected uint8 or uint16 frames of shape ({h}, {w}, 3), "
                             f"got {arr.dtype} {arr.shape}")
        if self._wide and arr.dtype == np.uint8:
            arr = arr.astype(np.uint16) * 257  # exact: 255 -> 65535 (swscale's own expansion is x*256)
        elif not self._wide and arr.dtype == np.uint16:
            raise ValueError(f"{self.path}: 16-bit frames into an 8-bit delivery")
        try:
            self._proc.stdin.write(np.ascontiguousarray(arr.astype("<u2", copy=False) if self._wide else arr).data)
        except (BrokenPipeError, OSError):
            self._proc.wait()
            self._drain.join()
            self.abort()
            raise OutputError(f"{self.path}: encoder failed ({self._drain.last_line()})") from None
        self.frames += arr.shape[0]

    def close(self) -> int:
        """Finish the file, move it into place, return the number of frames written."""
        if self._closed:
            return self.frames
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        rc = self._proc.wait()
        self._drain.join()
        if rc != 0 or self.frames == 0:
            self.abort()
            reason = self._drain.last_line() if rc else "no frames written"
            raise OutputError(f"{self.path}: encoding failed ({reason})")
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.frames

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file (nothing appears at ``path``)."""
        ft.stop(self._proc)
        self._drain.join()
        self._tmp.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> "SegmentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
        return False

    def __del__(self):
        if not getattr(self, "_closed", True):
            self.abort()


def _claim_temp(target: Path) -> Path:
    """Create the temp file beside ``target`` now, so an unwritable place fails early and clearly."""
    parent = target.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"{target}: output directory {parent} {problem}")
    tmp = parent / f".{target.stem}.{uuid.uuid4().hex[:8]}.partial{target.suffix}"
    try:
        tmp.open("xb").close()
    except OSError as e:
        raise OutputError(f"{target}: cannot write in {parent} ({e.strerror})") from None
    return tmp


# --------------------------------------------------------------------------- assemble

def assemble(segments: list[str], out_path: str, *, source: VideoInfo | str | None,
             fps: Fraction, audio: bool = True, subtitles: bool = True) -> None:
    """Concatenate encoded segments (stream copy) and mux the source's audio and subtitles.

    The result is written beside ``out_path`` under a temporary name and renamed
    into place only when ffmpeg succeeded.
    """
    out = Path(out_path)
    if not segments:
        raise ValueError("assemble: no segments")
    for s in segments:
        if not Path(s).is_file():
            raise InputError(f"{s}: segment not found")
    info = probe(source) if isinstance(source, (str, os.PathLike)) else source
    fmt = ft.OUTPUT_FORMATS.get(out.suffix.lower(), "mp4")
    fps = Fraction(fps)
    frames = sum(_segment_frames(s) for s in segments)
    tmp = _claim_temp(out)
    listfile = _write_concat_list(segments)
    try:
        cmd = ft.assemble_cmd(listfile, str(tmp), info, fmt, fps, frames, audio, subtitles,
                              lead=_video_lead(info) if info is not None else 0.0)
        proc = ft.run(cmd)
        if proc.returncode != 0:
            raise OutputError(f"{out}: assembling failed ({ft.last_error_line(proc.stderr)})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        os.unlink(listfile)


def _video_lead(info: VideoInfo) -> float:
    """Seconds from the file's first timestamp (any stream) to its first video frame."""
    with av.open(info.path) as c:
        first = c.start_time / av.time_base if c.start_time is not None else info.start_time
    return max(0.0, info.start_time - first)


def _segment_frames(path: str) -> int:
    try:
        with av.open(str(path)) as c:
            n = c.streams.video[0].frames
    except (av.FFmpegError, IndexError):
        n = 0
    return n or probe(path).frame_count


def _write_concat_list(segments: Sequence[str]) -> str:
    fd, name = tempfile.mkstemp(prefix="filmstyle-concat-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        for s in segments:
            escaped = str(Path(s).resolve()).replace("'", r"'\''")
            f.write(f"file '{escaped}'\n")
    return name


# --------------------------------------------------------------------------- VFR + hashing

def normalize_vfr(path, cache_dir) -> str:
    """Return the path to decode: ``path`` itself when it is CFR and seeks exactly.

    VFR: a CFR mezzanine at (about) the average rate, near-lossless x264
    (crf 10) in Matroska with all audio and subtitles. CFR in a container that
    ffmpeg cannot seek exactly (MPEG-TS, FLV, fragmented MP4): a stream-copy
    remux into Matroska (no re-encode). Either is cached in ``cache_dir`` by
    the source's content hash, so it is made once.
    """
    info = probe(path)
    if not info.is_vfr and info.seekable:
        return str(path)
    kind = "cfr2" if info.is_vfr else "remux"  # cfr2: with the whole audio (cfr ended it with the picture)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{content_hash(path)[:32]}.{kind}.mkv"
    if out.is_file():
        return str(out)
    tmp = _claim_temp(out)
    video = tmp.with_name(tmp.stem + ".video.mkv")
    if not info.is_vfr:
        cmds = [ft.remux_cmd(info, str(tmp))]
    elif info.audio or info.subtitles:
        cmds = [ft.mezzanine_cmd(info, str(video), ft.tidy_rate(info.fps)), ft.mux_cmd(str(video), info, str(tmp))]
    else:
        cmds = [ft.mezzanine_cmd(info, str(tmp), ft.tidy_rate(info.fps))]
    try:
        for cmd in cmds:
            proc = ft.run(cmd)
            if proc.returncode != 0:
                raise InputError(f"{path}: could not normalise to a seekable constant frame rate "
                                 f"file ({ft.last_error_line(proc.stderr)})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        video.unlink(missing_ok=True)
    return str(out)


_HASH_MEMO: dict[tuple, str] = {}
_HASH_SIDECAR_MAX = 2000


def content_hash(path, *, cache_dir=None) -> str:
    """BLAKE2b-256 of the file's bytes, memoised by (abs path, size, mtime_ns).

    The memo lives in-process and in a small JSON sidecar under the cache root
    (``cache_dir``, else $FILMSTYLE_CACHE, default ~/.cache/filmstyle), so a film is read once.
    """
    p = existing_file(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _HASH_MEMO:
        return _HASH_MEMO[key]
    sidecar = cache_root(cache_dir) / "content-hashes.json"
    table = read_json_dict(sidecar)
    skey = f"{key[0]}|{key[1]}|{key[2]}"
    digest = table.get(skey)
    if digest is None:
        digest = file_hash(p)
        table[skey] = digest
        try:
            write_json_atomic(sidecar, dict(list(table.items())[-_HASH_SIDECAR_MAX:]))
        except OSError as e:  # a memo that cannot be written only costs time
            log.debug("cannot write hash cache %s: %s", sidecar, e)
    _HASH_MEMO[key] = digest
    return digest
