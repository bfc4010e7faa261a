"""The CPU's arithmetic: the precision a render picks, and the inference net's rearrangements.

``for_inference`` must compute the trained net's function (RowConv, group-norm instance norm);
bf16 must stay within its bound of fp32 on a real frame.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline.device as device
from models.inference import RowConv, for_inference
from models.transformer import SIZES, InstanceNorm, TransformerNet
from pipeline.errors import InputError


@pytest.fixture
def unpinned(monkeypatch):
    monkeypatch.delenv("FILMSTYLE_CPU_PRECISION", raising=False)
    device.cpu_precision.cache_clear()
    yield
    device.cpu_precision.cache_clear()


def test_cpu_precision_follows_the_timing(unpinned, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(device, "conv_seconds", lambda dtype, **kw: 1.0 if dtype == torch.float32 else 0.5)
    assert device.cpu_precision() == "bf16"
    assert device.defaults_for("cpu").precision == "bf16"
    device.cpu_precision.cache_clear()
    # an AVX2-only CPU: bf16 runs, 10x slower
    monkeypatch.setattr(device, "conv_seconds", lambda dtype, **kw: 1.0 if dtype == torch.float32 else 10.0)
    assert device.cpu_precision() == "fp32"
    device.cpu_precision.cache_clear()
    monkeypatch.setattr(device, "conv_seconds", lambda dtype, **kw: 1.0 if dtype == torch.float32 else 0.9)
    assert device.cpu_precision() == "fp32"  # within the margin: not worth bf16's rounding


def test_cpu_precision_is_fp32_without_bf16_kernels_and_can_be_pinned(unpinned, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert device.cpu_precision() == "fp32"
    device.cpu_precision.cache_clear()
    monkeypatch.setenv("FILMSTYLE_CPU_PRECISION", "bf16")
    assert device.cpu_precision() == "bf16"
    device.cpu_precision.cache_clear()
    monkeypatch.setenv("FILMSTYLE_CPU_PRECISION", "int4")
    with pytest.raises(InputError, match="FILMSTYLE_CPU_PRECISION"):
        device.cpu_precision()


def test_the_conv_probe_times_both_precisions():
    assert 0 < device.conv_seconds(torch.float32, threads=1, repeats=1) < 5


def test_row_conv_computes_the_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 3, 9)
    x = torch.randn(2, 8, 30, 41)
    assert torch.allclose(RowConv(conv)(x), conv(x), atol=1e-5)
    with pytest.raises(ValueError):
        RowConv(torch.nn.Conv2d(8, 3, 9, stride=2))


def test_instance_norm_as_group_norm_matches_torch_instance_norm_and_loads_its_weights():
    torch.manual_seed(0)
    ref = torch.nn.InstanceNorm2d(16, affine=True)
    ref.weight.data.uniform_(0.5, 1.5)
    ref.bias.data.normal_()
    ours = InstanceNorm(16, affine=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 20, 24).contiguous(memory_format=torch.channels_last).requires_grad_()
    y_ref, y = ref(x), ours(x)
    assert torch.allclose(y, y_ref, atol=1e-4)
    g = torch.randn_like(y)
    assert torch.allclose(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0], atol=1e-4)


def test_the_inference_net_computes_the_trained_nets_function():
    torch.manual_seed(0)
    net = TransformerNet(SIZES["student"]).eval()
    fast = for_inference(net)
    assert any(isinstance(m, RowConv) for m in fast.modules())
    assert not any(isinstance(m, RowConv) for m in net.modules())  # the original is left as it was
    x = torch.rand(1, 3, 36, 52)
    with torch.inference_mode():
        assert torch.allclose(fast.stylize(x.contiguous(memory_format=torch.channels_last)), net.stylize(x), atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_frames_do_not_depend_on_the_thread_count(precision, tiny_styles):
    """Chunks of one render run on workers with different thread counts and must agree to the bit."""
    from methods import NetRunner, RunSettings

    runner = NetRunner(tiny_styles[0], RunSettings(device="cpu", precision=precision))
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(runner(frames))
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(o, outs[0]) for o in outs[1:])


@pytest.mark.realdata
def test_bf16_stays_within_a_level_of_fp32_on_a_real_frame(shared_video):
    """The bound bf16 is held to: on average under one 8-bit level from fp32 (x264 at CRF 18
    changes a stylized frame by more: benchmarks/net_speed.py), 99% of values within 4."""
    from methods import NetRunner, RunSettings, resolve_style
    from pipeline import media

    info = media.probe(shared_video("imageio_cockatoo_yuv420.mp4"))
    frame = next(iter(media.decode_frames(info, 0, 1, (320, 180))))[None]
    out = {p: NetRunner(resolve_style("starry_night"), RunSettings(device="cpu", precision=p))(frame).astype(np.int16)
           for p in ("fp32", "bf16")}
    d = np.abs(out["bf16"] - out["fp32"])
    assert d.mean() < 1.0 and np.percentile(d, 99) <= 4, (d.mean(), np.percentile(d, 99))


def test_frames_side_by_side_equal_frames_one_at_a_time(tiny_styles):
    from methods import NetRunner, RunSettings

    runner = NetRunner(tiny_styles[0], RunSettings(device="cpu", precision="fp32"))
    frames = np.random.default_rng(1).integers(0, 256, (5, 40, 64, 3), dtype=np.uint8)
    runner.frame_threads = 2
    side_by_side = runner(frames)
    runner.frame_threads = 1
    assert np.array_equal(side_by_side, runner(frames))
