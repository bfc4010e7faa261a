"""The style judge's pieces: tone correlation, the optimization reference, the stroke-size control."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import losses as L


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(img, size=(96, 96), mode="area")


def test_tone_correlation_is_one_for_the_photo_and_ignores_level_and_contrast(photo):
    assert float(L.tone_correlation(photo, photo)[0]) == pytest.approx(1.0, abs=1e-5)
    darker_flatter = 0.4 * photo + 0.1  # a painting's palette may be darker and flatter: still the same light
    assert float(L.tone_correlation(darker_flatter, photo)[0]) == pytest.approx(1.0, abs=1e-4)
    assert float(L.tone_correlation(1 - photo, photo)[0]) == pytest.approx(-1.0, abs=1e-4)


def test_tone_correlation_is_low_for_a_flat_or_unrelated_image(photo):
    flat = torch.full_like(photo, 0.5) + 0.01 * torch.rand(photo.shape, generator=torch.Generator().manual_seed(0))
    assert abs(float(L.tone_correlation(flat, photo)[0])) < 0.3
    assert float(L.tone_loss(flat, photo)) > 0.7
    assert float(L.tone_loss(photo, photo)) < 1e-4


def test_tone_loss_has_a_finite_gradient_for_an_output_clamped_flat(photo):
    # An untrained student's raw output is all below 0, clamped to a flat 0: its first step was NaN.
    raw = torch.full_like(photo, -0.015, requires_grad=True)
    L.tone_loss(raw.clamp(0, 1), photo).backward()
    assert torch.isfinite(raw.grad).all()
    flat = torch.zeros_like(photo, requires_grad=True)
    L.tone_loss(flat, photo).backward()
    assert torch.isfinite(flat.grad).all() and float(flat.grad.norm()) < 100  # was ~1e11: a step along it alone


def test_blurred_luminance_is_at_the_judge_width_and_sigma(photo):
    y = L.blurred_luminance(torch.nn.functional.interpolate(photo, size=(200, 400), mode="bilinear"))
    assert y.shape == (1, 1, 128, 256)  # 256 px wide, aspect kept


@pytest.fixture(scope="module")
def loss_setup(photo):
    from models.vgg import loss_network

    vgg = loss_network(tuple(sorted(set(L.STYLE_LAYERS) | set(L.CONTENT_LAYERS))))
    from skimage import data

    painting = torch.from_numpy(data.rocket()).permute(2, 0, 1)[None].float() / 255
    painting = torch.nn.functional.interpolate(painting, size=(64, 96), mode="area")
    with torch.no_grad():
        target = L.StyleTarget(vgg(painting))
    return vgg, target


@pytest.mark.parametrize("optimizer,init", [("lbfgs", "photo"), ("adam", "noise")])
def test_the_optimizer_lowers_its_loss(photo, loss_setup, optimizer, init):
    from models.optimize import OptimizeConfig, optimize

    vgg, target = loss_setup
    weights = {"content": 1.0, "style": 1.0, "tv": 0.1, "range": 1.0, "tone": 1.0}
    x = photo[..., :64, :64].contiguous()
    y, record = optimize(x, vgg, target, weights, OptimizeConfig(steps=12, optimizer=optimizer, init=init, lr=0.05))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    first = record["history"][0]
    assert record["total"] < 0.8 * first, (first, record["total"])
    # what the style loss was at the start, measured the same way
    with torch.no_grad():
        start_style = float(L.style_loss(vgg(x), target)) if init == "photo" else None
    if start_style is not None:
        assert record["terms"]["style"] < start_style


def test_the_optimum_cache_is_keyed_by_everything_that_changes_it(tmp_path, photo):
    from models.optimize import OptimizeConfig, OptimumCache, optimum_key

    w = {"content": 1.0, "style": 1.0, "tone": 0.0}
    k = optimum_key("s", 512, "p", 256, w, OptimizeConfig())
    assert k == optimum_key("s", 512, "p", 256, dict(w, tone=0), OptimizeConfig())  # a zero weight is no term
    assert len({k, optimum_key("s", 320, "p", 256, w, OptimizeConfig()),
                optimum_key("s", 512, "p", 256, dict(w, tone=1.0), OptimizeConfig()),
                optimum_key("s", 512, "p", 256, w, OptimizeConfig(steps=10))}) == 4
    cache = OptimumCache(tmp_path)
    assert cache.get(k) is None
    cache.put(k, photo, {"total": 1.0})
    back = cache.get(k)
    assert back.shape == photo.shape and float((back - photo).abs().max()) <= 1 / 255 + 1e-6


def _high_frequency_share(frames: np.ndarray) -> float:
    """Share of the luminance's spectral energy (DC removed) above half the Nyquist frequency."""
    y = frames[..., :3].astype(np.float64) @ np.array(L.LUMINANCE)
    y = y - y.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(y)) ** 2
    fy = np.abs(np.fft.fftfreq(y.shape[-2]))[:, None]
    fx = np.abs(np.fft.fftfreq(y.shape[-1]))[None, :]
    high = np.maximum(fy, fx) > 0.25
    return float(power[..., high].sum() / power.sum())


def test_style_scale_moves_texture_to_lower_frequencies_and_keeps_the_frame_size(tiny_styles):
    from skimage import data

    from methods import RunSettings, make_method

    frame = np.asarray(data.chelsea())[:192, :256]
    frames = np.stack([frame, frame[:, ::-1]])
    shares = {}
    for scale in (1.0, 2.0, 3.0):
        st = make_method("per-frame", tiny_styles[0], RunSettings(style_scale=scale))
        out, _ = st.stylize(frames, 0, None)
        assert out.shape == frames.shape and out.dtype == np.uint8
        shares[scale] = _high_frequency_share(out)
        assert ("style_scale" in st.params()) == (scale != 1)  # scale 1 keeps the keys of earlier renders
    assert shares[2.0] < 0.6 * shares[1.0] and shares[3.0] < shares[2.0], shares


def test_style_scale_out_of_range_is_a_clear_error(tiny_styles):
    from pipeline.errors import InputError
    from methods import RunSettings, make_method

    with pytest.raises(InputError, match="style scale"):
        make_method("per-frame", tiny_styles[0], RunSettings(style_scale=0))


def test_the_judge_says_yes_only_when_every_target_was_measured_and_met():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.style_quality import verdict

    good = {"tone": 0.99, "reduction": 12.0}
    near = {"optimum": {"style": 0.15}, "style_vs_optimum": 1.8, "content_vs_optimum": 1.2}
    far = {"optimum": {"style": 0.15}, "style_vs_optimum": 2.3, "content_vs_optimum": 2.4}
    assert verdict(good, near) == "yes"
    assert verdict(good, far) == "NO"
    assert verdict(good, None) == "no optimum"  # --optimum-photos 0: the optimum targets were not measured
    assert verdict(good, {"optimum": None}) == "no optimum"
    assert verdict({"tone": 0.5, "reduction": 12.0}, None) == "NO"
