"""The render report: one record for both executors (JSON beside the output), and its summary
lines, printed by the CLI and shown in the Prefect run's markdown artifact."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from pipeline.storage import open_object

from .job import RenderJob


@dataclass
class RenderReport:
    input: str
    output: str
    style: str
    method: str
    frames: int
    fps: str
    duration_s: float
    working_size: tuple[int, int]
    delivery_size: tuple[int, int]
    shots: int
    chunks: int
    chunks_resumed: int
    flow: dict = field(default_factory=dict)
    # the head's stages (probe, shots, flow, render, assemble: wall time) and the chunk stages
    # (decode, stylize, upscale, encode, commit: summed over every worker)
    stage_seconds: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    model_card: dict = field(default_factory=dict)
    engine: str = "local"
    workers: dict = field(default_factory=dict)  # count, device, threads, nodes, actors lost, chunks re-run
    options: dict = field(default_factory=dict)  # the method's options, defaults filled in
    device: str = ""
    precision: str = ""
    encoder: str = ""  # the segments' video encoder (libx264, h264_nvenc, ...)
    shot_starts: list = field(default_factory=list)  # first frame of each shot (for `filmstyle eval`)
    chunk_starts: list = field(default_factory=list)  # first frame of each chunk (seams)
    chunk_nodes: dict = field(default_factory=dict)  # chunk id -> node that rendered it
    flow_nodes: dict = field(default_factory=dict)  # chunk id -> node that computed its flow
    preview: str | None = None
    work: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> RenderReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_report(job: RenderJob, *, resumed: int, flow: dict, stage_seconds: dict, wall: float,
                engine: str = "local", **extra) -> RenderReport:
    from methods import validate_options

    plan, cfg = job.plan, job.cfg
    return RenderReport(
        input=cfg.input, output=cfg.output, style=cfg.style, method=cfg.method, frames=plan.frame_count,
        options=validate_options(cfg.method, cfg.options, module=job.method_module), device=cfg.device,
        precision=cfg.precision or "", encoder=cfg.delivery().segment_encoder()[0],
        fps=str(plan.fps), duration_s=round(float(Fraction(plan.frame_count) / plan.fps), 3),
        working_size=plan.working_size, delivery_size=job.out_size, shots=len(plan.shots), chunks=len(plan.chunks),
        chunks_resumed=resumed, flow=flow, stage_seconds={k: round(v, 3) for k, v in stage_seconds.items()},
        wall_seconds=round(wall, 3), model_card=job.model_card, engine=engine, work=job.work_uri,
        shot_starts=[s.start for s in plan.shots], chunk_starts=[c.start for c in plan.chunks], **extra)


def write_report(job: RenderJob, report: RenderReport) -> str:
    store, key = open_object(job.report_uri, job.s3)
    store.put(key, report.to_json().encode())
    return job.report_uri


def describe(job: RenderJob) -> str:
    info, plan = job.source.info, job.plan
    (ww, wh), (dw, dh) = plan.working_size, job.out_size
    return (f"{Path(job.cfg.input).name}: {info.frame_count} frames at {info.fps} fps, {len(plan.shots)} shots, "
            f"{len(plan.chunks)} chunks; working {ww}x{wh}, delivery {dw}x{dh}")


def summary_rows(rep: RenderReport, report_uri: str | None = None) -> list[tuple[str, str]]:
    """The report as (label, text) rows: the CLI prints them, the Prefect artifact tabulates them."""
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in rep.stage_seconds.items())
    resumed = f", {rep.chunks_resumed} resumed" if rep.chunks_resumed else ""
    rows = [("wrote", f"{rep.output} ({rep.frames} frames at {rep.fps} fps, {rep.shots} shots, {rep.chunks} chunks"
                      f"{resumed}) in {rep.wall_seconds:.1f}s"),
            ("style", f"{rep.style}, {rep.method} on {rep.device or 'cpu'}; working "
                      f"{rep.working_size[0]}x{rep.working_size[1]}, delivery "
                      f"{rep.delivery_size[0]}x{rep.delivery_size[1]}"
                      + (f", {rep.encoder}" if rep.encoder else "")),
            ("stages", stages)]
    if rep.flow:
        f = rep.flow
        rerun = f"; re-run after a lost worker: {', '.join(f['chunks_rerun'])}" if f.get("chunks_rerun") else ""
        rows.append(("flow", f"{f['pairs']} pairs, {f['computed']} computed, {f['cache_hits']} from the cache "
                             f"({f['cache']}){rerun}"))
    elif rep.method:
        rows.append(("flow", "none (the method needs no optical flow)"))
    if rep.workers:
        w = rep.workers
        line = (f"{w.get('count')} {w.get('device')} worker(s) x {w.get('threads')} thread(s) on "
                f"{len(w.get('nodes', [])) or 1} node(s)")
        if w.get("actors_lost"):
            line += (f"; {w['actors_lost']} lost with their worker or node, chunks re-run: "
                     f"{', '.join(w.get('chunks_retried', []))}")
        rows.append(("workers", line))
    if report_uri:
        rows.append(("report", report_uri))
    return rows


def summary_text(rep: RenderReport, report_uri: str | None = None) -> str:
    return "\n".join(f"{label}: {text}" if label != "wrote" else f"wrote {text}"
                     for label, text in summary_rows(rep, report_uri))
