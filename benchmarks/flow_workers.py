"""Flow stage on Ray with 1 and 2 workers on the same clip, in one run (target: >= 1.7x on 2 cores).

The flow stage as the Prefect + Ray engine runs it: one Ray task per chunk (``flow_for_chunk``: the
chunk's consecutive pairs, the bridging pair included; OpenCV single-threaded inside each task),
all chunks submitted at once, into a fresh flow cache. Ray is started with 1 CPU, then with 2;
the workers are warmed up first (imports), so the table shows the flow computation itself. The
in-process engine's flow stage (one decode pass, OpenCV's own threads) is the baseline row.

    python benchmarks/flow_workers.py [--input CLIP] [--frames 240] [--width 640] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import shared_video, trimmed_copy  # noqa: E402


def _ray_flow(job, workers: int) -> dict:
    import ray

    from tasks import ray_exec

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=1)
        def warm() -> float:
            t = time.perf_counter()
            import engine.flow_stage  # noqa: F401  (what a flow task imports)
            time.sleep(0.5)  # hold the worker so each warm-up lands on its own
            return time.perf_counter() - t

        t = time.perf_counter()
        ray.get([warm.remote() for _ in range(workers)])
        warmup = time.perf_counter() - t
        ray_exec.register_job(job)
        ref = ray_exec._job_ref(job.work_uri)
        t = time.perf_counter()
        results = ray.get([ray_exec._flow_chunk.options(scheduling_strategy="SPREAD").remote(ref, c.id)
                           for c in job.plan.chunks])
        wall = time.perf_counter() - t
        ray_exec.release(job.work_uri)
    finally:
        ray.shutdown()
    return {"workers": workers, "wall_s": round(wall, 3), "warmup_s": round(warmup, 3),
            "pairs": sum(r["pairs"] for r in results), "computed": sum(r["computed"] for r in results),
            "task_seconds": round(sum(r["seconds"] for r in results), 3),
            "task_cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=None, help="clip (default: ../shared/data/videos/pyscenedetect_testvideo.mp4)")
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--chunk-frames", type=int, default=24)
    ap.add_argument("--preset", default="medium", choices=["ultrafast", "fast", "medium"], help="DIS preset")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from engine.config import RenderConfig
    from engine.job import plan_job
    from engine.local import LocalExecutor
    from engine.progress import quiet
    from engine.source import find_shots, prepare_source
    from pipeline.flow import FlowCache, make_flow_backend
    from pipeline.storage import open_storage

    src = Path(args.input) if args.input else shared_video("pyscenedetect_testvideo.mp4")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["FILMSTYLE_CACHE"] = str(tmp / "cache")
        clip = trimmed_copy(src, args.frames, tmp / "clip.mp4")

        def job_for(name: str):
            cfg = RenderConfig(input=str(clip), output="", width=args.width, chunk_frames=args.chunk_frames,
                               flow_preset=args.preset, flow_cache=str(tmp / name), cache_dir=str(tmp / "cache"))
            source = prepare_source(cfg.input, cfg.cache_dir)
            shots = find_shots(source, cfg.shot_params(), cfg.cache_dir)
            return plan_job(cfg, source, shots, style_path=None)

        job = job_for("flow-local")
        local = {"pairs": 0, "computed": 0}
        t = time.perf_counter()
        LocalExecutor(quiet).flow(job, list(job.plan.chunks),
                                  lambda chunk, counts: local.update({k: local[k] + counts[k] for k in local}))
        rows.append({"workers": "in-process", "wall_s": round(time.perf_counter() - t, 3), "warmup_s": 0.0,
                     "pairs": local["pairs"], "computed": local["computed"], "task_seconds": None,
                     "task_cpu_seconds": None})
        for n in (1, 2):
            rows.append(_ray_flow(job_for(f"flow-ray{n}"), n))
        # The same pairs either way: compare the caches entry by entry.
        caches = [FlowCache(open_storage(str(tmp / name)), job.source.hash, job.working_size,
                            make_flow_backend("dis", preset=args.preset)) for name in ("flow-ray1", "flow-ray2")]
        same = all(caches[0].storage.get(k) == caches[1].storage.get(k) for k in caches[0].storage.list("flow/"))
        shots, chunks = len(job.plan.shots), len(job.plan.chunks)

    one, two = rows[1]["wall_s"], rows[2]["wall_s"]
    print(f"clip: {src.name}, first {args.frames} frames, working width {args.width}, DIS {args.preset}, "
          f"{shots} shots, {chunks} chunks of <= {args.chunk_frames} frames, {rows[0]['pairs']} pairs; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| flow stage | wall s | pairs/s | worker warm-up s | summed task s | summed task CPU s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        label = r["workers"] if isinstance(r["workers"], str) else f"Ray, {r['workers']} worker(s)"
        task = "-" if r["task_seconds"] is None else f"{r['task_seconds']:.2f}"
        cpu = "-" if r["task_cpu_seconds"] is None else f"{r['task_cpu_seconds']:.2f}"
        print(f"| {label} | {r['wall_s']:.2f} | {r['pairs'] / r['wall_s']:.1f} | {r['warmup_s']:.2f} | {task} | {cpu} |")
    print(f"speedup 2 vs 1 Ray workers: {one / two:.2f}x (target >= 1.7x); identical caches: {same}")
    busy = rows[2]["task_cpu_seconds"] / rows[2]["wall_s"]
    print(f"with 2 workers the tasks got {busy:.2f} cores on average (CPU s / wall s): less than 2 means "
          "other processes held the cores")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "speedup": one / two, "identical": same}, indent=2))


if __name__ == "__main__":
    main()
