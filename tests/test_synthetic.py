from fractions import Fraction

import cv2
import numpy as np
import pytest

from pipeline import media
from pipeline.synthetic import camera_move, demo_shot_bounds, main, make_demo_clip, moving_object

SIZE = (320, 180)


def warp_back(next_frame, flow):
    """Sample frame t+1 at x + flow(x): equals frame t where the flow is right."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = xs + flow[..., 0], ys + flow[..., 1]
    inside = (mx >= 1) & (mx <= w - 2) & (my >= 1) & (my <= h - 2)  # not moved out of the frame
    return cv2.remap(next_frame, mx, my, cv2.INTER_LINEAR), inside


@pytest.mark.parametrize("move", ["pan", "zoom", "rotate"])
def test_analytic_flow_is_exact(move):
    frames, flows = camera_move("coffee", 4, SIZE, move)
    assert frames.shape == (4, 180, 320, 3) and frames.dtype == np.uint8
    assert flows.shape == (3, 180, 320, 2) and flows.dtype == np.float32
    for t in range(3):
        assert np.abs(flows[t]).max() > 2  # the camera really moves
        warped, inside = warp_back(frames[t + 1], flows[t])
        err = np.abs(warped.astype(np.float32) - frames[t])[inside].mean()
        assert inside.mean() > 0.7
        assert err < 2.0, f"{move} t={t}: mean abs error {err:.2f} (gray levels)"
        # Half a pixel off is clearly worse: the test can tell a right flow from a near miss.
        off, inside_off = warp_back(frames[t + 1], flows[t] + 0.5)
        assert np.abs(off.astype(np.float32) - frames[t])[inside & inside_off].mean() > 2 * err


def test_camera_move_edge_cases():
    frames, flows = camera_move(np.zeros((50, 80, 3), np.uint8), 1, SIZE, "zoom")
    assert frames.shape == (1, 180, 320, 3) and flows.shape == (0, 180, 320, 2)
    with pytest.raises(ValueError, match="camera move"):
        camera_move("coffee", 3, SIZE, "dolly")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.mp4"
    assert make_demo_clip(path, width=320, height=180, fps=Fraction(24), seconds_per_shot=1) == path
    return path


def test_demo_clip_has_shots_audio_and_tags(demo):
    info = media.probe(demo)
    assert (info.width, info.height, info.fps, info.frame_count) == (320, 180, Fraction(24), 72)
    assert (info.codec, info.pix_fmt, info.color_space, info.color_primaries, info.color_trc) == (
        "h264", "yuv420p", "bt709", "bt709", "bt709")
    assert len(info.audio) == 1 and info.audio[0].codec == "aac"
    frames = np.stack(list(media.decode_frames(info, 0, 72, (160, 90)))).astype(np.float32)
    step = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # step[i]: frame i -> i+1
    cuts = [start - 1 for start, _ in demo_shot_bounds(3, Fraction(24), 1)[1:]]
    within = np.delete(step, cuts)
    assert step[cuts].min() > 2 * within.max(), (step[cuts], within.max())


def test_demo_audio_changes_at_each_cut(demo):
    import av

    with av.open(str(demo)) as c:
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
        rate = c.streams.audio[0].sample_rate
    assert abs(len(samples) / rate - 3.0) < 0.1  # as long as the picture

    def pitch(t0):  # dominant frequency of 0.2 s starting at t0 seconds
        seg = samples[int(t0 * rate):int((t0 + 0.2) * rate)]
        spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        return np.argmax(spectrum) * rate / len(seg)

    first_notes = [pitch(s + 0.02) for s in (0, 1, 2)]  # the first note of each shot
    assert len({round(p, -1) for p in first_notes}) == 3, first_notes


def test_cli_usage():
    assert main([]) == 2


def test_moving_object_flow_and_occlusion():
    frames, flows, occluded = moving_object("coffee", 4, SIZE, "zoom", velocity=(5, 3))
    assert occluded.shape == (3, 180, 320) and occluded.dtype == bool
    for t in range(3):
        warped, inside = warp_back(frames[t + 1], flows[t])
        err = np.abs(warped.astype(np.float32) - frames[t]).mean(axis=2)
        visible = ~occluded[t]
        assert err[visible & inside].mean() < 2.0
        # The background the patch covers next has no match: large error there.
        covered = occluded[t] & inside
        assert covered.sum() > 5 * 60 and err[covered].mean() > 10 * err[visible & inside].mean()
    ys, xs = np.nonzero((flows[0] == (5, 3)).all(axis=2))
    assert len(ys) == 60 * 60  # the patch (h // 3 square) moves by the velocity
    with pytest.raises(ValueError, match="leaves the frame"):
        moving_object("coffee", 100, SIZE, velocity=(5, 3))
