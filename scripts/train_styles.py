"""Train every shipped style on one GPU in minutes: the image nets, then the nets of the temporal methods.

Two steps, so that the GPU machine needs only torch, numpy, OpenCV, scikit-image, safetensors
and h5py, no network, and under 64 MiB of files:

    .venv/bin/python scripts/train_styles.py pack .device/pack           # here: what the GPU reads
    python3 scripts/train_styles.py run --pack .device/pack --out OUT    # there (or here: --device cpu)

``pack`` writes the loss network's trunk (HED VGG16 up to relu4_3, fp16 safetensors, 15 MB),
the BSDS500 train+val photos re-encoded at JPEG quality 85 (the training content, 13 MB), 50
test photos as they are (the quick judge, 10 of them the optimum's) and the paintings.

``run``, with a budget in seconds for the whole of it (in a fresh work folder):
1. calibrates: the seconds per training step of one net on this device;
2. with ``--ab``, an A/B of the net's normalization layers (none, instance, FRN:
   models/transformer.py) on two styles, side by side for the same time, judged on the test
   photos; the winner is the norm with the lowest style loss x content loss among those that
   keep the tone correlation >= 0.9 (run on 2026-12-04: instance; see models/train.py);
3. trains every style (STYLES) with that norm and the defaults of ``filmstyle train``
   (``--phases temporal`` skips 2, 3 and 5 and starts 4 from the shipped image nets);
4. from every shipped style's new image net, side by side: its flow-recurrent net and its stable
   net (ReCoNet two-frame training: the recipe of the shipped stable starry_night) fine-tuned
   from it, and its distilled student (teacher A the flow-blend render of the image net); all on
   synthetic camera moves with exact flow (the real clips need a video decoder this machine lacks);
5. beside 3 and 4, the optimum (models/optimize.py) of 10 test photos per style.
Everything lands under OUT: checkpoints with their cards in tars of at most 16 MiB, a log,
``results.json`` (every judge number) and contact sheets. Steps are set from the calibration
so that each phase fits its share of the budget; every run also stops at its deadline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import log  # noqa: E402
from scripts.style_judge import Judge, pick_norm, run_optimum  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
#: name -> painting file in ../shared/data/styles. la_muse is not shipped: it checks that the
#: defaults reach the targets on a painting no recipe was tuned on.
STYLES = {"starry_night": "starry_night.jpg", "wave_crop": "wave_crop.jpg", "mosaic": "mosaic.jpg",
          "composition_vii": "composition_vii.jpg", "candy": "candy.jpg", "udnie": "udnie.jpg",
          "la_muse": "la_muse.jpg"}
NOT_SHIPPED = {"la_muse"}
AB_STYLES = ("starry_night", "mosaic")  # the painterly one and the one the old nets did worst on
NORMS = ("none", "instance", "frn")
JUDGE_PHOTOS, OPTIMUM_PHOTOS = 50, 10
BATCH = 8  # more pixels per step than Johnson et al.'s 4: the GPU has room, the steps are few
# Shares of the budget (what is left after start-up and calibration); without --ab, the A/B's
# share goes to the image nets.
SHARES = {"ab": 0.30, "image": 0.40, "temporal": 0.20}
#: phase 4's nets, each with its cost per step against an image net's (calibrated on the image phase)
TEMPORAL = {"recurrent": 1.4, "stable": 2.0, "distilled": 1.5}


# ---------------------------------------------------------------- pack (here)


def pack(dest: Path) -> None:
    from PIL import Image

    from models.vgg import export_trunk

    dest.mkdir(parents=True, exist_ok=True)
    export_trunk(dest / "vgg16_hed_relu4_3_fp16.safetensors")
    bsds = DATA / "content" / "bsds500"
    for split in ("train", "val"):
        out = dest / "bsds500" / split
        out.mkdir(parents=True, exist_ok=True)
        for p in sorted((bsds / split).glob("*.jpg")):
            Image.open(p).convert("RGB").save(out / p.name, quality=85)
    out = dest / "test"
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted((bsds / "test").glob("*.jpg"))[:JUDGE_PHOTOS]:  # as they are: the optima are keyed by them
        shutil.copyfile(p, out / p.name)
    out = dest / "styles"
    out.mkdir(parents=True, exist_ok=True)
    for file in STYLES.values():  # the files themselves: the cards record their hashes
        shutil.copyfile(DATA / "styles" / file, out / file)
    from benchmarks.common import report_device_payload

    report_device_payload(dest)


# ---------------------------------------------------------------- one training run (a subprocess)


def run_one(spec: dict) -> None:
    """Train one net as ``spec`` says (kind image or recurrent); the parent runs several at once."""
    from models.train import TrainConfig, train
    from models.train_video import VideoTrainConfig, train_video

    kind = spec.pop("kind")
    if kind == "image":
        train(TrainConfig(**spec), progress=False, log=print)
    elif kind == "distilled":
        from methods.flow_blend import BlendTeacher
        from models.distill import DistillConfig, distill

        distill(DistillConfig(**spec), progress=False, log=print, blend_teacher=BlendTeacher)
    else:
        spec["mix"] = tuple(spec["mix"])
        train_video(VideoTrainConfig(**spec), progress=False, log=print)


def _launch(specs: list[dict], logfile: Path, logdir: Path) -> list[tuple[dict, int]]:
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // len(specs))))
    for spec in specs:
        out = open(logdir / (Path(spec["out"]).stem + f".{spec['kind']}.log"), "w")
        p = subprocess.Popen([sys.executable, __file__, "one", json.dumps(spec)], stdout=out,
                             stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        procs.append((spec, p, out))
    results = []
    for spec, p, out in procs:
        rc = p.wait()
        out.close()
        log(f"{Path(spec['out']).name} ({spec['kind']}): exit {rc}", logfile)
        results.append((spec, rc))
    return results


# ---------------------------------------------------------------- the whole run


def _time_per_step(pack_dir: Path, device: str, vgg_path: str, work: Path, batch: int, size: int,
                   steps: int) -> float:
    """Seconds per image-phase step of one net, alone on the device (after cuDNN's warm-up)."""
    from models.train import TrainConfig, train

    def loop_time(path: Path) -> float:
        # the training state's clock: the loop alone, stopped before the final sample grid
        # (the card's clock also holds that grid, whose new shape costs cuDNN a warm-up)
        from safetensors import safe_open

        with safe_open(str(path.with_name(path.name + ".state.safetensors")), framework="pt") as f:
            return json.loads(f.metadata()["filmstyle.train"])["history"]["elapsed_s"]

    out = work / "calibrate.safetensors"
    cfg = TrainConfig(style=str(pack_dir / "styles" / STYLES["starry_night"]), data=str(pack_dir / "bsds500" / "train"),
                      out=str(out), batch_size=batch, image_size=size, steps=max(2, steps // 3), lr_warmup=10,
                      vgg=vgg_path, device=device, sample_every_s=1e9, checkpoint_every_s=1e9)
    train(cfg, restart=True, progress=False, log=lambda m: None)
    warm = loop_time(out)
    train(TrainConfig(**{**cfg.__dict__, "steps": cfg.steps + steps}), progress=False, log=lambda m: None)
    return max(1e-3, (loop_time(out) - warm) / steps)


def _tar(files: list[Path], out_dir: Path, stem: str, limit: int = 15 * 2**20) -> None:
    """Pack files into as few tars of at most ``limit`` bytes as it takes (the device returns 8 files)."""
    groups, size = [[]], 0
    for f in files:
        if groups[-1] and size + f.stat().st_size > limit:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += f.stat().st_size
    for i, group in enumerate(g for g in groups if g):
        with tarfile.open(out_dir / f"{stem}_{i}.tar", "w") as t:
            for f in group:
                t.add(f, arcname=f"{f.parent.name}/{f.name}")


def phase_shares(ab: bool, phases) -> dict:
    """Each phase's share of the budget: SHARES for the phases that run; a skipped phase's share goes
    to the image nets, or to the temporal nets when those run alone."""
    shares = {"ab": SHARES["ab"] if ab and "image" in phases else 0.0,
              "image": SHARES["image"] if "image" in phases else 0.0,
              "temporal": SHARES["temporal"] if "temporal" in phases else 0.0}
    shares["image" if "image" in phases else "temporal"] += sum(SHARES.values()) - sum(shares.values())
    return shares


def temporal_specs(styles: list[str], work: Path, pack_dir: Path, vgg_path: str, device: str, args, deadline: float,
                   steps) -> list[dict]:
    """Phase 4's runs for ``styles``: a flow-recurrent net, a stable net and a distilled student each;
    ``steps(cost)`` is the step count of a net that costs ``cost`` image-net steps a step."""
    from models.distill import FLOW_BLEND

    data = [str(pack_dir / "bsds500" / "train"), str(pack_dir / "bsds500" / "val")]
    specs = []
    for s in styles:
        image_net, painting = str(work / "image" / f"{s}.safetensors"), str(pack_dir / "styles" / STYLES[s])
        common = {"data": data, "style": painting, "vgg": vgg_path, "device": device, "max_seconds": deadline,
                  "checkpoint_every_s": 60, "image_size": args.image_size}
        video = {**common, "init": image_net, "videos": [], "mix": [1, 0], "batch_size": args.batch}
        specs.append({**video, "kind": "recurrent", "out": str(work / "recurrent" / f"{s}.safetensors"),
                      "steps": steps(TEMPORAL["recurrent"])})
        # the shipped stable starry_night's recipe (models/weights/stable/starry_night.json)
        specs.append({**video, "kind": "stable", "out": str(work / "stable" / f"{s}.safetensors"),
                      "temporal": "reconet", "temporal_weight": 20.0, "temporal_feature_weight": 1.0,
                      "steps": steps(TEMPORAL["stable"])})
        # K = 4 frames of batch/4 sequences: as many frames a step as an image net's batch
        specs.append({**common, "kind": "distilled", "teacher_flow": FLOW_BLEND, "teacher_frame": image_net,
                      "out": str(work / "distilled" / f"{s}.safetensors"), "batch_size": max(1, args.batch // 4),
                      "frames": 4, "steps": steps(TEMPORAL["distilled"])})
    return specs


def run_all(args) -> None:
    import torch

    import tempfile

    t_start = time.monotonic()
    out = Path(args.out)
    # A fresh folder: a training state left by an earlier run (other settings) would stop the runs.
    work = Path(tempfile.mkdtemp(prefix="filmstyle-train-", dir=args.work))
    for d in (out, work, work / "logs"):
        d.mkdir(parents=True, exist_ok=True)
    logfile = out / "train_styles.log"
    pack_dir = Path(args.pack).resolve()
    vgg_path = str(pack_dir / "vgg16_hed_relu4_3_fp16.safetensors")
    device = args.device
    if device == "cuda":
        log(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", logfile)
    results: dict = {"device": device, "budget_s": args.budget_s, "batch": args.batch, "image_size": args.image_size}

    def save_results():
        (out / "results.json").write_text(json.dumps(results, indent=1))

    styles = {k: v for k, v in STYLES.items() if not args.styles or k in args.styles}
    step_s = _time_per_step(pack_dir, device, vgg_path, work, args.batch, args.image_size, args.calibration_steps)
    # margins: judging and packing, and each phase's start (processes, CUDA, photos decoded)
    left = args.budget_s - (time.monotonic() - t_start) - 20 - 3 * 15
    if left < 30:
        log(f"the budget leaves {left:.0f} s for training; using 30", logfile)
        left = 30.0
    results["calibration_s_per_step"] = step_s
    log(f"calibration: {step_s * 1000:.1f} ms per step (batch {args.batch}, {args.image_size} px); "
        f"{left:.0f} s to share", logfile)

    def steps_for(share: float, nets: int, cost: float = 1.0) -> int:
        # Nets run side by side and overlap one another's gaps, by how much the calibration
        # does not tell: the step count allows up to 4x the throughput of one net alone, and
        # the deadline (share of the budget) ends the runs that do not get there.
        return max(20, int(4 * share * left / (nets * step_s * cost)))

    def image_spec(style: str, norm: str, steps: int, deadline: float, folder: str) -> dict:
        shipped_net = ROOT / "models" / "weights" / f"{style}.safetensors"
        init = {"init": str(shipped_net)} if args.init_shipped and folder == "image" and shipped_net.exists() else {}
        return {**init, "kind": "image", "style": str(pack_dir / "styles" / STYLES[style]),
                "data": [str(pack_dir / "bsds500" / "train"), str(pack_dir / "bsds500" / "val")], "out": str(work / folder / f"{style}.safetensors"),
                "norm": norm, "batch_size": args.batch, "image_size": args.image_size, "steps": steps, "vgg": vgg_path, "device": device,
                "max_seconds": deadline, "sample_every_s": 1e9, "checkpoint_every_s": 60,
                "lr_decay": args.lr_decay}

    judge = Judge(pack_dir, device, vgg_path, args.judge_photos, STYLES)
    opt_proc = None
    if not args.skip_optimum and "image" in args.phases:
        opt_proc = subprocess.Popen(
            [sys.executable, __file__, "optimum", "--pack", str(pack_dir), "--out", str(work / "optimum"),
             "--device", device, "--steps", str(args.optimum_steps), "--styles", *styles],
            stdout=open(work / "logs" / "optimum.log", "w"), stderr=subprocess.STDOUT, cwd=ROOT)

    # 2. A/B of the normalization layers (--ab; else the trainer's default norm)
    shares = phase_shares(args.ab, args.phases)
    ab_styles = [s for s in AB_STYLES if s in styles] if args.ab and "image" in args.phases else []
    steps = 0
    if ab_styles:
        nets = len(ab_styles) * len(NORMS)
        steps = steps_for(shares["ab"], nets)
        deadline = shares["ab"] * left * 1.2
        log(f"A/B: {nets} nets, {steps} steps each", logfile)
        specs = [image_spec(s, n, steps, deadline, f"ab_{n}") for n in NORMS for s in ab_styles]
        _launch(specs, logfile, work / "logs")
        ab: dict = {}
        for spec in specs:
            ckpt = Path(spec["out"])
            if ckpt.exists():
                ab.setdefault(spec["norm"], {})[ckpt.stem] = judge.net(ckpt, ckpt.stem)
                ab[spec["norm"]][ckpt.stem]["steps"] = json.loads(ckpt.with_suffix(".json").read_text())["steps"]
        norm, why = pick_norm(ab, len(ab_styles))
        results["ab"] = {"steps": steps, "results": ab, "winner": norm, "why": why}
        save_results()
        log(f"A/B winner: {norm} ({why})", logfile)
    else:
        from models.train import TrainConfig

        norm = TrainConfig.norm

    # 3. every style with the winner (the A/B styles' winning nets go on training)
    nets = len(styles)
    steps_img = max(steps_for(shares["image"], nets), steps)
    deadline = shares["image"] * left * 1.2
    specs = []
    for s in styles:
        spec = image_spec(s, norm, steps_img, deadline, "image")
        if s in ab_styles:  # continue the A/B run: its state file resumes it
            src = work / f"ab_{norm}" / f"{s}.safetensors"
            for suffix in (".state.safetensors",):
                state = src.with_name(src.name + suffix)
                if state.exists():
                    Path(spec["out"]).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(state, Path(spec["out"]).with_name(Path(spec["out"]).name + suffix))
        specs.append(spec)
    if "image" in args.phases:
        log(f"image nets: {nets} styles, {steps_img} steps each, norm {norm}", logfile)
        _launch(specs, logfile, work / "logs")
    else:  # the temporal phase alone: from the shipped image nets
        (work / "image").mkdir(exist_ok=True)
        for s in styles:
            for suffix in (".safetensors", ".json"):
                shipped_net = ROOT / "models" / "weights" / f"{s}{suffix}"
                if shipped_net.exists():
                    shutil.copyfile(shipped_net, work / "image" / shipped_net.name)
        log("image nets: the shipped ones (--phases temporal)", logfile)
    results["image"] = {}
    for s in styles:
        ckpt = work / "image" / f"{s}.safetensors"
        if ckpt.exists():
            results["image"][s] = judge.net(ckpt, s)
            results["image"][s]["steps"] = json.loads(ckpt.with_suffix(".json").read_text())["steps"]
            log(f"  {s}: {results['image'][s]}", logfile)
    save_results()

    # 4. the temporal methods' nets from the image nets, side by side
    shipped = [s for s in styles if s not in NOT_SHIPPED and (work / "image" / f"{s}.safetensors").exists()
               and "temporal" in args.phases]
    nets = max(1, len(shipped)) * len(TEMPORAL)
    specs = temporal_specs(shipped, work, pack_dir, vgg_path, device, args, shares["temporal"] * left * 1.2,
                           lambda cost: steps_for(shares["temporal"], nets, cost))
    log("temporal nets: " + ", ".join(f"{spec['kind']} {Path(spec['out']).stem} {spec['steps']} steps"
                                      for spec in specs), logfile)
    _launch(specs, logfile, work / "logs")
    results["temporal"] = {}
    for spec in specs:
        ckpt = Path(spec["out"])
        if ckpt.exists():
            row = {"steps": json.loads(ckpt.with_suffix(".json").read_text())["steps"]}
            if spec["kind"] != "recurrent":  # one frame in: judged as the image nets are
                row.update(judge.net(ckpt, ckpt.stem))
            results["temporal"].setdefault(spec["kind"], {})[ckpt.stem] = row
    save_results()

    if opt_proc is not None:
        try:
            opt_proc.wait(timeout=max(1, args.budget_s - (time.monotonic() - t_start) - 10))
        except subprocess.TimeoutExpired:
            opt_proc.kill()
            log("optimum: stopped at the budget", logfile)
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    save_results()

    # 5. bring back: checkpoints + cards, logs, sheets
    trained = [d for d in ("image", *TEMPORAL) if d != "image" or "image" in args.phases]
    ckpts = [f for d in trained for f in sorted((work / d).glob("*.safetensors"))
             if not f.name.endswith(".state.safetensors")]
    _tar(ckpts + [f.with_suffix(".json") for f in ckpts], out, "checkpoints")
    extras = sorted((work / "logs").glob("*.log")) + sorted((work / "optimum").glob("*"))
    extras += sorted(work.glob("*/*.samples.png"))
    _tar([f for f in extras if f.is_file()], out, "extras")
    log(f"done in {time.monotonic() - t_start:.0f} s", logfile)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write what the GPU machine reads")
    p.add_argument("dest")
    p = sub.add_parser("run", help="train everything (on the GPU)")
    p.add_argument("--pack", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None, help="parent of the run's fresh work folder (default: the temp dir)")
    p.add_argument("--ab", action="store_true", help="first A/B the normalization layers on two styles")
    p.add_argument("--phases", nargs="+", choices=["image", "temporal"], default=["image", "temporal"],
                   help="image: train the image nets; temporal: the flow-recurrent, stable and distilled nets "
                        "from them (alone: from the shipped image nets, with the whole budget). Default: both")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=420)
    p.add_argument("--optimum-steps", type=int, default=150)
    p.add_argument("--skip-optimum", action="store_true")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--init-shipped", action="store_true",
                   help="continue the shipped nets (models/weights) instead of starting from nothing; a style "
                        "without one (la_muse) still starts from nothing")
    p.add_argument("--lr-decay", default="cosine", choices=["constant", "cosine"],
                   help="image nets' learning rate after warm-up (cosine: to 0 by the calibrated last step; on "
                        "this CPU it bought 8%% of content loss for 2%% of style in a fine-tune; default cosine)")
    p.add_argument("--calibration-steps", type=int, default=30)
    p.add_argument("--judge-photos", type=int, default=JUDGE_PHOTOS)
    p.add_argument("--styles", nargs="*", help="a subset of STYLES (a quick check of the script)")
    p = sub.add_parser("one", help=argparse.SUPPRESS)
    p.add_argument("spec")
    p = sub.add_parser("optimum", help=argparse.SUPPRESS)
    p.add_argument("--pack", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--styles", nargs="+", required=True)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(Path(args.dest))
    elif args.cmd == "run":
        run_all(args)
    elif args.cmd == "one":
        run_one(json.loads(args.spec))
    else:
        pack_dir = Path(args.pack)
        run_optimum(pack_dir, Path(args.out), args.device, str(pack_dir / "vgg16_hed_relu4_3_fp16.safetensors"),
                    {s: STYLES[s] for s in args.styles}, OPTIMUM_PHOTOS, args.steps)


if __name__ == "__main__":
    main()
