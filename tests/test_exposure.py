"""The source's exposure on the stylized frames (pipeline.exposure, methods.base.FollowExposure)."""
from __future__ import annotations

import numpy as np
import pytest

from methods import RunSettings, make_method
from pipeline.errors import InputError
from pipeline.exposure import TYPICAL_LUMA, follow_exposure, mean_luma


def _frame(level: float, size=(24, 32), dtype=np.uint8) -> np.ndarray:
    """A textured frame (a ramp with noise) whose mean coded luminance is about ``level``."""
    top = 65535 if dtype == np.uint16 else 255
    rng = np.random.default_rng(0)
    x = np.linspace(-0.5, 0.5, size[1])[None, :, None] + 0.2 * rng.standard_normal((*size, 3))
    return np.clip((level + level * x) * top + 0.5, 0, top).astype(dtype)[None]


def test_a_typical_frame_is_left_as_the_net_painted_it():
    src = _frame(TYPICAL_LUMA)
    assert abs(float(mean_luma(src)[0]) - TYPICAL_LUMA) < 0.01
    out = _frame(0.6)[:, ::-1].copy()
    assert np.abs(follow_exposure(out, src).astype(int) - out).max() <= 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_dark_frames_darken_the_output_by_their_share_of_the_typical_level(dtype):
    out = _frame(0.5, dtype=dtype)
    for level in (0.2, 0.05):
        src = _frame(level, dtype=dtype)
        got = follow_exposure(out, src)
        ratio = float(mean_luma(got)[0] / mean_luma(out)[0])
        assert ratio == pytest.approx(float(mean_luma(src)[0]) / TYPICAL_LUMA, rel=0.02)
        # a gain: light and dark within the frame keep their order
        flat, darker = out.reshape(-1), got.reshape(-1)
        assert np.all(np.diff(darker[np.argsort(flat, kind="stable")].astype(np.int64)) >= 0)
    black = np.zeros_like(out)
    assert follow_exposure(out, black).max() == 0, "a fade from black stays black"


def test_bright_frames_lift_the_output_towards_white():
    out = _frame(0.4)
    src = _frame(0.8)
    got = follow_exposure(out, src)
    m = float(mean_luma(src)[0])
    headroom = (1 - float(mean_luma(got)[0])) / (1 - float(mean_luma(out)[0]))
    assert headroom == pytest.approx((1 - m) / (1 - TYPICAL_LUMA), rel=0.03)
    with pytest.raises(ValueError, match="differ"):
        follow_exposure(out, src[:, :-1])


@pytest.fixture(scope="module")
def plain_style(tmp_path_factory):
    """A tiny net without normalisation, as the students are."""
    import torch

    from models.checkpoint import save_style_model
    from models.transformer import TransformerConfig, TransformerNet

    torch.manual_seed(0)
    net = TransformerNet(TransformerConfig(base_channels=8, residual_blocks=1, norm="none"))
    return str(save_style_model(tmp_path_factory.mktemp("plain") / "plain.safetensors", net, {"name": "plain"}))


def test_an_instance_norm_net_paints_every_exposure_alike_and_follow_gives_it_the_sources(tiny_styles):
    lit = _frame(0.45, size=(48, 64))
    dark = (lit.astype(np.float32) * 0.2 + 0.5).astype(np.uint8)
    blind = make_method("per-frame", tiny_styles[0], RunSettings(exposure="net"))
    a, _ = blind.stylize(lit, 0, None)
    b, _ = blind.stylize(dark, 0, None)
    assert abs(float(mean_luma(a)[0] - mean_luma(b)[0])) < 0.02, "the net cannot see the exposure"

    follow = make_method("per-frame", tiny_styles[0], RunSettings())
    assert follow.params() == {**blind.params(), "exposure": "follow"} and follow.name == "per-frame"
    c, _ = follow.stylize(lit, 0, None)
    d, _ = follow.stylize(dark, 0, None)
    assert np.array_equal(c, follow_exposure(a, lit))
    assert float(mean_luma(d)[0]) == pytest.approx(float(mean_luma(b)[0] * mean_luma(dark)[0]) / TYPICAL_LUMA, rel=0.02)


def test_nets_that_see_exposure_and_other_methods_are_left_alone(plain_style):
    plain = make_method("per-frame", plain_style, RunSettings())
    assert "exposure" not in plain.params() and not plain.exposure_blind
    with pytest.raises(InputError, match="exposure"):
        make_method("per-frame", plain_style, RunSettings(exposure="auto"))


def test_the_render_flag_reaches_the_method():
    from cli.args import config_from_args
    from cli.main import build_parser
    from engine.job import run_settings

    def settings(*flags):
        return run_settings(config_from_args(build_parser().parse_args(["render", "in.mp4", "-o", "o.mp4", *flags])))

    assert settings().exposure == "follow" and settings("--exposure", "net").exposure == "net"


def test_a_net_normalised_at_the_inner_resolutions_is_followed_too(tmp_path):
    """A student with instance norm at 1/2 and 1/4 resolution only is as blind as a fully normalised
    net (measured: 0.414 -> 0.399 output luminance from full exposure to 0.03)."""
    import torch

    from models.checkpoint import save_style_model
    from models.transformer import TransformerConfig, TransformerNet

    torch.manual_seed(0)
    net = TransformerNet(TransformerConfig(base_channels=8, residual_blocks=1, norm="instance-inner"))
    path = save_style_model(tmp_path / "inner.safetensors", net, {"name": "inner"})
    method = make_method("per-frame", str(path), RunSettings())
    assert method.exposure_blind and method.params()["exposure"] == "follow"
