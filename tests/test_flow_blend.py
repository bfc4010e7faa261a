"""flow-blend's parts: the photometric confidence, detail keeping, its options."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from cli.args import config_from_args
from cli.main import build_parser
from methods import validate_options
from pipeline.flow import FlowPair
from methods.flow_blend import DETAIL_SIGMA, FlowBlend, keep_detail, photometric_confidence
from pipeline.errors import InputError
from pipeline.synthetic import load_photo

W, H, SHIFT = 96, 64, 3


def _pan_pair():
    """prev and cur where cur(x) = prev(x + SHIFT): the backward flow is +SHIFT everywhere, exactly."""
    img = cv2.resize(load_photo("astronaut"), (W + SHIFT, H), interpolation=cv2.INTER_AREA)
    backward = np.zeros((H, W, 2), np.float32)
    backward[..., 0] = SHIFT
    return img[:, :W].copy(), img[:, SHIFT:].copy(), backward


def test_photometric_confidence_trusts_a_right_warp_and_rejects_what_it_cannot_explain():
    prev, cur, backward = _pan_pair()
    conf = photometric_confidence(cur, prev, backward)
    assert conf.shape == (H, W) and conf.dtype == np.float32
    assert conf[:, :W - SHIFT].min() > 0.99  # the warp predicts these pixels exactly
    assert (conf[:, W - SHIFT:] == 0).all()  # their source lies outside the previous frame
    cur[20:40, 20:40] = (0, 255, 0)  # something new that the warp cannot explain
    conf = photometric_confidence(cur, prev, backward)
    assert conf[21:39, 21:39].mean() < 0.05
    assert conf[45:, :W - SHIFT].min() > 0.99  # and nothing else changes


def _detail_energy(img):
    d = img - cv2.GaussianBlur(img, (0, 0), DETAIL_SIGMA)
    return float((d * d).sum())


def test_keep_detail_restores_the_energy_that_averaging_two_textures_removes():
    rng = np.random.default_rng(0)
    fresh = rng.uniform(0, 255, (H, W, 3)).astype(np.float32)
    warped = rng.uniform(0, 255, (H, W, 3)).astype(np.float32)  # a texture unrelated to the fresh one
    weight = np.full((H, W, 1), 0.5, np.float32)
    blended = weight * warped + (1 - weight) * fresh
    assert _detail_energy(blended) < 0.6 * _detail_energy(fresh)  # averaging flattens
    kept = keep_detail(blended, fresh, weight, 0.5)
    assert 0.9 < _detail_energy(kept) / _detail_energy(fresh) < 1.1
    # The gain is capped: a blend with nearly no detail left is not blown up to the fresh energy.
    flat = cv2.GaussianBlur(blended, (0, 0), 3.0)
    assert _detail_energy(keep_detail(flat, fresh, weight, 0.5)) < 2.3 * _detail_energy(flat)


def test_keep_detail_leaves_unblended_pixels_and_agreeing_frames_alone():
    rng = np.random.default_rng(1)
    fresh = rng.uniform(0, 255, (H, W, 3)).astype(np.float32)
    warped = rng.uniform(0, 255, (H, W, 3)).astype(np.float32)
    weight = np.zeros((H, W, 1), np.float32)
    weight[:, W // 2:] = 0.6
    blended = weight * warped + (1 - weight) * fresh
    kept = keep_detail(blended, fresh, weight, 0.6)
    np.testing.assert_allclose(kept[:, :W // 2], blended[:, :W // 2], atol=1e-3)
    assert not np.allclose(kept[:, W // 2:], blended[:, W // 2:], atol=1)
    # When the warped previous output agrees with the fresh one there is nothing to restore.
    np.testing.assert_allclose(keep_detail(fresh.copy(), fresh, weight, 0.6), fresh, atol=1e-3)


class _OnePair:
    def __init__(self, pair):
        self._pair = pair

    def pair(self, t):
        return self._pair


def test_masks_and_options(tiny_styles):
    prev, cur, backward = _pan_pair()
    frames = np.stack([prev, cur])
    # A consistency mask that trusts nothing: the consistency blend must then be the fresh frame.
    flow = _OnePair(FlowPair(-backward, backward, np.zeros((H, W), np.float32)))
    fresh = FlowBlend(tiny_styles[0], strength=0.0).stylize(frames, 0, None, flow)[0]
    by_mask = FlowBlend(tiny_styles[0], blend_mask="consistency").stylize(frames, 0, None, flow)[0]
    by_photo = FlowBlend(tiny_styles[0]).stylize(frames, 0, None, flow)[0]
    assert np.array_equal(by_mask, fresh)
    assert not np.array_equal(by_photo[1], fresh[1])  # the photometric check trusts the exact warp
    flat = FlowBlend(tiny_styles[0], keep_detail=False).stylize(frames, 0, None, flow)[0]
    assert _detail_energy(flat[1].astype(np.float32)) < _detail_energy(by_photo[1].astype(np.float32))
    with pytest.raises(InputError, match="blend_mask must be one of"):
        FlowBlend(tiny_styles[0], blend_mask="sometimes")
    with pytest.raises(InputError, match=r"strength must be in \[0, 1\)"):
        FlowBlend(tiny_styles[0], strength=1.5)
    p = FlowBlend(tiny_styles[0]).params()
    assert p["blend_mask"] == "photometric" and p["keep_detail"] is True and p["strength"] == 0.6


def test_cli_passes_the_blend_options():
    args = build_parser().parse_args(["render", "in.mp4", "-o", "out.mp4", "--method", "flow-blend",
                                      "--blend-mask", "consistency", "--no-keep-detail", "--strength", "0.4"])
    cfg = config_from_args(args)
    assert cfg.options == {"strength": 0.4, "blend_mask": "consistency", "keep_detail": False}  # what was given
    assert validate_options(cfg.method, cfg.options) == {"strength": 0.4, "refine": False,
                                                         "blend_mask": "consistency", "keep_detail": False}
    defaults = config_from_args(build_parser().parse_args(["render", "in.mp4", "-o", "out.mp4", "--method",
                                                           "flow-blend"]))
    assert validate_options(defaults.method, defaults.options) == {"strength": 0.6, "refine": False,
                                                                   "blend_mask": "photometric", "keep_detail": True}
