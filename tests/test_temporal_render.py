"""Flow-guided rendering: carry-over across chunks, reset at cuts, the flow cache in a render."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engine.config import RenderConfig
from engine.local import render
from pipeline import media
from pipeline.metrics import warping_error
from pipeline.synthetic import demo_shot_bounds
from pipeline.storage import open_storage

FPS = Fraction(24)


@pytest.fixture(scope="module")
def styles(tiny_styles):
    return tiny_styles


@pytest.fixture(scope="module")
def clip(demo_clip_factory):
    return demo_clip_factory(("astronaut", "coffee"))


def _render(clip, out, style, tmp, **kw):
    kw.setdefault("width", 96)
    kw.setdefault("cache_dir", str(tmp / "cache"))
    kw.setdefault("crf", 0)  # lossless: decoded frames differ only if stylized frames differ
    cfg = RenderConfig(input=clip, output=str(out), style=style, **kw)
    return render(cfg, progress=False, log=lambda m: None)


def _frames(path):
    info = media.probe(str(path))
    return np.stack(list(media.decode_frames(info, 0, info.frame_count, (96, 54))))


def test_flow_blend_chunked_equals_unchunked(tmp_path, clip, styles):
    a = _render(clip, tmp_path / "a.mp4", styles[0], tmp_path, method="flow-blend", chunk_frames=5)
    b = _render(clip, tmp_path / "b.mp4", styles[0], tmp_path, method="flow-blend", chunk_frames=1000)
    assert a.chunks > b.chunks
    assert np.array_equal(_frames(tmp_path / "a.mp4"), _frames(tmp_path / "b.mp4"))


def test_slices_inside_a_chunk_equal_one_pass(tmp_path, clip, styles, monkeypatch):
    # the net works on one slice while the next decodes and the last encodes (engine.overlap);
    # with flow computed on cache misses from the frames decoded so far
    import engine.chunks

    outs = []
    for n in (3, 10_000):
        monkeypatch.setattr(engine.chunks, "SLICE_FRAMES", n)
        out = tmp_path / f"s{n}.mp4"
        _render(clip, out, styles[0], tmp_path / f"c{n}", method="flow-blend", chunk_frames=20)
        outs.append(_frames(out))
    assert np.array_equal(*outs)


def test_state_resets_at_cuts_and_blending_steadies(tmp_path, clip, styles):
    per = _frames(_render(clip, tmp_path / "p.mp4", styles[0], tmp_path).output)
    blend = _frames(_render(clip, tmp_path / "f.mp4", styles[0], tmp_path, method="flow-blend").output)
    starts = [s for s, _ in demo_shot_bounds(2, FPS, 1)]
    for s in starts:  # a shot's first frame owes nothing to the previous shot
        assert np.array_equal(per[s], blend[s])
    assert not np.array_equal(per[starts[0] + 5], blend[starts[0] + 5])


def test_restyle_reads_all_flow_from_cache(tmp_path, clip, styles):
    first = _render(clip, tmp_path / "1.mp4", styles[0], tmp_path, method="flow-blend")
    second = _render(clip, tmp_path / "2.mp4", styles[1], tmp_path, method="flow-blend")
    pairs = first.flow["pairs"]
    assert pairs == 2 * (24 - 1)  # consecutive pairs inside the two shots, none across the cut
    assert first.flow["computed"] == pairs and first.flow["cache_hits"] == 0
    assert second.flow["computed"] == 0 and second.flow["cache_hits"] == pairs


def test_corrupt_flow_entry_is_recomputed(tmp_path, clip, styles, caplog):
    ref = _render(clip, tmp_path / "ref.mp4", styles[0], tmp_path, method="flow-blend")
    store = open_storage(ref.flow["cache"])
    keys = store.list("flow/")
    victim = keys[len(keys) // 2]
    data = bytearray(store.get(victim))
    data[len(data) // 2] ^= 0xFF
    store.put(victim, bytes(data))
    again = _render(clip, tmp_path / "again.mp4", styles[0], tmp_path, method="flow-blend",
                    workdir=str(tmp_path / "w2"))
    assert "corrupt" in caplog.text
    assert np.array_equal(_frames(tmp_path / "ref.mp4"), _frames(tmp_path / "again.mp4"))
    assert again.flow["cache_hits"] == again.flow["pairs"]  # the entry existed; readers fixed it


def test_flow_blend_lowers_warping_error(tmp_path, clip, styles):
    from pipeline.flow import compute_pair, make_flow_backend

    src = _frames(clip)
    per = _frames(_render(clip, tmp_path / "p.mp4", styles[0], tmp_path).output)
    blend = _frames(_render(clip, tmp_path / "f.mp4", styles[0], tmp_path, method="flow-blend").output)
    far = make_flow_backend("farneback")  # not the flow the render used
    shot = slice(0, 24)
    pairs = [compute_pair(far, src[t - 1], src[t]) for t in range(1, 24)]
    e_per = warping_error(per[shot], pairs)["mean"]
    e_blend = warping_error(blend[shot], pairs)["mean"]
    assert e_blend < 0.6 * e_per
