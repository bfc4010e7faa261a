"""scripts/train_styles.py, the GPU training script, on its CPU path: a tiny real run end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCRIPT = ROOT / "scripts" / "train_styles.py"


def test_what_the_gpu_machine_runs_imports_nothing_it_lacks():
    # The GPU machine has torch, numpy, OpenCV, scikit-image, safetensors, h5py, PIL, tqdm: no
    # PyAV, ffmpeg, Ray, Prefect, boto3 or PySceneDetect.
    code = ("import runpy, sys; sys.argv = ['x', '--help']\n"
            "import models.train, models.train_video, models.video_data, models.optimize, models.distill\n"
            "import pipeline.flow, methods.flow_blend\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='not_main')\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'av', 'ray', 'prefect', 'boto3', 'botocore', 'scenedetect', 'imageio_ffmpeg', 'ffmpeg'})\n"
            "print(','.join(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.realdata
def test_a_tiny_run_trains_judges_and_packs_every_phase(tmp_path):
    if not (DATA / "content" / "bsds500").is_dir():
        pytest.skip(f"{DATA} is absent (the script packs the BSDS500 photos and paintings from it)")
    pack = tmp_path / "pack"
    subprocess.run([sys.executable, str(SCRIPT), "pack", str(pack)], check=True, capture_output=True, cwd=ROOT)
    size = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file())
    assert size < 40 * 2**20  # it travels to the GPU machine beside the repository (64 MiB in all)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--pack", str(pack), "--out", str(out), "--work", str(tmp_path),
         "--device", "cpu", "--budget-s", "60", "--batch", "1", "--image-size", "32", "--calibration-steps", "2",
         "--styles", "starry_night", "--optimum-steps", "2", "--judge-photos", "1", "--init-shipped"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    row = results["image"]["starry_night"]
    assert row["steps"] >= 1 and 0 < row["reduction"] and -1 <= row["tone"] <= 1
    names, card = set(), None
    for tar in out.glob("checkpoints_*.tar"):
        assert tar.stat().st_size <= 16 * 2**20  # what the device returns per file
        with tarfile.open(tar) as t:
            names |= set(t.getnames())
            if "image/starry_night.json" in t.getnames():
                card = json.load(t.extractfile("image/starry_night.json"))
    assert {f"{d}/starry_night.safetensors" for d in ("image", "recurrent", "stable", "distilled")} <= names
    for kind in ("stable", "distilled"):  # one frame in: judged as the image nets are
        row = results["temporal"][kind]["starry_night"]
        assert row["steps"] >= 1 and -1 <= row["tone"] <= 1
    # the card names the painting and the data by what they are, never by this machine's paths
    assert card["style_image"] == "starry_night.jpg"
    assert card["init"]["name"] == "starry_night.safetensors"  # --init-shipped: the shipped net went on training
    assert card["config"]["data"] == ["bsds500/train", "bsds500/val"]
    assert not any(str(v).startswith("/") for v in card["config"].values())


def test_phase_shares_give_a_skipped_phase_to_the_ones_that_run():
    from scripts.train_styles import SHARES, phase_shares

    total = sum(SHARES.values())
    both = phase_shares(False, ["image", "temporal"])
    assert both == pytest.approx({"ab": 0.0, "image": SHARES["image"] + SHARES["ab"], "temporal": SHARES["temporal"]})
    assert phase_shares(True, ["image", "temporal"]) == pytest.approx(SHARES)
    alone = phase_shares(True, ["temporal"])  # no image nets: no A/B either
    assert alone == pytest.approx({"ab": 0.0, "image": 0.0, "temporal": total})
    assert phase_shares(False, ["image"])["image"] == pytest.approx(total)
