"""benchmarks/gpu_check.py on the CPU: its run completes, with every phase's numbers, on the
packages a GPU machine offers plus the wheels its pack carries."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.gpu_check as gpu_check  # noqa: E402


def test_wheels_unzip_onto_the_path_with_their_executables(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "demo_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("demo_pkg/__init__.py", "VALUE = 42\n")
        info = zipfile.ZipInfo("demo_pkg/bin/tool")
        info.external_attr = 0o755 << 16
        z.writestr(info, "#!/bin/sh\necho ran\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = gpu_check.install_wheels(wheels, tmp_path / "site")
    assert names == ["demo_pkg-1.0-py3-none-any.whl"]
    import demo_pkg

    assert demo_pkg.VALUE == 42
    assert os.access(tmp_path / "site" / "demo_pkg" / "bin" / "tool", os.X_OK)
    sys.modules.pop("demo_pkg", None)


def test_render_phase_says_why_it_cannot_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as on a machine without PyAV
    assert "av is not importable" in gpu_check.render_ready()


@pytest.mark.slow
def test_quick_run_on_the_cpu_measures_every_phase(tmp_path, media_clip):
    pack = tmp_path / "pack"
    pack.mkdir()
    shutil.copyfile(media_clip("main.mp4"), pack / gpu_check.CLIP)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "run", "--pack", str(pack),
                           "--out", str(out), "--device", "cpu", "--quick", "--budget-s", "300"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    nets = {k: v for k, v in r["nets"].items() if k != "skipped"}
    assert {k.split("/")[0] for k in nets} == {"full", "student"}
    assert all(v["net_fps"] > 0 and v["host_fps"] > 0 and v["best_batch"] in (1, 2) for v in nets.values())
    assert r["training"]["seconds_per_step"] > 0
    render = r["render"]["128"]
    assert render["frames"] == 60 and render["fps"] > 0 and "stylize" in render["stages"]
    assert render["encoder"] == "libx264"  # a CPU render: software
    blend = r["render_flow_blend"]["128"]
    assert blend["frames"] == 60 and "flow" in blend["stages"]
    enc = r["encode"]
    assert enc["software"]["fps"] > 0 and enc["software"]["psnr_db"] > 20 and enc["frames"] == 24  # a noisy synthetic clip; 46.5 dB on the cockatoo
    assert "fps" in enc["nvenc"] or "does not run here" in enc["nvenc"]["skipped"]
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "table",
                            str(out / "gpu_check.json")], capture_output=True, text=True, check=True).stdout
    assert "| full | 64x112 |" in table and "render per-frame at width 128" in table
    assert "render flow-blend at width 128" in table and "encode software" in table


@pytest.mark.slow
def test_the_pack_brings_what_the_gpu_machine_lacks(tmp_path, media_clip):
    """On a machine with only torch, numpy, OpenCV, scikit-image, safetensors, h5py and PIL, a run
    with the pack's wheels measures the nets and training, and says why the render phase could not
    run (PyAV is not packed by default)."""
    pack = tmp_path / "pack"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "pack", str(pack),
                    "--clip", str(media_clip("main.mp4"))], check=True, capture_output=True, cwd=ROOT)
    out = tmp_path / "out"
    code = f"""
import importlib.abc, importlib.machinery, sys
LACKING = {{'av', 'ray', 'prefect', 'boto3', 'botocore', 'scenedetect', 'imageio_ffmpeg', 'ffmpeg', 'past',
           'future', 'click', 'platformdirs', 'tqdm'}}

class OnlyFromTheWheels(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in LACKING and path is None:
            site = [p for p in sys.path if p.endswith('/site')]
            spec = importlib.machinery.PathFinder.find_spec(name, site)
            if spec is None:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return spec
        return None

sys.meta_path.insert(0, OnlyFromTheWheels())
sys.argv = ['gpu_check.py', 'run', '--pack', {str(pack)!r}, '--out', {str(out)!r}, '--device', 'cpu', '--quick',
            '--work', {str(tmp_path)!r}]
import runpy
runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["training"]["seconds_per_step"] > 0 and any(k.startswith("full/") for k in r["nets"])
    assert "av is not importable" in r["render"]["skipped"] and "av is not importable" in r["encode"]["skipped"]
    assert set(r["wheels"]) >= {w.name for w in (pack / "wheels").glob("*.whl")}
