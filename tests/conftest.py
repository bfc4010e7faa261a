"""Shared pytest fixtures.

Media fixtures make tiny clips with ffmpeg's lavfi sources once per session
(on demand, by name), and point at the real clips in ../shared/data when it
exists.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Tests compare renders with nets run directly in fp32; a render would pick bf16 on CPUs where it
# is faster (pipeline/device.py). tests/test_precision.py covers that choice and bf16's bound.
os.environ.setdefault("FILMSTYLE_CPU_PRECISION", "fp32")

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"

_SRT = "1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\nWorld\n"

# name -> ffmpeg arguments after the global options ({dir} is the clip directory).
# "main.mp4": 60 frames of testsrc2 (frame counter, every frame differs) at 30000/1001,
# H.264 with B-frames and a fixed 12-frame GOP, 2.5 s of stereo AAC (a tone starting at
# 1 s), an English mov_text track.
_RECIPES: dict[str, list[str]] = {
    "main.mp4": ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30000/1001",
                 # silence, then a tone from t = 1 s: a sync mark for audio tests
                 "-f", "lavfi",
                 "-i", "aevalsrc=exprs='if(gte(t,1),0.5*sin(2*PI*440*t),0)':s=48000",
                 "-i", "{dir}/subs.srt",
                 "-map", "0:v", "-map", "1:a", "-map", "2:s", "-vf", "trim=end_frame=60",
                 "-t", "2.5",  # audio outlasts the picture, as it often does
                 "-c:v", "libx264", "-preset", "ultrafast", "-bf", "3", "-g", "12",
                 "-keyint_min", "12", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
                 "-c:a", "aac", "-ac", "2", "-c:s", "mov_text",
                 "-metadata:s:s:0", "language=eng"],
    # Same streams in Matroska: no sample table, so probing demuxes packets.
    "main.mkv": ["-i", "{dir}/main.mp4", "-map", "0", "-c", "copy", "-c:s", "srt"],
    # Display matrix: shown rotated by 90 degrees.
    "rotated.mp4": ["-display_rotation", "90", "-i", "{dir}/main.mp4", "-map", "0:v",
                    "-map", "0:a", "-c", "copy"],
    # MPEG-TS: timestamps start at 1.4 s, audio 21 ms before video, and ffmpeg's
    # seeking in it is not frame-exact.
    "main.ts": ["-i", "{dir}/main.mp4", "-map", "0:v", "-map", "0:a", "-c", "copy"],
    # Cut without re-encoding: the MP4 edit list hides the frames before 0.5 s that
    # the decoder still needs (demuxed, flagged discard).
    "cut.mp4": ["-ss", "0.5", "-i", "{dir}/main.mp4", "-map", "0:v", "-map", "0:a",
                "-c", "copy"],
    # Odd coded size (4:4:4 allows it) and non-square pixels.
    "odd_sar.mp4": ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25", "-frames:v", "30",
                    "-vf", "scale=321:181,setsar=4/3", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv444p"],
    # Variable frame rate: the second half runs at half speed (timestamps every 2 frames).
    "vfr.mkv": ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
                "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000",
                "-frames:v", "60", "-t", "3",
                "-vf", "setpts='PTS+if(gte(N,30),(N-30)/30/TB,0)'", "-fps_mode", "passthrough",
                "-c:v", "libx264", "-preset", "ultrafast", "-g", "12", "-c:a", "aac"],
    "vfr.mp4": ["-i", "{dir}/vfr.mkv", "-map", "0", "-c", "copy"],
    # moov atom up front: a truncated copy still opens and its prefix decodes.
    # Audio that starts 0.3 s after the picture (and ends 0.8 s after it).
    "late_audio.mp4": ["-i", "{dir}/main.mp4", "-itsoffset", "0.3", "-i", "{dir}/main.mp4", "-map", "0:v",
                       "-map", "1:a", "-c", "copy"],
    # VFR picture of 2 s with 4 s of audio (a tone from 1 s): the mezzanine must keep it all.
    "vfr_long_audio.mkv": ["-i", "{dir}/vfr.mkv", "-f", "lavfi",
                           "-i", "aevalsrc=exprs='if(gte(t,1),0.5*sin(2*PI*440*t),0)':s=48000:d=4",
                           "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac"],
    "faststart.mp4": ["-i", "{dir}/main.mp4", "-map", "0:v", "-c", "copy",
                      "-movflags", "+faststart"],
    "audio_only.m4a": ["-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "1", "-c:a", "aac"],
    "one_frame.mp4": ["-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25", "-frames:v", "1",
                      "-c:v", "libx264", "-pix_fmt", "yuv420p"],
    # Untagged SD clip made from pure red by ffmpeg's default (BT.601) conversion.
    "red_sd.mp4": ["-f", "lavfi", "-i", "color=c=0xFF0000:size=160x120:rate=25",
                   "-frames:v", "3", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p"],
}
_DEPENDS = {"main.mp4": ["subs.srt"], "main.mkv": ["main.mp4"], "rotated.mp4": ["main.mp4"],
            "main.ts": ["main.mp4"], "cut.mp4": ["main.mp4"],
            "faststart.mp4": ["main.mp4"], "vfr.mp4": ["vfr.mkv"], "late_audio.mp4": ["main.mp4"],
            "vfr_long_audio.mkv": ["vfr.mkv"]}


@pytest.fixture(scope="session")
def ffmpeg_exe() -> str:
    from pipeline.media import ffmpeg_binary

    return ffmpeg_binary()


@pytest.fixture(scope="session")
def media_clip(tmp_path_factory, ffmpeg_exe):
    """Factory: ``media_clip("main.mp4")`` -> Path of a generated clip (made once per session)."""
    root = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name in made:
            return made[name]
        for dep in _DEPENDS.get(name, []):
            make(dep)
        out = root / name
        if name == "subs.srt":
            out.write_text(_SRT)
        else:
            args = [a.replace("{dir}", str(root)) for a in _RECIPES[name]]
            subprocess.run([ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                            *args, str(out)], check=True)
        made[name] = out
        return out

    return make


@pytest.fixture(scope="session")
def shared_video():
    """Factory: ``shared_video("name.mp4")`` -> Path in ../shared/data/videos, or skip."""

    def get(name: str) -> Path:
        path = SHARED_VIDEOS / name
        if not path.is_file():
            pytest.skip(f"real-data test: {path} is absent (../shared/data not mounted)")
        return path

    return get


# ---------------------------------------------------------------------------------------------
# S3 fixtures (storage tests). moto is not multi-process safe: it runs as one threaded HTTP
# server on 127.0.0.1 for the session and every client passes its endpoint_url.
# (They live here, not in a tests.s3_fixtures plugin: tests/ is not a package, and
# `pytest_plugins = ["tests.s3_fixtures"]` only imports under `python -m pytest`.)

@pytest.fixture(scope="session")
def s3_server():
    """The moto server's endpoint URL. Dummy credentials (distinctive, so tests can check they
    never leak) and the region are set for the session; ~/.aws and instance metadata are off."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                     "AWS_ENDPOINT_URL_S3", "FILMSTYLE_S3_ENDPOINT_URL", "AWS_REGION"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "AKIAFILMSTYLETESTKEY")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "filmstyle-test-secret-do-not-print")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/filmstyle-tests/config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/filmstyle-tests/credentials")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the session's moto server; its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


# ---------------------------------------------------------------------------------------------
# Orchestration fixtures (the Prefect + Ray engine: tests/test_orchestration*.py).
# One Prefect test harness and one local Ray per session: the harness's temporary server takes
# 5-11 s to start, Ray 2-3 s. Ray is started after the S3 fixture has set its credentials, so
# Ray's worker processes inherit them. A multi-node module (``ray_cluster``) shuts the session's
# Ray down and the next test that asks for ``ray_local`` starts it again.

@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def _start_local_ray() -> None:
    import ray

    if not ray.is_initialized():
        # Workers import what the tests define (a plug-in method) the way a cluster's nodes import
        # installed code: from their Python path.
        _tests_on_worker_path()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")


def _tests_on_worker_path() -> None:
    import os

    here = str(Path(__file__).resolve().parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """The session's local Ray (2 CPUs): returns a function that (re)starts it if needed."""
    import ray

    _start_local_ray()
    yield _start_local_ray
    ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    """A local Ray for this test (the session's; restarted if a cluster module stopped it)."""
    ray_session()


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """A head and two worker nodes on this machine (1 CPU each) for one module, joined by this
    process; the session's local Ray (if any) is shut down first. Node failure is detected fast."""
    from types import SimpleNamespace

    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                           "health_check_initial_delay_ms": 0}})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    try:
        yield SimpleNamespace(cluster=cluster, head=cluster.head_node, workers=workers)
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---------------------------------------------------------------------------------------------
# Tiny style checkpoints and synthetic clips shared by the render tests. A seeded
# random-initialised small net proves the plumbing (frames, cuts, audio, state), not the look.

@pytest.fixture(scope="session")
def tiny_styles(tmp_path_factory) -> tuple[str, str]:
    """Two different tiny style checkpoints (seeds 0 and 1)."""
    import torch

    from models.checkpoint import save_style_model
    from models.transformer import TransformerConfig, TransformerNet

    folder = tmp_path_factory.mktemp("tiny-styles")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        # Instance norm: a random instance-norm net amplifies detail and flickers like a real
        # style does; a random net without normalization (the trained default) is nearly flat.
        net = TransformerNet(TransformerConfig(base_channels=8, residual_blocks=1, norm="instance",
                                               input_skip=False))
        paths.append(str(save_style_model(folder / f"tiny{seed}.safetensors", net, {"name": f"tiny{seed}"})))
    return tuple(paths)


@pytest.fixture(scope="session")
def demo_clip_factory(tmp_path_factory):
    """make(shots, width, height, fps, seconds_per_shot) -> path of a cached synthetic demo clip."""
    from fractions import Fraction

    from pipeline.synthetic import make_demo_clip

    made: dict[tuple, str] = {}

    def make(shots=("astronaut", "coffee"), width=160, height=90, fps=Fraction(24), seconds_per_shot=1) -> str:
        key = (tuple(shots), width, height, Fraction(fps), seconds_per_shot)
        if key not in made:
            out = tmp_path_factory.mktemp("demo-clip") / "demo.mp4"
            made[key] = str(make_demo_clip(out, width=width, height=height, fps=Fraction(fps),
                                           seconds_per_shot=seconds_per_shot, shots=tuple(shots)))
        return made[key]

    return make
