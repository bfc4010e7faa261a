from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline import media, shots
from pipeline.errors import InputError
from pipeline.shots import DETECTORS, Shot, ShotParams, detect_shots, read_shots, shots_from_cuts, write_shots
from pipeline.synthetic import camera_move, demo_shot_bounds, make_demo_clip

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESTVIDEO = DATA / "videos" / "pyscenedetect_testvideo.mp4"

# pyscenedetect_testvideo.mp4 (720 frames): black 0-29, hard cut to a still at 30, hard cut to
# black at 180, then fades (in ~210, out ~330-360, in from 394, dissolve ~528-558, out ~663-696).
# References: PySceneDetect 0.7.2's CLI on this file (detect-hash: 30, 180; detect-adaptive:
# 30, 180, 394, 691 where 394/691 are fade boundaries) and its own test suite
# (tests/test_detectors.py: ThresholdDetector scene starts 0, 15, 198, 376).
HARD_CUTS = [30, 180]
CLI_ADAPTIVE_CUTS = [30, 180, 394, 691]


def near(found, expected, tol=1):
    return len(found) == len(expected) and all(abs(f - e) <= tol for f, e in zip(found, expected))


def cuts_of(shot_list):
    return [s.start for s in shot_list[1:]]


def tiles(shot_list, frame_count):
    return shot_list[0].start == 0 and shot_list[-1].end == frame_count and all(
        a.end == b.start and a.index + 1 == b.index for a, b in zip(shot_list, shot_list[1:])
    )


needs_data = pytest.mark.skipif(not TESTVIDEO.is_file(), reason=f"real test data not found at {DATA}")


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory):
    """Three 1-second shots (pan, zoom, rotate) with hard cuts at frames 24 and 48."""
    path = tmp_path_factory.mktemp("demo") / "demo.mp4"
    return make_demo_clip(path, width=320, height=180, fps=Fraction(24), seconds_per_shot=1)


@pytest.fixture(scope="module")
def one_shot_clip(tmp_path_factory):
    frames, _ = camera_move("rocket", 40, (320, 180), "pan", amount=0.3)
    path = tmp_path_factory.mktemp("pan") / "pan.mp4"
    with media.SegmentWriter(path, Fraction(24), (320, 180), preset="ultrafast") as w:
        w.write(frames)
    return path


@needs_data
@pytest.mark.realdata
def test_real_clip_default_detector_finds_the_hard_cuts():
    found = detect_shots(TESTVIDEO)
    assert tiles(found, 720)
    cuts = cuts_of(found)
    assert all(any(abs(c - h) <= 1 for c in cuts) for h in HARD_CUTS)
    # Anything else it reports is a fade boundary PySceneDetect's own CLI reports too.
    assert all(any(abs(c - r) <= 1 for r in CLI_ADAPTIVE_CUTS) for c in cuts), cuts


@needs_data
@pytest.mark.realdata
@pytest.mark.parametrize(
    "detector, expected",
    [("hash", HARD_CUTS), ("content", [30, 180, 394]), ("threshold", [15, 198, 376])],
)
def test_real_clip_matches_pyscenedetect_reference(detector, expected):
    found = detect_shots(TESTVIDEO, ShotParams(detector=detector))
    assert tiles(found, 720)
    assert near(cuts_of(found), expected), cuts_of(found)


VFR_VIDEO = DATA / "videos" / "pyscenedetect_goldeneye-vfr-drop3.mp4"


@pytest.mark.realdata
@pytest.mark.skipif(not VFR_VIDEO.is_file(), reason=f"real test data not found at {DATA}")
def test_vfr_cuts_are_decode_indices():
    """Cut frames are indices into the decoded sequence: the picture jumps exactly between c-1 and c.

    (PySceneDetect's CLI derives frame numbers from timestamps at the average rate: on this
    file it reports the second cut (pts 8.759 s, decoded frame 140) as frame 141.)"""
    info = media.probe(VFR_VIDEO)
    found = detect_shots(VFR_VIDEO)
    assert tiles(found, info.frame_count) and len(found) > 1
    frames = np.stack(list(media.decode_frames(info, 0, info.frame_count, (64, 36)))).astype(np.float32)
    step = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # step[i]: frame i -> i+1
    for c in cuts_of(found):
        assert step[c - 1] == step[c - 4:c + 3].max(), (c, step[c - 4:c + 3])


def test_demo_clip_cuts_are_exact(demo_clip):
    found = detect_shots(demo_clip)
    assert [(s.start, s.end) for s in found] == demo_shot_bounds(3, Fraction(24), 1) == [(0, 24), (24, 48), (48, 72)]


def test_single_shot_clip_gives_one_shot(one_shot_clip):
    assert detect_shots(one_shot_clip) == [Shot(0, 0, 40)]
    # frame_count bounds the analysis and the tiling.
    assert detect_shots(one_shot_clip, frame_count=30) == [Shot(0, 0, 30)]


def test_cache_hit_skips_detection(demo_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("FILMSTYLE_CACHE", str(tmp_path / "hashes"))  # media's content-hash memo
    seen = []
    first = detect_shots(demo_clip, cache_dir=tmp_path, progress=seen.append)
    assert sum(seen) == 72 and len(list(tmp_path.glob("shots-*.json"))) == 1

    def no_detection(*args, **kwargs):
        raise AssertionError("detector ran although the result was cached")

    monkeypatch.setattr(shots, "_detect", no_detection)
    assert detect_shots(demo_clip, cache_dir=tmp_path) == first
    # Other params (or another source hash) are another entry.
    with pytest.raises(AssertionError, match="detector ran"):
        detect_shots(demo_clip, ShotParams(min_shot_frames=10), cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="detector ran"):
        detect_shots(demo_clip, cache_dir=tmp_path, source_hash="another-film")


def test_damaged_cache_entry_is_recomputed(demo_clip, tmp_path):
    first = detect_shots(demo_clip, cache_dir=tmp_path, source_hash="demo")
    (entry,) = tmp_path.glob("shots-*.json")
    entry.write_text("{not json")
    assert detect_shots(demo_clip, cache_dir=tmp_path, source_hash="demo") == first


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_shot_list_round_trip(tmp_path, suffix):
    original = shots_from_cuts([30, 180], 300)
    path = write_shots(original, tmp_path / f"shots{suffix}")
    assert read_shots(path) == original
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_bad_shot_lists_are_rejected(tmp_path):
    bad = tmp_path / "gap.csv"
    bad.write_text("index,start,end\n0,0,10\n1,12,20\n")
    with pytest.raises(InputError, match="gap"):
        read_shots(bad)
    with pytest.raises(InputError, match="json or .csv"):
        read_shots(tmp_path / "shots.txt")
    with pytest.raises(ValueError):
        write_shots([Shot(0, 0, 5)], tmp_path / "shots.txt")


def test_min_shot_length_removes_false_detections_only():
    # A cut near the start is a fade-in artefact; a short segment after a true cut is a shot,
    # the last one included; cuts outside the film are ignored.
    assert cuts_of(shots_from_cuts([3, 50, 58, 95], 100, min_frames=10)) == [50, 58, 95]
    assert shots_from_cuts([0, 100, 120], 100) == [Shot(0, 0, 100)]
    # A flash: the picture before the short segment comes back after it; both cuts go.
    flash = lambda i, j: (i, j) == (49, 52)  # noqa: E731
    assert cuts_of(shots_from_cuts([50, 52, 80], 100, min_frames=10, same_picture=flash)) == [80]
    # A burst (a fade crossing the threshold on consecutive frames): the first cut stays.
    assert cuts_of(shots_from_cuts([40, 60, 61, 62, 63], 100, min_frames=10)) == [40, 60]
    # A real short shot between two long ones keeps both its cuts.
    assert cuts_of(shots_from_cuts([40, 48], 100, min_frames=15, same_picture=lambda i, j: False)) == [40, 48]


def _clip(tmp_path, parts, name="clip.mp4"):
    """Write shots given as (photo, frames, move) or a (frames, h, w, 3) array; return the path."""
    size = (320, 180)
    path = tmp_path / name
    with media.SegmentWriter(path, Fraction(24), size, preset="ultrafast", crf=12) as w:
        for part in parts:
            w.write(part if isinstance(part, np.ndarray) else camera_move(part[0], part[1], size, part[2])[0])
    return path


def test_a_short_last_shot_after_a_true_cut_is_a_shot(tmp_path):
    clip = _clip(tmp_path, [("rocket", 40, "pan"), ("coffee", 8, "zoom")])
    assert cuts_of(detect_shots(clip)) == [40]  # the default minimum is 15 frames


def test_a_short_shot_between_two_shots_keeps_both_cuts(tmp_path):
    clip = _clip(tmp_path, [("rocket", 30, "pan"), ("coffee", 8, "zoom"), ("astronaut", 30, "rotate")])
    assert cuts_of(detect_shots(clip)) == [30, 38]


def test_a_flash_is_not_a_cut(tmp_path):
    frames, _ = camera_move("rocket", 60, (320, 180), "pan", amount=0.1)
    frames[30:32] = 255  # two white frames: a photographer's flash
    clip = _clip(tmp_path, [frames])
    assert cuts_of(detect_shots(clip)) == []
    # With the minimum at 1 frame nothing is a false detection: the flash is its own shot.
    assert cuts_of(detect_shots(clip, ShotParams(min_shot_frames=1))) == [30, 32]


def test_params_validated():
    assert set(DETECTORS) >= {"adaptive", "content", "threshold", "hash"}
    assert ShotParams().detector == "adaptive"
    with pytest.raises(ValueError, match="unknown shot detector"):
        ShotParams(detector="magic")
    with pytest.raises(ValueError):
        ShotParams(min_shot_frames=0)
    for name, factory in DETECTORS.items():
        assert hasattr(factory(ShotParams(name, threshold=0.5)), "process_frame")
