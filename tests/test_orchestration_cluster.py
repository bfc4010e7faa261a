"""The Prefect + Ray engine on a multi-node Ray cluster: a head and two worker nodes on this machine
(ray.cluster_utils.Cluster, 1 CPU each). The ``ray_cluster`` fixture shuts the session's local Ray
down for this module (a later test asking for ``ray_local`` starts it again).
"""
from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from frames import all_frames

from engine.config import RenderConfig
from engine.local import render

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

FPS = Fraction(24)
# 3 shots of 24 frames in chunks of at most 6 -> 12 chunks: 3 chains, one per node's actor.
OPTS = {"width": 96, "chunk_frames": 6, "crf": 0, "method": "flow-blend"}


@pytest.fixture(scope="module")
def style(tiny_styles):
    return tiny_styles[0]


@pytest.fixture(scope="module")
def clip(demo_clip_factory):
    return demo_clip_factory(("astronaut", "coffee", "chelsea"), fps=FPS)



@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip, style):
    tmp = tmp_path_factory.mktemp("reference")
    render(RenderConfig(input=clip, output=str(tmp / "ref.mp4"), style=style, cache_dir=str(tmp / "c"), **OPTS),
             progress=False, log=lambda m: None)
    return all_frames(tmp / "ref.mp4")


def test_render_spreads_chunks_over_the_worker_nodes(ray_cluster, tmp_path, clip, style, reference):
    from flows.render import render_flow

    report = render_flow(clip, str(tmp_path / "out.mp4"), style, {**OPTS, "cache_dir": str(tmp_path / "c")})
    workers = {w.node_id for w in ray_cluster.workers}
    assert report["workers"]["count"] == 3 and set(report["workers"]["nodes"]) >= workers
    assert len(report["chunk_nodes"]) == 12
    assert workers <= set(report["chunk_nodes"].values())  # both worker nodes rendered chunks
    assert workers <= set(report["flow_nodes"].values())  # and computed flow
    assert np.array_equal(all_frames(tmp_path / "out.mp4"), reference)


def test_render_survives_losing_a_worker_node(ray_cluster, tmp_path, clip, style, reference):
    from flows.render import render_flow

    work = tmp_path / "work"
    victim = ray_cluster.workers[0]
    removed = threading.Event()

    def kill_a_node_mid_render():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(list((work / "state").glob("*.done"))) >= 2:
                ray_cluster.cluster.remove_node(victim)
                removed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_node_mid_render, daemon=True)
    killer.start()
    report = render_flow(clip, str(tmp_path / "out.mp4"), style,
                         {**OPTS, "cache_dir": str(tmp_path / "c"), "workdir": str(work)})
    killer.join(5)
    assert removed.is_set(), "the render finished before a node could be removed"
    assert len(report["chunk_nodes"]) == 12 and report["chunks_resumed"] == 0
    assert report["workers"]["actors_lost"] >= 1 and report["workers"]["chunks_retried"]  # a chunk was re-run
    # A retried chunk is rendered on a surviving node, unless the lost node had committed it just
    # before it went (then the retry finds it done and keeps that one commit).
    rerendered = set(report["workers"]["chunks_retried"]) - set(report["workers"]["retries_found_committed"])
    assert victim.node_id not in {report["chunk_nodes"][c] for c in rerendered}
    assert np.array_equal(all_frames(tmp_path / "out.mp4"), reference)
