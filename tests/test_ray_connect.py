"""Joining a Ray cluster from the CLI the way a user does: a head started with the real `ray start`
command line (token authentication on, a private RAY_TMPDIR and HOME, so no other Ray on this machine
is seen or touched), then `filmstyle render --ray-address`, and the one-line errors (exit code 2,
each within 60 s) for an unreachable address, a wrong or missing token and a Ray Client address.
Last, a second node joins with `ray start --address`, shares a render, and is killed during another.

Processes are stopped by their temp dir, never with `ray stop`, which stops every Ray on the machine
(the test session's own local Ray included).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from frames import all_frames

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
TOKEN = "filmstyletesttoken" + "0" * 14


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, tmpdir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PREFECT_API"))}
    env.update(HOME=str(home), RAY_TMPDIR=str(tmpdir), **extra)
    return env


def _cli(args: list[str], env: dict, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    return proc, time.monotonic() - t


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("filmstyle: error: "), proc.stderr[-2000:]
    return lines[0]


def _kill_processes_of(folder: Path) -> None:
    """SIGKILL every process whose command line names `folder` (a node's raylet, GCS and log monitor)
    and every descendant of those (the raylet's dashboard and runtime-env agents rename themselves
    `ray::...` and outlive a killed raylet; its workers exit with it)."""
    import signal

    parent, named = {}, set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if str(folder).encode() in (proc / "cmdline").read_bytes():
                named.add(int(proc.name))
        except (OSError, ValueError, IndexError):
            pass  # gone already
    doomed, grew = set(named), True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in doomed} - doomed
        doomed |= more
        grew = bool(more)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def token_head():
    """A one-CPU head from `ray start --head` with token authentication; its token in HOME/.ray."""
    root = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    home, tmpdir = root / "home", root / "t"
    (home / ".ray").mkdir(parents=True)
    tmpdir.mkdir()
    (home / ".ray" / "auth_token").write_text(TOKEN)
    port = _free_port()
    env = _env(home, tmpdir, RAY_AUTH_MODE="token")
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard",
                    "false", "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield {"address": f"127.0.0.1:{port}", "home": home, "tmpdir": tmpdir, "root": root}
    finally:
        _kill_processes_of(root)
        shutil.rmtree(root, ignore_errors=True)


def _render_args(clip, style, out, *extra):
    return ["render", clip, "-o", str(out), "--style", style, "--width", "64", "--chunk-frames", "12", *extra]


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:1", "nothing answers at 127.0.0.1:1"),
    ("ray://127.0.0.1:10001", "Ray Client addresses (ray://) are not supported"),
    ("head-without-port", "expected HOST:PORT"),
])
def test_a_bad_address_is_one_line(tmp_path, demo_clip_factory, tiny_styles, address, words):
    clip = demo_clip_factory(("astronaut",), seconds_per_shot=1)
    proc, took = _cli(_render_args(clip, tiny_styles[0], tmp_path / "o.mp4", "--ray-address", address),
                      _env(tmp_path, tmp_path))
    assert words in _one_line_error(proc) and took < 60
    assert not (tmp_path / "o.mp4").exists()


def test_wrong_and_missing_token_are_one_line(token_head, tmp_path, demo_clip_factory, tiny_styles):
    clip = demo_clip_factory(("astronaut",), seconds_per_shot=1)
    args = _render_args(clip, tiny_styles[0], tmp_path / "o.mp4", "--ray-address", token_head["address"])
    wrong = _env(token_head["home"], token_head["tmpdir"], RAY_AUTH_TOKEN="not" + TOKEN)
    proc, took = _cli(args, wrong)
    assert "rejected the token from $RAY_AUTH_TOKEN" in _one_line_error(proc) and took < 60
    (tmp_path / "empty").mkdir()
    proc, took = _cli(args, _env(tmp_path / "empty", token_head["tmpdir"]))
    assert "this machine has none" in _one_line_error(proc) and took < 60


def test_render_joins_a_token_cluster_by_address_and_on_its_head(token_head, tmp_path, demo_clip_factory,
                                                                 tiny_styles):
    """RAY_AUTH_MODE unset, as a user's shell has it: the token file is found and used. Without an
    address, on the head (same RAY_TMPDIR), the render joins that cluster and says so."""
    clip = demo_clip_factory(("astronaut", "coffee"), seconds_per_shot=1)
    env = _env(token_head["home"], token_head["tmpdir"])
    proc, _ = _cli(_render_args(clip, tiny_styles[0], tmp_path / "a.mp4", "--ray-address", token_head["address"]),
                   env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Ray: joined the cluster at {token_head['address']}" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc, _ = _cli(_render_args(clip, tiny_styles[0], tmp_path / "b.mp4"), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray: joined the cluster `ray start` runs on this machine" in proc.stderr
    proc, _ = _cli(_render_args(clip, tiny_styles[0], tmp_path / "c.mp4", "--ray-address", "local"), env)
    assert proc.returncode == 0 and "a private local Ray" in proc.stderr, proc.stderr[-3000:]


def test_auto_without_a_cluster_here_is_one_line(tmp_path, demo_clip_factory, tiny_styles):
    clip = demo_clip_factory(("astronaut",), seconds_per_shot=1)
    proc, took = _cli(_render_args(clip, tiny_styles[0], tmp_path / "o.mp4", "--ray-address", "auto"),
                      _env(tmp_path, tmp_path))
    assert "no Ray cluster started by `ray start` runs on this machine" in _one_line_error(proc) and took < 60



def test_two_nodes_share_a_render_and_it_survives_losing_one(token_head, tmp_path, demo_clip_factory, tiny_styles):
    """The walkthrough of docs/orchestration.md: a second node joins the head with `ray start
    --address` (its own temp dir, as a second machine would have), renders share both nodes, and a
    render during which that node is killed (SIGKILL, as a lost machine) completes with the same
    frames, saying which actor was lost and which chunks ran again. Runs last: it leaves the head alone."""
    clip = demo_clip_factory(("astronaut", "coffee", "chelsea"))  # 3 shots, 12 chunks of 6 frames
    env = _env(token_head["home"], token_head["tmpdir"])
    node = token_head["root"] / "n2"
    node.mkdir()
    subprocess.run([RAY, "start", "--address", token_head["address"], "--num-cpus", "1", "--temp-dir", str(node),
                    "--disable-usage-stats"], env={**env, "RAY_AUTH_MODE": "token"}, check=True,
                   capture_output=True, timeout=120)
    try:
        def args(name, *extra):
            return ["render", clip, "-o", str(tmp_path / name), "--style", tiny_styles[0], "--width", "96",
                    "--chunk-frames", "6", "--crf", "0", "--method", "flow-blend",
                    "--cache-dir", str(tmp_path / f"cache-{name}"), *extra]

        proc, _ = _cli(args("ref.mp4", "--engine", "local"), env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reference = all_frames(tmp_path / "ref.mp4")

        proc, _ = _cli(args("a.mp4", "--ray-address", token_head["address"]), env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads((tmp_path / "a.mp4.report.json").read_text())
        assert len(report["chunk_nodes"]) == 12 and len(set(report["chunk_nodes"].values())) == 2
        assert "2 cpu worker(s) x 1 thread(s) on 2 node(s)" in proc.stdout
        assert np.array_equal(all_frames(tmp_path / "a.mp4"), reference)

        work = tmp_path / "work"
        render = subprocess.Popen([sys.executable, "-m", "cli", *args("b.mp4", "--ray-address", token_head["address"],
                                                                       "--workdir", str(work))],
                                  env=env, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).resolve().parents[1])
        deadline = time.monotonic() + 240
        while len(list((work / "state").glob("*.done"))) < 2 and render.poll() is None:
            assert time.monotonic() < deadline, "no chunk was committed within 240 s"
            time.sleep(0.05)
        assert render.poll() is None, "the render finished before the node could be killed"
        _kill_processes_of(node)
        err, _ = render.communicate(timeout=600)  # stdout and stderr
        assert render.returncode == 0, err[-3000:]
        assert "stylizer actor lost while rendering" in err
        assert "lost with their worker or node, chunks re-run:" in err
        assert "Traceback" not in err and "raylet" not in err.lower(), err[-3000:]
        report = json.loads((tmp_path / "b.mp4.report.json").read_text())
        assert report["workers"]["actors_lost"] >= 1 and report["workers"]["chunks_retried"]
        assert np.array_equal(all_frames(tmp_path / "b.mp4"), reference)
    finally:
        _kill_processes_of(node)
