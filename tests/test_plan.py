import json
from fractions import Fraction

import pytest

from pipeline.plan import Chunk, RenderPlan, flow_pairs, make_plan
from pipeline.shots import Shot, shots_from_cuts

FPS = Fraction(24000, 1001)


def plan_for(cuts, frame_count, **kw):
    return make_plan("abc123", frame_count, FPS, (640, 360), shots_from_cuts(cuts, frame_count), **kw)


def test_balanced_chunks():
    plan = plan_for([], 100)
    assert [c.length for c in plan.chunks] == [34, 33, 33]
    assert [c.length for c in plan_for([], 96).chunks] == [48, 48]
    assert [c.length for c in plan_for([], 49).chunks] == [25, 24]
    assert [c.length for c in plan_for([], 5).chunks] == [5]  # a short shot is one short chunk


def test_chunks_tile_film_and_never_cross_a_cut():
    cuts = [30, 180, 394, 691]
    plan = plan_for(cuts, 720, max_chunk_frames=40)
    assert plan.chunks[0].start == 0 and plan.chunks[-1].end == 720
    assert all(a.end == b.start for a, b in zip(plan.chunks, plan.chunks[1:]))
    for c in plan.chunks:
        shot = plan.shots[c.shot]
        assert shot.start <= c.start < c.end <= shot.end
        assert not any(c.start < cut < c.end for cut in cuts)
        assert 1 <= c.length <= 40
    for shot in plan.shots:
        mine = plan.chunks_of_shot(shot.index)
        assert [c.index for c in mine] == list(range(len(mine)))
        assert mine[0].first_in_shot and not any(c.first_in_shot for c in mine[1:])
        assert sum(c.length for c in mine) == shot.length


def test_chunk_ids_are_stable_and_sortable():
    c = Chunk(shot=3, index=2, start=120, end=168)
    assert c.id == "s0003-c0002-f000120-000168"
    plan = plan_for([30, 180], 300)
    ids = [c.id for c in plan.chunks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_keys_stable_and_sensitive_to_every_input():
    plan = plan_for([30], 100)
    c = plan.chunks[1]
    base = plan.key("segment", c, method="per-frame", model="m1", crf=18)
    assert base == plan.key("segment", c, crf=18, model="m1", method="per-frame")  # param order is irrelevant
    variants = {
        plan.key("flow", c, method="per-frame", model="m1", crf=18),
        plan.key("segment", plan.chunks[2], method="per-frame", model="m1", crf=18),
        plan.key("segment", c, method="per-frame", model="m2", crf=18),
        plan.key("segment", c, method="per-frame", model="m1", crf=19),
        plan.key("segment", c, method="per-frame", model="m1", crf=18, extra=True),
        make_plan("other", 100, FPS, (640, 360), plan.shots).key("segment", c, method="per-frame", model="m1", crf=18),
        make_plan("abc123", 100, FPS, (320, 180), plan.shots).key("segment", c, method="per-frame", model="m1", crf=18),
    }
    assert base not in variants and len(variants) == 7
    assert len(base) == 20 and int(base, 16) >= 0
    # Fractions and paths are canonicalised; unknown objects are refused instead of str()-ed.
    assert plan.key("x", c, fps=Fraction(1, 3)) == plan.key("x", c, fps=Fraction(2, 6))
    with pytest.raises(TypeError):
        plan.key("x", c, thing=object())


def test_keys_stable_across_runs():
    # A golden value: if this changes, every cached artifact of every user is invalidated.
    plan = plan_for([30], 100)
    assert plan.key("segment", plan.chunks[1], method="per-frame", crf=18) == "9e8fd27f650485d134ed"


def test_flow_pairs_bridge_chunks_but_not_cuts():
    plan = plan_for([50], 150, max_chunk_frames=20)
    pairs = flow_pairs(plan)
    assert (49, 50) not in pairs  # across the cut
    assert len(pairs) == 150 - 2  # every consecutive pair but the two that start a shot
    bridges = [(c.start - 1, c.start) for c in plan.chunks if not c.first_in_shot]
    assert bridges and all(b in pairs for b in bridges)
    # Per chunk: its own pairs plus the bridge from the previous chunk; together exactly the film's pairs.
    per_chunk = [p for c in plan.chunks for p in flow_pairs(plan, c)]
    assert per_chunk == pairs
    second = plan.chunks_of_shot(1)[1]
    assert flow_pairs(plan, second)[0] == (second.start - 1, second.start)


def test_round_trip_through_json():
    plan = plan_for([30, 180], 300)
    again = RenderPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    assert again.fps == FPS and isinstance(again.fps, Fraction)


@pytest.mark.parametrize(
    "shots, frame_count, message",
    [
        ([Shot(0, 0, 50), Shot(1, 60, 100)], 100, "gap"),
        ([Shot(0, 0, 50), Shot(1, 40, 100)], 100, "overlap"),
        ([Shot(0, 0, 50), Shot(1, 50, 90)], 100, "100 frames"),
        ([Shot(0, 1, 100)], 100, "starts at frame 1"),
        ([Shot(0, 0, 50), Shot(2, 50, 100)], 100, "index"),
        ([Shot(0, 0, 0), Shot(1, 0, 100)], 100, "empty"),
        ([], 100, "empty"),
    ],
)
def test_bad_shot_lists_rejected(shots, frame_count, message):
    with pytest.raises(ValueError, match=message):
        make_plan("abc", frame_count, FPS, (640, 360), shots)


def test_bad_chunk_sizes_rejected():
    shots = shots_from_cuts([], 100)
    with pytest.raises(ValueError, match="max_chunk_frames"):
        make_plan("abc", 100, FPS, (640, 360), shots, max_chunk_frames=0)


def test_tampered_plan_rejected():
    d = plan_for([30], 100).to_dict()
    d["chunks"][1]["start"] += 1
    with pytest.raises(ValueError, match="tile"):
        RenderPlan.from_dict(d)
