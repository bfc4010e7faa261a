"""End-to-end renders through the CLI and the in-process engine, on tiny generated clips.

A seeded random-initialised net stands in for a trained style: these tests
prove the plumbing (frames, cuts, audio, sizes, resume, errors), not the look.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import engine.chunks
from engine.chunks import render_chunk
from engine.config import RenderConfig
from engine.local import render
from pipeline import media
from pipeline.synthetic import demo_shot_bounds

FPS = Fraction(24)
SHOT_SECONDS = 1


@pytest.fixture(scope="module")
def tiny_style(tiny_styles):
    return tiny_styles[0]


@pytest.fixture(scope="module")
def demo_clip(demo_clip_factory):
    """Three shots of one second (pan, zoom, rotate) with hard cuts and an AAC track."""
    return demo_clip_factory(("astronaut", "coffee", "chelsea"), width=192, height=108, fps=FPS,
                             seconds_per_shot=SHOT_SECONDS)


def _cfg(src, out, style, tmp, **kw):
    kw.setdefault("width", 96)
    kw.setdefault("cache_dir", str(tmp / "cache"))
    return RenderConfig(input=src, output=str(out), style=style, **kw)


def _decode_all(path, size=None):
    info = media.probe(path)
    return np.stack(list(media.decode_frames(info, 0, info.frame_count, size)))


def test_render_keeps_frames_cuts_audio_and_duration(tmp_path, demo_clip, tiny_style):
    out = tmp_path / "out.mp4"
    report = render(_cfg(demo_clip, out, tiny_style, tmp_path, chunk_frames=10), progress=False, log=lambda m: None)
    src, dst = media.probe(demo_clip), media.probe(str(out))
    assert dst.frame_count == src.frame_count and dst.fps == src.fps
    assert abs(dst.duration - src.duration) <= 1 / float(src.fps)
    assert len(dst.audio) == len(src.audio) == 1
    assert dst.display_size == src.display_size  # delivered at the source size by default
    assert dst.color_space == "bt709"
    assert report.shots == 3 and report.frames == src.frame_count
    # 24-frame shots in chunks of at most 10 -> 3 chunks each; none crosses a cut.
    assert report.chunks == 9
    saved = json.loads(Path(str(out) + ".report.json").read_text())
    assert set(saved["stage_seconds"]) >= {"probe", "shots", "decode", "stylize", "upscale", "encode", "assemble"}
    # The picture really changed (stylized) and the cuts are still where they were.
    a, b = _decode_all(demo_clip, (96, 54)), _decode_all(str(out), (96, 54))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10
    diffs = np.abs(np.diff(b.astype(int), axis=0)).mean(axis=(1, 2, 3))
    cuts = sorted(np.argsort(diffs)[-2:] + 1)
    assert cuts == [s for s, _ in demo_shot_bounds(3, FPS, SHOT_SECONDS)[1:]]


def test_chunked_render_equals_unchunked(tmp_path, demo_clip, tiny_style):
    # crf 0 is lossless x264: decoded outputs differ only if the stylized frames differ.
    outs = []
    for n in (5, 1000):
        out = tmp_path / f"c{n}.mp4"
        render(_cfg(demo_clip, out, tiny_style, tmp_path, chunk_frames=n, crf=0), progress=False, log=lambda m: None)
        outs.append(_decode_all(str(out)))
    assert np.array_equal(outs[0], outs[1])


def _resumes_to_a_clean_render(cfg, demo_clip, tiny_style, tmp_path, resumed: int) -> None:
    """Rerun ``cfg``: ``resumed`` chunks come from the interrupted run, and the frames equal a clean render's."""
    report = render(cfg, progress=False, log=lambda m: None)
    assert report.chunks_resumed == resumed
    clean = tmp_path / "clean.mp4"
    render(_cfg(demo_clip, clean, tiny_style, tmp_path / "other", chunk_frames=8, crf=0), progress=False,
           log=lambda m: None)
    assert np.array_equal(_decode_all(cfg.output), _decode_all(str(clean)))


def test_encoder_failing_at_a_chunks_close_leaves_it_uncommitted_and_the_render_resumes(
        tmp_path, demo_clip, tiny_style, monkeypatch):
    """A segment is finished and committed in a thread while the net runs the next chunk: when
    x264 fails as chunk 3 closes, chunks 1-2 stay committed, 3 and 4 are not, nothing half-written
    is left, and the rerun resumes from chunk 3 to the same frames as a clean render."""
    cfg = _cfg(demo_clip, tmp_path / "r.mp4", tiny_style, tmp_path, chunk_frames=8, crf=0,
               workdir=str(tmp_path / "work"))
    closes = {"n": 0}
    original_close = media.SegmentWriter.close

    def fails_third(self):
        closes["n"] += 1
        if closes["n"] == 3:
            self.abort()
            raise media.OutputError(f"{self.path}: encoding failed (a stand-in for x264 dying)")
        return original_close(self)

    monkeypatch.setattr(media.SegmentWriter, "close", fails_third)
    with pytest.raises(media.OutputError, match="stand-in"):
        render(cfg, progress=False, log=lambda m: None)
    assert not Path(cfg.output).exists()
    work = Path(cfg.workdir)
    markers = sorted(p.name for p in work.rglob("*.done"))
    assert len(markers) == 2, markers
    segments = sorted(p.name for p in (work / "segments").iterdir())
    assert len(segments) == 2, segments  # chunk 3's segment never landed; 4 was dropped
    monkeypatch.setattr(media.SegmentWriter, "close", original_close)
    _resumes_to_a_clean_render(cfg, demo_clip, tiny_style, tmp_path, resumed=2)


def test_killed_render_resumes_without_recomputing(tmp_path, demo_clip, tiny_style, monkeypatch):
    cfg = _cfg(demo_clip, tmp_path / "r.mp4", tiny_style, tmp_path, chunk_frames=8, crf=0)
    calls = {"n": 0}
    original = render_chunk

    def dies_on_fifth(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # stands in for a kill mid-render
        return original(*a, **kw)

    monkeypatch.setattr(engine.chunks, "render_chunk", dies_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        render(cfg, progress=False, log=lambda m: None)
    assert not Path(cfg.output).exists()
    monkeypatch.setattr(engine.chunks, "render_chunk", original)
    _resumes_to_a_clean_render(cfg, demo_clip, tiny_style, tmp_path, resumed=4)


def test_odd_size_and_non_square_pixels(tmp_path, tiny_style):
    src = tmp_path / "anamorphic.mp4"
    # 321x181 coded with SAR 4:3 -> displayed 428x181 (yuv444 allows odd sizes).
    subprocess.run([media.ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=321x181:rate=25:duration=1", "-vf", "setsar=4/3", "-pix_fmt", "yuv444p",
                    "-c:v", "libx264", str(src)], check=True)
    out = tmp_path / "ana_out.mp4"
    render(_cfg(str(src), out, tiny_style, tmp_path), progress=False, log=lambda m: None)
    info = media.probe(str(out))
    assert info.sar == 1 and info.width % 2 == 0 and info.height % 2 == 0
    assert abs(info.width / info.height - 428 / 181) < 0.02
    assert info.frame_count == 25


def test_rotated_source_is_delivered_upright(tmp_path, tiny_style):
    plain, src = tmp_path / "plain.mp4", tmp_path / "rot.mp4"
    ff = media.ffmpeg_binary()
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=25:duration=1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(plain)], check=True)
    # A display matrix is set on remux (stream copy), as phones write it.
    subprocess.run([ff, "-v", "error", "-display_rotation", "90", "-i", str(plain), "-c", "copy", str(src)],
                   check=True)
    assert media.probe(str(src)).rotation in (90, 270)
    out = tmp_path / "rot_out.mp4"
    render(_cfg(str(src), out, tiny_style, tmp_path, width=48), progress=False, log=lambda m: None)
    info = media.probe(str(out))
    assert (info.width, info.height) == (96, 160) and info.rotation == 0


# ---------------------------------------------------------------- bad input through the CLI


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, demo_clip):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    data = Path(demo_clip).read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    ff = media.ffmpeg_binary()
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(d / "audio_only.m4a")], check=True)
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25", "-frames:v", "1",
                    "-pix_fmt", "yuv420p", str(d / "one_frame.mp4")], check=True)
    return d


@pytest.mark.parametrize("name, message", [
    ("missing.mp4", "not found"),
    ("empty.mp4", "empty"),
    ("text.mp4", "cannot be read as video"),
    ("truncated.mp4", ""),
    ("audio_only.m4a", "no video stream"),
    ("one_frame.mp4", "only 1 frame"),
])
def test_bad_input_files(tmp_path, bad_inputs, tiny_style, name, message):
    src = bad_inputs / name
    out = tmp_path / "out.mp4"
    proc = _cli("render", src, "-o", out, "--style", tiny_style, "-q", "--cache-dir", tmp_path / "c")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("filmstyle: error:") and name in lines[0]
    assert message in lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.mp4*"))


def test_unknown_style_lists_available(tmp_path, demo_clip):
    proc = _cli("render", demo_clip, "-o", tmp_path / "o.mp4", "--style", "no_such_style", "-q")
    assert proc.returncode == 2 and "available styles" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_corrupt_checkpoint_as_style(tmp_path, demo_clip):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not really a pickle")
    proc = _cli("render", demo_clip, "-o", tmp_path / "o.mp4", "--style", bad, "-q")
    assert proc.returncode == 2 and "never unpickles" in proc.stderr


def test_unwritable_output(tmp_path, demo_clip, tiny_style):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root ignores permission bits: /proc refuses new files for everyone.
    unwritable = Path("/proc") if os.geteuid() == 0 else locked
    try:
        for out, message in [(tmp_path / "nodir" / "o.mp4", "does not exist"),
                             (unwritable / "o.mp4", "not writable"),
                             (tmp_path / "o.txt", "unsupported output type")]:
            proc = _cli("render", demo_clip, "-o", out, "--style", tiny_style, "-q")
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
            assert not out.exists()
    finally:
        locked.chmod(0o700)
