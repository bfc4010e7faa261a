"""What one GPU does with filmstyle, measured in one run of a few minutes (issue 15).

Two steps, because the GPU machine has only torch, numpy, OpenCV, scikit-image, safetensors and
h5py, and no network:

    .venv/bin/python benchmarks/gpu_check.py pack .device/gpu [--wheels]          # here
    python3 benchmarks/gpu_check.py run --pack .device/gpu --out $OUT             # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py table $OUT/gpu_check.json            # here: README rows

``pack`` copies the real clip the render reads and the pure-Python wheels the local engine needs
beyond that machine's packages (ffmpeg-python, PySceneDetect); with ``--wheels`` also PyAV and
imageio-ffmpeg (61 MB together, more than the 64 MiB a device call receives beside this working
tree: use it where a machine takes more, or where PyAV and ffmpeg are installed, it is not needed).
It prints what would travel.

``run`` (every phase has a deadline; one that fails is recorded and the next runs):
1. the nets: the full (shipped) and student nets at 640x360, 1280x720 and 1920x1080 in fp32,
   bf16 and fp16, at batches 1-16: frames per second of the net alone (frames on the GPU) at
   each batch, and at the fastest batch with frames going in and out as uint8 host arrays
   (``NetRunner``: pinned memory, non-blocking copies), as a render moves them;
2. training: seconds per step of the style recipe (``models.train`` at its defaults: batch 8 of
   256 px crops, the full net, the VGG16 loss network), timed after a warm-up; the content is
   scikit-image's sample photos and the loss network random weights of the trunk's shapes unless
   ``--vgg`` names the trunk (the time per step does not depend on either);
3. the end-to-end render of the clip (``engine.local.render``, per-frame, the shipped style) at
   1280x720 and 1920x1080, with its stage timings, where PyAV and an ffmpeg binary are present;
   otherwise the reason it was skipped; the report names the segment encoder (NVENC where it runs);
   then flow-blend at 1280x720 (DIS flow on the node's CPUs, the blend on the GPU: ``methods.on_device``);
4. the encoders: x264 and NVENC on the same 240 frames at 1920x1080 (fps, bytes, PSNR).
Results: ``OUT/gpu_check.json`` and a log.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import log  # noqa: E402

CLIP = "imageio_cockatoo_yuv420.mp4"
# ffmpeg-python imports ``past`` (the ``future`` package); PySceneDetect needs click, platformdirs, tqdm
PURE_WHEELS = ("ffmpeg-python==0.2.0", "future", "scenedetect", "platformdirs", "click", "tqdm")
BINARY_WHEELS = ("av", "imageio-ffmpeg")
SIZES = {"640x360": (360, 640), "1280x720": (720, 1280), "1920x1080": (1080, 1920)}
BATCHES = (1, 2, 4, 8, 16)


# ---------------------------------------------------------------- pack (here)


def pack(dest: Path, binary_wheels: bool, clip: str | None = None) -> int:
    from benchmarks.common import report_device_payload, shared_video

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip or shared_video(CLIP), dest / CLIP)
    wheels = dest / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wanted = PURE_WHEELS + (BINARY_WHEELS if binary_wheels else ())
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                    "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
                    "-d", str(wheels), *wanted], check=True)
    return report_device_payload(dest)


# ---------------------------------------------------------------- run (there)


def install_wheels(folder: Path, site: Path) -> list[str]:
    """Unzip every wheel in ``folder`` into ``site`` and put it first on sys.path (a wheel is a
    zip of its installed files; pip is not needed). Executables inside keep their mode."""
    names = []
    for whl in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            for info in z.infolist():
                path = Path(z.extract(info, site))
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    path.chmod(mode)
        names.append(whl.name)
    for binary in (site / "imageio_ffmpeg" / "binaries").glob("ffmpeg*"):
        binary.chmod(0o755)
    sys.path.insert(0, str(site))
    return names


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rate(fn, device: str, frames: int, seconds: float) -> float:
    """Frames per second of ``fn`` (``frames`` per call), timed for about ``seconds`` after two warm-up calls."""
    fn()
    fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    _sync(device)
    return n * frames / (time.perf_counter() - t0)


def precisions(device: str) -> list[str]:
    import torch

    if not device.startswith("cuda"):
        return ["fp32", "bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ["fp32"]
    return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]


def check_nets(device: str, sizes: dict, batches: tuple, seconds: float, deadline: float, logfile: Path) -> dict:
    import numpy as np
    import torch

    from methods import NetRunner, RunSettings, resolve_style
    from models.checkpoint import save_style_model
    from models.transformer import SIZES as NET_SIZES
    from models.transformer import TransformerNet

    torch.manual_seed(0)
    student = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "student.safetensors"
    save_style_model(student, TransformerNet(NET_SIZES["student"]), {"name": "random-student"})
    nets = {"full": resolve_style("starry_night"), "student": str(student)}
    out: dict = {}
    for name, path in nets.items():
        for label, (h, w) in sizes.items():
            for p in precisions(device):
                if time.time() > deadline:
                    out.setdefault("skipped", []).append(f"{name}/{label}/{p}: out of time")
                    continue
                row: dict = {"batches": {}}
                for b in batches:
                    runner = NetRunner(path, RunSettings(device=device, precision=p, batch=b))
                    x = torch.rand(b, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
                    try:
                        row["batches"][b] = _rate(lambda: runner.apply(x), device, b, seconds)
                    except torch.OutOfMemoryError:
                        row["batches"][b] = None
                        break
                    finally:
                        del x
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
                done = {b: f for b, f in row["batches"].items() if f}
                if not done:
                    continue
                best = max(done, key=done.get)
                runner = NetRunner(path, RunSettings(device=device, precision=p, batch=best))
                frames = np.random.default_rng(0).integers(0, 256, (best, h, w, 3), dtype=np.uint8)
                row.update(best_batch=best, net_fps=done[best],
                           host_fps=_rate(lambda: runner(frames), device, best, seconds))
                out[f"{name}/{label}/{p}"] = row
                log(f"nets: {name} {label} {p}: {row['net_fps']:.1f} fps at batch {best} "
                    f"({row['host_fps']:.1f} with uint8 frames from the host)", logfile)
    return out


def _random_trunk(layers_last: str = "relu4_3"):
    """VGG16 trunk shapes with random weights: the time per training step does not depend on them."""
    import torch

    from models.vgg import ARCHS, CAFFE_BGR_INPUT, VGGWeights, _layer_position

    count = _layer_position("vgg16", layers_last) + 1
    widths = [w for block in ARCHS["vgg16"] for w in block][:count]
    gen = torch.Generator().manual_seed(0)
    convs, cin = [], 3
    for cout in widths:
        convs.append((torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5, torch.zeros(cout)))
        cin = cout
    return VGGWeights("vgg16", convs, CAFFE_BGR_INPUT, "random VGG16 trunk (timing only)")


def check_training(device: str, work: Path, vgg: str | None, steps: int, image_size: int, batch: int,
                   logfile: Path) -> dict:
    """Seconds per step of the recipe, from two runs' loop clocks (the second continues the first)."""
    import numpy as np
    from PIL import Image
    from skimage import data as samples

    import models.train_run as train_run
    from models.train import TrainConfig, train

    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        img = getattr(samples, name)()
        Image.fromarray(np.ascontiguousarray(img[..., :3]).astype(np.uint8)).save(photos / f"{name}.jpg", quality=90)
    Image.fromarray(samples.coffee()).save(work / "painting.jpg", quality=90)
    if vgg is None:  # the loss network's shapes; loss_setup looks the weights up through this name
        trunk = _random_trunk()
        train_run.find_weights = lambda _path=None: trunk

    def loop_time(path: Path) -> float:
        from safetensors import safe_open

        with safe_open(str(path.with_name(path.name + ".state.safetensors")), framework="pt") as f:
            return json.loads(f.metadata()["filmstyle.train"])["history"]["elapsed_s"]

    out = work / "check.safetensors"
    warm = max(2, steps // 3)
    cfg = TrainConfig(style=str(work / "painting.jpg"), data=str(photos), out=str(out), steps=warm, lr_warmup=2,
                      image_size=image_size, batch_size=batch, vgg=vgg, device=device, sample_every_s=1e9,
                      checkpoint_every_s=1e9)
    train(cfg, restart=True, progress=False, log=lambda m: None)
    t_warm = loop_time(out)
    train(TrainConfig(**{**cfg.__dict__, "steps": warm + steps}), progress=False, log=lambda m: None)
    per_step = (loop_time(out) - t_warm) / steps
    card = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    result = {"seconds_per_step": per_step, "steps_per_second": 1 / per_step, "batch": batch, "image_size": image_size,
              "steps_timed": steps, "bf16_autocast": card.get("bf16_autocast"),
              "loss_network": "random weights of the trunk's shapes" if vgg is None else vgg}
    log(f"training: {per_step * 1e3:.1f} ms per step of batch {batch} at {image_size} px "
        f"({1 / per_step:.1f} steps/s)", logfile)
    return result


def render_ready() -> str | None:
    """None when the local engine can run here, else why not."""
    try:
        import av  # noqa: F401
        import ffmpeg  # noqa: F401
        import scenedetect  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not importable (pack --wheels, or install it on this machine)"
    try:
        from pipeline.media import ffmpeg_binary

        ffmpeg_binary()
    except Exception as e:  # noqa: BLE001 - the reason goes to the report
        return f"no ffmpeg binary: {e}"
    return None


def check_render(device: str, clip: Path, work: Path, widths: tuple, logfile: Path, method: str = "per-frame") -> dict:
    from engine.config import RenderConfig
    from engine.local import render

    out = {}
    work.mkdir(parents=True, exist_ok=True)
    for width in widths:
        target = work / f"render_{method}_{width}.mp4"
        cfg = RenderConfig(input=str(clip), output=str(target), style="starry_night", width=width, device=device,
                           cache_dir=str(work / "cache"), upscaler="lanczos", method=method)
        report = render(cfg, progress=False, log=lambda m: None)
        fps = report.frames / report.wall_seconds
        out[str(width)] = {"frames": report.frames, "wall_s": report.wall_seconds, "fps": fps,
                           "precision": report.precision, "encoder": report.encoder, "stages": report.stage_seconds,
                           "bytes": target.stat().st_size}
        log(f"render {method} at width {width}: {report.frames} frames in {report.wall_seconds:.1f} s ({fps:.1f} fps); "
            f"stages {json.dumps({k: round(v, 2) for k, v in report.stage_seconds.items()})}", logfile)
    return out


def check_encoders(clip: Path, work: Path, frames: int, size: tuple[int, int], logfile: Path) -> dict:
    """x264 (the software default, all cores) against NVENC on the same frames at the same CRF
    number: frames per second of the encode alone, bytes, and PSNR of the decoded result against
    the frames that went in; NVENC's row says why not where it does not run."""
    import numpy as np

    from pipeline import media
    from pipeline.delivery import Delivery
    from pipeline.hw_encode import nvenc_status

    work.mkdir(parents=True, exist_ok=True)
    info = media.probe(str(clip))
    src = np.stack(list(media.decode_frames(info, 0, min(frames, info.frame_count), size)))
    out = {"frames": len(src), "size": f"{size[0]}x{size[1]}"}
    for name in ("software", "nvenc"):
        if name == "nvenc" and not (status := nvenc_status("h264"))[0]:
            out[name] = {"skipped": status[1]}
            continue
        target = work / f"{name}.mp4"
        t = time.perf_counter()
        with media.SegmentWriter(target, info.fps, size, delivery=Delivery(encoder=name)) as w:
            for frame in src:
                w.write(frame)
        seconds = time.perf_counter() - t
        back = np.stack(list(media.decode_frames(str(target), 0, len(src)))).astype(np.float64)
        mse = float(np.mean((back - src) ** 2))
        out[name] = {"fps": len(src) / seconds, "bytes": target.stat().st_size,
                     "psnr_db": float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))}
        log(f"encode {name}: {json.dumps(out[name])}", logfile)
    return out


def environment(device: str) -> dict:
    import torch

    from benchmarks.common import cpu_description

    env = {"torch": torch.__version__, "cpu": cpu_description(), "cpus": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    return env


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logfile = out / "gpu_check.log"
    t0 = time.time()
    deadline = t0 + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.work))
    pack_dir = Path(args.pack)
    wheels = install_wheels(pack_dir / "wheels", work / "site") if (pack_dir / "wheels").is_dir() else []
    from methods import configure_threads

    configure_threads(None)
    device = args.device
    result: dict = {"env": environment(device), "wheels": wheels, "budget_s": args.budget_s}
    log(f"gpu check on {json.dumps(result['env'])}", logfile)
    quick = args.quick
    sizes = {"64x112": (64, 112)} if quick else SIZES
    batches = (1, 2) if quick else BATCHES
    phases = [
        ("nets", lambda: check_nets(device, sizes, batches, 0.2 if quick else 1.0,
                                    t0 + args.budget_s * 0.45, logfile)),
        ("training", lambda: check_training(device, work / "train", args.vgg, 2 if quick else 30,
                                            64 if quick else 256, 2 if quick else 8, logfile)),
        ("render", lambda: ({"skipped": why} if (why := render_ready()) else
                            check_render(device, pack_dir / CLIP, work / "render", (128,) if quick else (1280, 1920),
                                         logfile))),
        # flow-blend: the flow (DIS on the node's CPUs; no torchvision there for RAFT) and the blend on the GPU
        ("render_flow_blend", lambda: ({"skipped": why} if (why := render_ready()) else
                                       check_render(device, pack_dir / CLIP, work / "render",
                                                    (128,) if quick else (1280,), logfile, "flow-blend"))),
        ("encode", lambda: ({"skipped": why} if (why := render_ready()) else
                            check_encoders(pack_dir / CLIP, work / "encode", 24 if quick else 240,
                                           (128, 72) if quick else (1920, 1080), logfile))),
    ]
    status = 0
    for name, phase in phases:
        if time.time() > deadline:
            result[name] = {"skipped": "out of time"}
            continue
        started = time.time()
        try:
            result[name] = phase()
        except Exception as e:  # noqa: BLE001 - recorded, and the next phase runs
            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            log(f"{name} failed: {e}", logfile)
            status = 1
        result.setdefault("phase_seconds", {})[name] = round(time.time() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.time() - t0:.0f} s: {out / 'gpu_check.json'}", logfile)
    return status


# ---------------------------------------------------------------- table (here)


def table(path: Path) -> None:
    r = json.loads(path.read_text())
    env = r["env"]
    print(f"{env.get('gpu', env['device'])} ({env.get('gpu_memory_gib', '?')} GiB), torch {env['torch']}, "
          f"{env['cpus']} CPUs")
    print("| net | size | precision | best batch | net fps | fps with host frames |")
    print("|---|---|---|---|---|---|")
    for key, row in r.get("nets", {}).items():
        if key == "skipped":
            continue
        name, size, p = key.split("/")
        print(f"| {name} | {size} | {p} | {row['best_batch']} | {row['net_fps']:.1f} | {row['host_fps']:.1f} |")
    t = r.get("training", {})
    if "seconds_per_step" in t:
        print(f"training: {t['seconds_per_step'] * 1e3:.1f} ms per step (batch {t['batch']}, {t['image_size']} px)")
    for phase, method in (("render", "per-frame"), ("render_flow_blend", "flow-blend")):
        for width, row in r.get(phase, {}).items():
            if isinstance(row, dict):
                stages = ", ".join(f"{k} {v:.2f} s" for k, v in row["stages"].items())
                print(f"render {method} at width {width}: {row['fps']:.1f} fps ({row['frames']} frames, "
                      f"{row['wall_s']:.1f} s, {row.get('encoder', '?')}; {stages})")
            else:
                print(f"render {method}: {width}: {row}")
    enc = r.get("encode", {})
    for name in ("software", "nvenc"):
        row = enc.get(name)
        if isinstance(row, dict) and "fps" in row:
            print(f"encode {name} ({enc['frames']} frames at {enc['size']}): {row['fps']:.1f} fps, "
                  f"{row['bytes'] / 2**20:.1f} MiB, PSNR {row['psnr_db']:.2f} dB")
        elif row:
            print(f"encode {name}: {row}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write what the GPU machine reads")
    p.add_argument("dest")
    p.add_argument("--wheels", action="store_true", help="also PyAV and imageio-ffmpeg (61 MB)")
    p.add_argument("--clip", default=None, help=f"the clip to render (default: ../shared/data/videos/{CLIP})")
    p = sub.add_parser("run", help="measure (on the GPU machine)")
    p.add_argument("--pack", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=420)
    p.add_argument("--vgg", default=None, help="the loss network's trunk (default: random weights, for timing)")
    p.add_argument("--work", default=None, help="parent of the temporary work folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes and steps: a check of this script on a CPU")
    p = sub.add_parser("table", help="README rows from a result")
    p.add_argument("json")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(Path(args.dest), args.wheels, args.clip)
        return 0
    if args.cmd == "table":
        table(Path(args.json))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
