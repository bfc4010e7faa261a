"""pipeline.metrics: warping error (Lai et al.), .flo I/O, end-point error, seam error."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.flow import FlowPair
from pipeline.metrics import end_point_error, read_flo, seam_error, warping_error, write_flo

SINTEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "flow" / "sintel"
SHIFT = (2, 1)  # content moves 2 px right and 1 px down per frame


def _translating_sequence(n=4, h=40, w=60, offsets=None):
    """O_t(x + SHIFT) = O_{t-1}(x) + offsets[t] - offsets[t-1], with the exact forward flows."""
    base = cv2.GaussianBlur(np.random.default_rng(0).random((h, w, 3)).astype(np.float32), (5, 5), 1)
    base = 0.25 + 0.5 * base  # room for the flicker offsets
    offsets = offsets if offsets is not None else [0.0] * n
    frames = [np.roll(base, (SHIFT[1] * t, SHIFT[0] * t), axis=(0, 1)) + offsets[t] for t in range(n)]
    flows = [np.broadcast_to(np.float32(SHIFT), (h, w, 2)).copy() for _ in range(n - 1)]
    return frames, flows


def test_warping_error_is_zero_for_a_perfectly_warped_sequence():
    frames, flows = _translating_sequence()
    result = warping_error(frames, flows)
    assert len(result["per_frame"]) == 3
    assert result["mean"] < 1e-10


def test_warping_error_measures_flicker_exactly():
    frames, flows = _translating_sequence(offsets=[0.05, -0.05, 0.05, -0.05])
    result = warping_error(frames, flows)
    np.testing.assert_allclose(result["per_frame"], [0.01] * 3, rtol=1e-4)  # (0.1)^2 per pixel
    np.testing.assert_allclose(result["mean"], 0.01, rtol=1e-4)


def test_warping_error_uses_the_forward_flow():
    frames, flows = _translating_sequence()
    backward = [-f for f in flows]
    assert warping_error(frames, backward)["mean"] > 100 * max(warping_error(frames, flows)["mean"], 1e-12)


def test_warping_error_uint8_is_scaled_to_unit_range():
    frames, flows = _translating_sequence(offsets=[0.05, -0.05, 0.05, -0.05])
    as_uint8 = [np.rint(f * 255).astype(np.uint8) for f in frames]
    np.testing.assert_allclose(warping_error(as_uint8, flows)["mean"], 0.01, rtol=0.05)


def test_warping_error_masks_are_on_frame_t_minus_1():
    frames, flows = _translating_sequence(n=2)
    frames[0][:10] = 1.0  # damage rows 0-9 of frame t-1
    masks = [np.ones(frames[0].shape[:2], np.float32)]
    masks[0][:10] = 0
    masks[0][:, -SHIFT[0]:] = 0  # pixels whose target leaves the frame
    masks[0][-SHIFT[1]:] = 0
    assert warping_error(frames, flows, masks)["mean"] < 1e-10
    assert warping_error(frames, flows)["mean"] > 1e-3


def test_warping_error_with_flow_pairs_derives_the_mask():
    frames, flows = _translating_sequence(n=3)
    mask_t = np.zeros(frames[0].shape[:2], np.float32)  # FlowPair.mask (frame t) must not be used
    pairs = [FlowPair(f, -f, mask_t) for f in flows]
    result = warping_error(frames, pairs)
    assert result["mean"] < 1e-10 and all(math.isfinite(e) for e in result["per_frame"])


def test_warping_error_checks_lengths_and_empty_masks():
    frames, flows = _translating_sequence(n=3)
    with pytest.raises(ValueError):
        warping_error(frames, flows[:1])
    empty = [np.zeros(frames[0].shape[:2])] * 2
    result = warping_error(frames, flows, empty)
    assert all(math.isnan(e) for e in result["per_frame"]) and math.isnan(result["mean"])


def test_flo_round_trip(tmp_path):
    flow = np.random.default_rng(3).normal(0, 5, (7, 11, 2)).astype(np.float32)
    path = tmp_path / "a.flo"
    write_flo(path, flow)
    assert path.stat().st_size == 12 + 7 * 11 * 8
    np.testing.assert_array_equal(read_flo(path), flow)


def test_read_flo_rejects_bad_files(tmp_path):
    flow = np.zeros((4, 5, 2), np.float32)
    good = tmp_path / "good.flo"
    write_flo(good, flow)
    data = good.read_bytes()
    cases = {
        "magic": b"PIEH" + data[4:] if data[:4] != b"PIEH" else b"XXXX" + data[4:],
        "short": data[:8],
        "truncated": data[:-4],
        "trailing": data + b"\0" * 8,
        "size": data[:4] + np.array([0, 5], "<i4").tobytes() + data[12:],
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.flo"
        bad.write_bytes(blob)
        with pytest.raises(InputError, match=bad.name):
            read_flo(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_flo(tmp_path / "missing.flo")


def test_read_flo_on_sintel():
    path = SINTEL / "alley_1_clean" / "gt" / "frame_0002.flo"
    if not path.is_file():
        pytest.skip(f"real-data test: {path} is absent (../shared/data not mounted)")
    flow = read_flo(path)
    assert flow.shape == (436, 1024, 2) and np.isfinite(flow).all()


def test_end_point_error():
    gt = np.zeros((4, 4, 2), np.float32)
    est = gt + np.float32([3, 4])
    assert end_point_error(est, gt) == pytest.approx(5.0)
    valid = np.zeros((4, 4), bool)
    valid[0, 0] = True
    est[1:, :] = 100
    assert end_point_error(est, gt, valid) == pytest.approx(5.0)
    gt[0, 1] = 1e10  # Middlebury "unknown"
    est[0, 1] = 0
    assert end_point_error(est, gt, np.ones((4, 4), bool) & (np.arange(4)[:, None] == 0)) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        end_point_error(est, gt[:2])


def test_seam_error():
    per_frame = [1.0, 1.0, 3.0, 1.0, 1.0, 5.0, float("nan")]  # frames 1..7
    result = seam_error(per_frame, chunk_starts=[3, 6])
    assert result == {"boundary": 4.0, "interior": 1.0, "ratio": 4.0}
    assert seam_error({10: 2.0, 11: 1.0}, [10]) == {"boundary": 2.0, "interior": 1.0, "ratio": 2.0}
    assert seam_error([1.0, 2.0], [1, 2], first_frame=0)["boundary"] == 2.0
    no_seams = seam_error([1.0, 2.0], [])
    assert math.isnan(no_seams["boundary"]) and no_seams["interior"] == 1.5 and math.isnan(no_seams["ratio"])
