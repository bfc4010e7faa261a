"""Masters: codecs, bit depths, colour tags and conversion, image sequences with their audio."""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.config import RenderConfig
from engine.local import render
from pipeline import media
from pipeline.delivery import SEQUENCE_MANIFEST, Delivery
from pipeline.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _gradient(n=4, size=(96, 64)):
    w, h = size
    f = np.zeros((n, h, w, 3), np.uint8)
    f[..., 0] = np.linspace(0, 255, w).round().astype(np.uint8)[None, None, :]
    f[..., 1] = 128
    f[..., 2] = 40
    return f


def _stream(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frame = next(c.decode(s))
        return s.codec_context, frame


@pytest.mark.parametrize("codec, depth, name, pix_fmt", [
    ("h264", 8, "h264", "yuv420p"), ("h264", 10, "h264", "yuv420p10le"), ("h265", 10, "hevc", "yuv420p10le"),
    ("prores", None, "prores", "yuv422p10le"), ("ffv1", 16, "ffv1", "yuv444p16le")])
def test_each_codec_writes_its_pixel_format_and_bt709_tags(tmp_path, codec, depth, name, pix_fmt):
    d = Delivery(codec, depth)
    path = tmp_path / f"seg{d.segment_suffix}"
    frames = _gradient()
    with media.SegmentWriter(path, Fraction(24), (96, 64), delivery=d) as w:
        w.write(frames)
    ctx, frame = _stream(path)
    assert (ctx.name, ctx.pix_fmt) == (name, pix_fmt)
    assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace) == (1, 1, 1)  # BT.709 (no source: its default)
    back = frame.to_ndarray(format="rgb24").astype(int)
    tolerance = 1 if codec == "ffv1" else 6  # lossless (but for YCbCr rounding); else chroma subsampling
    assert np.abs(back - frames[0]).max() <= tolerance
    if codec == "prores":
        assert ctx.profile == "HQ"


def test_sixteen_bit_masters_keep_white_white(tmp_path):
    # swscale widens 8 to 16 bits as x*256 (white 65280); the writer widens exactly (x*257)
    d = Delivery("png", 16)
    seg = tmp_path / "s.mkv"
    with media.SegmentWriter(seg, Fraction(24), (96, 64), delivery=d) as w:
        w.write(_gradient(2))
    from pipeline.image_sequence import write_sequence

    out = write_sequence(str(seg), tmp_path / "shot", source=None, delivery=d, fps=Fraction(24), frames=2)
    with av.open(str(out / "shot.0000001.png")) as c:
        img = next(c.decode(video=0)).to_ndarray()
    assert img.dtype == np.uint16
    assert img[0, -1, 0] == 65535 and img[0, 0, 1] == 128 * 257 and img[0, 0, 2] == 40 * 257
    manifest = json.loads((out / SEQUENCE_MANIFEST).read_text())
    assert manifest["frames"] == 2 and manifest["pattern"] == "shot.%07d.png"


def test_source_colour_is_kept_and_a_conversion_to_bt2020_changes_the_primaries(tmp_path, media_clip):
    sd = media.probe(media_clip("red_sd.mp4"))  # untagged SD: what players assume, SMPTE 170M
    red = np.zeros((2, 120, 160, 3), np.uint8)
    red[..., 0] = 255
    kept, wide = tmp_path / "kept.mp4", tmp_path / "wide.mp4"
    for path, d in ((kept, Delivery()), (wide, Delivery(color="bt2020", bit_depth=10))):
        with media.SegmentWriter(path, Fraction(25), (160, 120), delivery=d, source=sd) as w:
            w.write(red)
    ctx, frame = _stream(kept)
    assert (ctx.color_primaries, ctx.colorspace) == (6, 6)  # smpte170m: the source's, nothing converted
    assert np.abs(frame.to_ndarray(format="rgb24")[60, 80].astype(int) - [255, 0, 0]).max() <= 3
    info = media.probe(str(wide))
    assert (info.color_primaries, info.color_trc, info.color_space) == ("bt2020", "bt2020-10", "bt2020nc")
    # BT.601 red expressed in BT.2020 primaries: less red, some green (about 0.63 / 0.07 linear)
    rgb = next(iter(media.decode_frames(info, 0, 1)))[60, 80].astype(int)
    assert 180 <= rgb[0] <= 225 and 40 <= rgb[1] <= 100, rgb


def test_hdr_source_refuses_a_colour_conversion():
    class Info:
        path, width, height = "hdr.mov", 3840, 2160
        color_primaries, color_trc, color_space = "bt2020", "smpte2084", "bt2020nc"

    with pytest.raises(InputError, match="tone mapping"):
        Delivery(color="bt709").tags(Info)
    assert Delivery().tags(Info).transfer == "smpte2084"  # source: passed through, tagged as it was


@pytest.mark.parametrize("codec, depth, output, message", [
    ("prores", None, "out.mp4", "goes in .mov, .mkv"), ("png", 10, "out", "takes --bit-depth 8 or 16"),
    ("tiff", None, "out.tif", "folder of numbered images"), ("h264", 16, "out.mp4", "8 or 10")])
def test_a_codec_that_does_not_fit_fails_in_one_line(tmp_path, media_clip, codec, depth, output, message):
    args = [sys.executable, "-m", "cli", "render", str(media_clip("main.mp4")), "-o", str(tmp_path / output),
            "--codec", codec]
    if depth:
        args += ["--bit-depth", str(depth)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _wav(path):
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        rate, codec, channels = s.rate, s.codec_context.name, s.codec_context.channels
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(s)])  # packed: interleaved
    return rate, codec, samples.reshape(-1, channels)[:, 0].astype(np.float64) / 2 ** 31


def test_render_to_a_png_sequence_with_late_audio_then_again_into_the_same_folder(tmp_path, media_clip, tiny_styles):
    src = media_clip("late_audio.mp4")  # audio starts 0.3 s after the first frame, outlasts the picture
    info = media.probe(str(src))
    out = tmp_path / "shot_010"
    cfg = RenderConfig(input=str(src), output=str(out), style=tiny_styles[0], width=96, codec="png",
                       cache_dir=str(tmp_path / "cache"), chunk_frames=25)
    report = render(cfg, progress=False, log=lambda m: None)
    assert report.frames == info.frame_count
    images = sorted(out.glob("shot_010.*.png"))
    assert [p.name for p in images[:2]] == ["shot_010.0000000.png", "shot_010.0000001.png"]
    assert len(images) == info.frame_count
    with av.open(str(images[-1])) as c:
        frame = next(c.decode(video=0))
        assert (frame.format.name, frame.width, frame.height) == ("rgb48be", 320, 180)
    manifest = json.loads((out / SEQUENCE_MANIFEST).read_text())
    assert manifest["frames"] == info.frame_count and manifest["fps"] == "30000/1001"
    assert manifest["audio"][0]["offset_s"] == 0.0
    rate, codec, pcm = _wav(out / manifest["audio"][0]["file"])
    assert codec == "pcm_s24le" and rate == 48000
    with av.open(str(src)) as c:
        a = c.streams.audio[0]
        late = float(a.start_time * a.time_base) - info.start_time
        source_seconds = sum(f.samples for f in c.decode(a)) / a.rate
    # every sample kept, padded with silence up to where the audio starts after the picture
    assert abs(len(pcm) / rate - (late + source_seconds)) < 0.01
    assert np.abs(pcm[: int((late - 0.05) * rate)]).max() < 1e-3  # silence before the audio starts
    tone = pcm[int((late + 1.2) * rate): int((late + 1.4) * rate)]  # main.mp4's tone starts at 1 s
    assert np.abs(tone).max() > 0.3
    assert Path(str(out) + ".preview.png").is_file()

    # a restyle into the same folder replaces it whole; a foreign non-empty folder is refused
    (out / "shot_010.0000000.png").unlink()
    render(RenderConfig(**{**cfg.to_dict(), "style": tiny_styles[1]}), progress=False, log=lambda m: None)
    assert len(list(out.glob("shot_010.*.png"))) == info.frame_count
    foreign = tmp_path / "holiday"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"x")
    with pytest.raises(Exception, match="not empty"):
        render(RenderConfig(**{**cfg.to_dict(), "output": str(foreign)}), progress=False, log=lambda m: None)
    assert (foreign / "photo.jpg").is_file()


def test_render_to_prores_keeps_the_audio(tmp_path, media_clip, tiny_styles):
    src = media_clip("main.mp4")
    out = tmp_path / "master.mov"
    render(RenderConfig(input=str(src), output=str(out), style=tiny_styles[0], width=96, codec="prores",
                       cache_dir=str(tmp_path / "cache")), progress=False, log=lambda m: None)
    info, source = media.probe(str(out)), media.probe(str(src))
    assert (info.codec, info.pix_fmt, info.frame_count) == ("prores", "yuv422p10le", source.frame_count)
    assert len(info.audio) == 1 and len(info.subtitles) == 1


def test_a_ten_bit_film_keeps_its_bits_through_a_deep_method_into_a_sixteen_bit_master(tmp_path, ffmpeg_exe):
    from methods import Method, register, unregister
    from pipeline.carry import CarryState

    class DeepIdentity(Method):  # the frames as they come: what the decode gave is what is written
        name, summary, deep_frames, carries_state = "deep-identity-test", "test", True, False

        def __init__(self, style_path, run=None):
            pass

        card = {"name": "deep-identity"}

        def params(self):
            return {"method": self.name}

        def stylize(self, frames, first_index, state=None, flow=None):
            return frames.copy(), CarryState(first_index + len(frames), frames[-1].copy(), frames[-1].copy())

    src = tmp_path / "ten_bit.mkv"  # a shallow 10-bit ramp: 128 levels over 256 columns (32 in 8 bits)
    subprocess.run([ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "nullsrc=s=256x64:r=25,format=yuv444p10le,geq=lum='400+X/2':cb=512:cr=512",
                    "-frames:v", "3", "-c:v", "ffv1", "-pix_fmt", "yuv444p10le", str(src)], check=True)
    assert media.probe(str(src)).bit_depth == 10
    register(DeepIdentity)
    try:
        levels = {}
        for depth in (8, 16):
            out = tmp_path / f"out{depth}"
            render(RenderConfig(input=str(src), output=str(out), style=str(src), method=DeepIdentity.name,
                                width=256, codec="png", bit_depth=depth, cache_dir=str(tmp_path / "c")),
                   progress=False, log=lambda m: None)
            with av.open(str(out / f"out{depth}.0000000.png")) as c:
                levels[depth] = len(np.unique(next(c.decode(video=0)).to_ndarray()[32, :, 1]))
    finally:
        unregister(DeepIdentity.name)
    assert levels[8] <= 40 and levels[16] >= 120, levels


def test_the_net_takes_sixteen_bit_frames_and_gives_sixteen_bits_back(tiny_styles):
    from methods import RunSettings, make_method

    rng = np.random.default_rng(0)
    frames8 = rng.integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    method = make_method("per-frame", tiny_styles[0], RunSettings(exposure="net"))  # the net's own bits
    assert method.deep_frames
    out8, _ = method.stylize(frames8, 0, None)
    out16, _ = method.stylize(frames8.astype(np.uint16) * 257, 0, None)
    assert out16.dtype == np.uint16 and out8.dtype == np.uint8
    assert np.abs(out16 / 257.0 - out8).max() <= 0.51  # the same picture, with 8 more bits
    inside = out16[(out16 > 0) & (out16 < 65535)]  # the random net clips much of its output
    assert inside.size > 1000 and (inside % 257 == 0).mean() < 0.05  # the net's own bits, not 8-bit values widened


@pytest.mark.parametrize("output", ["film.mkv", "film.mov"])
def test_chapters_and_metadata_of_the_film_are_kept(tmp_path, media_clip, ffmpeg_exe, tiny_styles, output):
    meta = tmp_path / "meta.txt"
    meta.write_text(";FFMETADATA1\ntitle=A Test Film\n"
                    "[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=1000\ntitle=Opening\n"
                    "[CHAPTER]\nTIMEBASE=1/1000\nSTART=1000\nEND=2000\ntitle=Second\n")
    src = tmp_path / "chapters.mkv"
    subprocess.run([ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-y", "-i", str(media_clip("main.mp4")),
                    "-i", str(meta), "-map", "0", "-map_metadata", "1", "-map_chapters", "1", "-c", "copy",
                    "-c:s", "srt", str(src)], check=True)
    out = tmp_path / output
    render(RenderConfig(input=str(src), output=str(out), style=tiny_styles[0], width=96,
                        codec="prores" if output.endswith(".mov") else "h264", cache_dir=str(tmp_path / "c")),
           progress=False, log=lambda m: None)
    with av.open(str(out)) as c:
        chapters = [(ch["metadata"].get("title"), round(float(ch["start"] * ch["time_base"]), 2)) for ch in c.chapters()]
        title = c.metadata.get("title")
    assert chapters == [("Opening", 0.0), ("Second", 1.0)] and title == "A Test Film"


@pytest.mark.parametrize("method, style", [("flow-blend", None), ("flow-recurrent", "starry_night")])
def test_flow_methods_carry_sixteen_bit_frames_and_match_their_eight_bit_render(tmp_path, ffmpeg_exe, tiny_styles,
                                                                                 method, style):
    src = tmp_path / "moving10.mkv"
    subprocess.run([ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=128x72:r=25,format=yuv444p10le", "-frames:v", "8", "-c:v", "ffv1",
                    "-pix_fmt", "yuv444p10le", str(src)], check=True)
    frames = {}
    for depth in (8, 16):
        out = tmp_path / f"{method}{depth}"
        render(RenderConfig(input=str(src), output=str(out), style=style or tiny_styles[0], method=method,
                            width=128, codec="png", bit_depth=depth, chunk_frames=5,
                            cache_dir=str(tmp_path / "c")), progress=False, log=lambda m: None)
        imgs = []
        for k in range(8):
            with av.open(str(out / f"{out.name}.{k:07d}.png")) as c:
                imgs.append(next(c.decode(video=0)).to_ndarray().astype(np.float64))
        frames[depth] = np.stack(imgs)
    deep = frames[16]
    inside = deep[(deep > 0) & (deep < 65535)]
    assert (inside % 257 == 0).mean() < 0.1  # 16-bit values of the method's own, not widened 8-bit ones
    # the same picture: the later frames (blended with, or fed, the previous output) too
    assert np.abs(deep / 257 - frames[8]).mean() < 1.5
