"""Queued renders as a studio runs them: a real Prefect server (``prefect server start``) on
127.0.0.1, ``filmstyle deploy``, a ``filmstyle worker``, ``submit`` of two films in two styles,
``queue``, ``cancel`` mid-way and a resubmission that resumes; the worker stopped by SIGTERM.
Everything runs as the CLI a user types; the flow runs join this session's Ray."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from frames import all_frames

from engine.config import RenderConfig
from engine.local import render

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
BIN = Path(sys.executable).parent
OPTS = {"width": 96, "chunk_frames": 8, "crf": 0, "method": "flow-blend"}



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc, sig=signal.SIGTERM, wait=30):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server of its own (not the in-process harness), stopped at the end."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield {"url": url, "home": home}
    _stop(proc)


def _cli(env, *args, check=True, timeout=300):
    done = subprocess.run([str(BIN / "filmstyle"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _queue(env) -> dict:
    out = _cli(env, "queue", "--json").stdout
    return {r["name"]: r for r in map(json.loads, out.splitlines())}


def _wait(env, names, until, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _queue(env)
        if all(n in rows and until(rows[n]) for n in names):
            return rows
        time.sleep(2)
    pytest.fail(f"timed out waiting for {names}: {_queue(env)}")


def test_submit_queue_cancel_resubmit_on_a_real_server(tmp_path, server, demo_clip_factory, tiny_styles):
    import ray

    films = tmp_path / "films"
    films.mkdir()
    for name, shots in (("film1", ("astronaut", "coffee")), ("film2", ("coffee", "astronaut"))):
        shutil.copy(demo_clip_factory(shots), films / f"{name}.mp4")
    shutil.copy(demo_clip_factory(("coffee", "astronaut", "coffee"), width=640, height=360, seconds_per_shot=2),
                films / "long.mp4")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PREFECT_API_URL": server["url"], "PREFECT_HOME": str(server["home"]),
           "FILMSTYLE_CACHE": str(tmp_path / "cache")}

    # Bad input, one line each, exit code 2.
    down = _cli({**env, "PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api"}, "submit", str(films / "film1.mp4"),
                "--style", tiny_styles[0], "-o", str(out / "x.mp4"), check=False, timeout=120)
    assert down.returncode == 2 and "cannot reach the Prefect server" in down.stderr and len(down.stderr.splitlines()) == 1
    nodep = _cli(env, "submit", str(films / "film1.mp4"), "--style", tiny_styles[0], "-o", str(out / "x.mp4"),
                 check=False)
    assert nodep.returncode == 2 and "no deployment render/filmstyle-render" in nodep.stderr, nodep.stderr

    _cli(env, "deploy", "--renders", "2", "--ray-address", ray.get_runtime_context().gcs_address,
         "--width", "640", "--chunk-frames", "8", "--crf", "0")
    style = _cli(env, "submit", str(films / "film1.mp4"), "--style", "no_such_style", "-o", str(out / "x.mp4"),
                 check=False)
    assert style.returncode == 2 and "no_such_style" in style.stderr and len(style.stderr.splitlines()) == 1

    worker = subprocess.Popen([str(BIN / "filmstyle"), "worker", "--limit", "2"], env=env, start_new_session=True,
                              stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT)
    try:
        # --width 96 overrides the deployment's 640; chunk_frames and crf come from the deployment.
        sub = _cli(env, "submit", str(films / "film1.mp4"), str(films / "film2.mp4"), "--style", tiny_styles[0],
                   "--style", tiny_styles[1], "--method", "flow-blend", "--width", "96",
                   "-o", str(out / "{film}_{style}.mp4"))
        assert len(sub.stdout.splitlines()) == 4
        names = [f"film{i}-tiny{j}" for i in (1, 2) for j in (0, 1)]
        rows = _queue(env)
        assert rows["film1-tiny1"]["state"].startswith("Waiting")
        rows = _wait(env, names, lambda r: r["state"] in ("Completed", "Failed", "Crashed", "Cancelled"))
        assert all(rows[n]["state"] == "Completed" and rows[n]["percent"] == 100 for n in names), rows

        for i in (1, 2):
            for j, style_path in enumerate(tiny_styles):
                got = out / f"film{i}_tiny{j}.mp4"
                report = json.loads(Path(f"{got}.report.json").read_text())
                assert report["engine"] == "prefect+ray" and report["chunks"] == 6
                if j == 1:  # the film's second style read every flow pair from the first one's cache
                    assert report["flow"]["computed"] == 0 and report["flow"]["cache_hits"] == report["flow"]["pairs"]
                ref = tmp_path / f"ref{i}{j}.mp4"
                render(RenderConfig(input=str(films / f"film{i}.mp4"), output=str(ref), style=style_path,
                                    cache_dir=str(tmp_path / "ref-cache"), **OPTS), progress=False, log=lambda m: None)
                assert np.array_equal(all_frames(got), all_frames(ref))

        # A fifth render cancelled mid-way, then submitted again: it resumes from its committed chunks.
        long_args = ["submit", str(films / "long.mp4"), "--style", "starry_night", "--method", "per-frame",
                     "-o", str(out / "{film}_{style}.mp4")]
        _cli(env, *long_args)
        _wait(env, ["long-starry_night"], lambda r: "stylize" in r["progress"] and not r["progress"].startswith(
            "stylize 0/") and r["state"] == "Running", timeout=300)
        cancel = _cli(env, "cancel", "long-starry_night")
        assert "stopping long-starry_night" in cancel.stdout
        rows = _wait(env, ["long-starry_night"], lambda r: r["state"] in ("Cancelled", "Completed"), timeout=120)
        assert rows["long-starry_night"]["state"] == "Cancelled"
        assert not (out / "long_starry_night.mp4").exists()
        _cli(env, *long_args)
        deadline = time.monotonic() + 600
        while not Path(f"{out / 'long_starry_night.mp4'}.report.json").exists() and time.monotonic() < deadline:
            time.sleep(2)
        report = json.loads(Path(f"{out / 'long_starry_night.mp4'}.report.json").read_text())
        assert 0 < report["chunks_resumed"] < report["chunks"]
    finally:
        _stop(worker, signal.SIGTERM, wait=40)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
