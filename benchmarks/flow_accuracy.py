"""Accuracy and speed of the flow backends, as a markdown table.

EPE: mean end-point error against MPI-Sintel ground truth (frame 2 -> 3, full
1024x436, invalid pixels left out) over the pairs in ../shared/data/flow/sintel.
Speed: median wall time of a few runs on two consecutive frames of a real
720p clip decoded at 640x360 and 1280x720; "flow" is one direction, "pair" is
what the pipeline does per frame pair (forward + backward + reliability mask).
Also prints the flow cache's bytes per pair at 640x360.

    nice -n 19 .venv/bin/python benchmarks/flow_accuracy.py [--runs 5] [--clip NAME]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, shared_video  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.flow import compute_pair, encode_pair, make_flow_backend  # noqa: E402
from pipeline.metrics import end_point_error, read_flo  # noqa: E402

SINTEL = ROOT.parent / "shared" / "data" / "flow" / "sintel"
CONFIGS = [("dis", {"preset": "ultrafast"}), ("dis", {"preset": "fast"}), ("dis", {"preset": "medium"}),
           ("farneback", {}), ("tvl1", {}), ("ilk", {}), ("raft", {"model": "small"}), ("raft", {"model": "large"})]
SIZES = [(640, 360), (1280, 720)]


def sintel_pairs() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    dirs = sorted(d for d in SINTEL.glob("*") if (d / "gt" / "frame_0002.flo").is_file())
    if not dirs:
        sys.exit(f"benchmark skipped: no Sintel pairs in {SINTEL}")

    def rgb(p: Path) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)

    return [(d.name, rgb(d / "frame_0002.png"), rgb(d / "frame_0003.png"), read_flo(d / "gt" / "frame_0002.flo"),
             cv2.imread(str(d / "gt" / "invalid" / "frame_0002.png"), cv2.IMREAD_GRAYSCALE) < 128)
            for d in dirs]


def clip_frames(name: str, size: tuple[int, int], at: int = 100) -> tuple[np.ndarray, np.ndarray]:
    from pipeline import media

    info = media.probe(shared_video(name))
    a, b = media.decode_frames(info, at, at + 2, size)
    return a, b


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up: lazy construction, allocations
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def label(name: str, params: dict) -> str:
    return f"{name} {' '.join(str(v) for v in params.values())}".strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clip", default="imageio_cockatoo_yuv420.mp4")
    args = ap.parse_args(argv)

    pairs = sintel_pairs()
    frames = {size: clip_frames(args.clip, size) for size in SIZES}
    names = [p[0] for p in pairs]
    head = ["backend", "Sintel EPE (mean)", *names]
    head += [f"{kind} ms {w}x{h}" for w, h in SIZES for kind in ("flow", "pair")]
    print(f"{len(pairs)} Sintel pairs at 1024x436; timings: median of {args.runs} on {args.clip}, "
          f"cv2 threads {cv2.getNumThreads()}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    skipped = []
    for name, params in CONFIGS:
        try:
            backend = make_flow_backend(name, **params)
        except InputError as e:
            skipped.append(f"{label(name, params)}: {e}")
            continue
        epes = [end_point_error(backend(a, b), gt, valid) for _, a, b, gt, valid in pairs]
        row = [label(name, params), f"{np.mean(epes):.2f}", *(f"{e:.2f}" for e in epes)]
        for size in SIZES:
            a, b = frames[size]
            row.append(f"{1000 * median_seconds(lambda: backend(a, b), args.runs):.0f}")
            row.append(f"{1000 * median_seconds(lambda: compute_pair(backend, a, b), args.runs):.0f}")
        print("| " + " | ".join(row) + " |")
    for line in skipped:
        print(f"\nnot run: {line}")

    a, b = frames[(640, 360)]
    for soft in (False, True):
        data = encode_pair(compute_pair(make_flow_backend("dis"), a, b, soft=soft))
        raw = 640 * 360 * (2 * 2 * 4 + 4)
        print(f"\nflow cache at 640x360 (dis medium, {'soft' if soft else 'hard'} mask): "
              f"{len(data) / 1000:.0f} kB per pair ({raw / len(data):.1f}x smaller than float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
