"""The flow methods' steps in torch on the net's device (methods.on_device) against the host's
NumPy/OpenCV path, run here on the CPU: the same picture to a level, and exact carry-over."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from methods.flow_blend import FlowBlend
from methods.flow_recurrent import FlowRecurrent
from pipeline.flow import FlowPair
from pipeline.synthetic import camera_move

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


class _PanFlow:
    """A camera pan's exact flow: a uniform sub-pixel shift, so both paths interpolate."""

    def __init__(self, forward):
        self.forward = forward

    def pair(self, k):
        f = self.forward[k - 1]
        return FlowPair(f, -f, np.ones(f.shape[:2], np.float32))


@pytest.fixture(scope="module")
def shot():
    frames, forward = camera_move("chelsea", 10, (160, 96), "pan")
    return frames, _PanFlow(forward)


def _pair(cls, path, **opts):
    host, dev = cls(path, **opts), cls(path, **opts)
    dev.flow_steps_on_device = True  # torch on this CPU stands for the GPU
    assert not host.on_device and dev.on_device
    return host, dev


@pytest.mark.parametrize("opts", [{}, {"blend_mask": "consistency"}, {"keep_detail": False}])
def test_the_blend_on_the_device_matches_the_host_blend(shot, opts):
    frames, flow = shot
    host, dev = _pair(FlowBlend, WEIGHTS / "starry_night.safetensors", **opts)
    a = host.stylize(frames, 0, None, flow)[0].astype(int)
    b = dev.stylize(frames, 0, None, flow)[0].astype(int)
    assert (a[1:] != a[:-1]).mean() > 0.5  # a textured picture that moves: the comparison means something
    d = np.abs(a - b)  # measured: at most 0.012 levels on average and 2 at most over the 10 frames
    assert d.mean() < 0.05 and d.max() <= 3, (d.mean(), d.max())


def test_flow_recurrents_warp_on_the_device_matches_the_hosts(shot):
    frames, flow = shot
    host, dev = _pair(FlowRecurrent, WEIGHTS / "recurrent" / "starry_night.safetensors")
    a = host.stylize(frames, 0, None, flow)[0].astype(int)
    b = dev.stylize(frames, 0, None, flow)[0].astype(int)
    d = np.abs(a - b)  # measured: 0.0002 levels on average, 1 at most
    assert d.mean() < 0.05 and d.max() <= 3, (d.mean(), d.max())


@pytest.mark.parametrize("cls, path", [(FlowBlend, "starry_night.safetensors"),
                                       (FlowRecurrent, "recurrent/starry_night.safetensors")])
def test_on_the_device_a_chunked_shot_equals_the_shot_in_one_piece(shot, cls, path):
    frames, flow = shot
    _, dev = _pair(cls, WEIGHTS / path)
    whole = dev.stylize(frames, 0, None, flow)[0]
    first, state = dev.stylize(frames[:4], 0, None, flow)
    second, _ = dev.stylize(frames[4:], 4, state, flow)
    assert np.array_equal(np.concatenate([first, second]), whole)
