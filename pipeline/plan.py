"""RenderPlan: shots split into chunks, stable chunk ids and content-addressed artifact keys.

A chunk is the unit of parallel work and of caching. Chunks never cross a cut,
so the temporal state (previous stylized frame, flow) only ever flows between
chunks of the same shot.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

from .shots import Shot, check_tiling


@dataclass(frozen=True)
class Chunk:
    """Frames [start, end) of shot ``shot``; ``index`` counts chunks within that shot."""

    shot: int
    index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def first_in_shot(self) -> bool:
        return self.index == 0

    @property
    def id(self) -> str:
        return f"s{self.shot:04d}-c{self.index:04d}-f{self.start:06d}-{self.end:06d}"


@dataclass(frozen=True)
class RenderPlan:
    source_hash: str
    frame_count: int
    fps: Fraction
    working_size: tuple[int, int]  # (width, height)
    shots: tuple[Shot, ...]
    chunks: tuple[Chunk, ...]

    def chunks_of_shot(self, shot: int) -> tuple[Chunk, ...]:
        return tuple(c for c in self.chunks if c.shot == shot)

    def key(self, kind: str, chunk: Chunk, **params: Any) -> str:
        """Content-addressed key of an artifact made from ``chunk``'s frames.

        Any change of source, frame range, working size or param gives a new key;
        the same inputs give the same key in every process and run.
        """
        blob = json.dumps(
            {
                "kind": kind,
                "source": self.source_hash,
                "frames": [chunk.start, chunk.end],
                "size": list(self.working_size),
                "params": params,
            },
            sort_keys=True,
            separators=(",", ":"),
            default=_canonical,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def to_dict(self) -> dict:
        return {
            "source_hash": self.source_hash,
            "frame_count": self.frame_count,
            "fps": str(self.fps),
            "working_size": list(self.working_size),
            "shots": [[s.start, s.end] for s in self.shots],
            "chunks": [{"id": c.id, "shot": c.shot, "index": c.index, "start": c.start, "end": c.end} for c in self.chunks],
        }

    @classmethod
    def from_dict(cls, d: dict) -> RenderPlan:
        plan = cls(
            source_hash=d["source_hash"],
            frame_count=int(d["frame_count"]),
            fps=Fraction(d["fps"]),
            working_size=(int(d["working_size"][0]), int(d["working_size"][1])),
            shots=tuple(Shot(i, int(a), int(b)) for i, (a, b) in enumerate(d["shots"])),
            chunks=tuple(Chunk(int(c["shot"]), int(c["index"]), int(c["start"]), int(c["end"])) for c in d["chunks"]),
        )
        _check_chunks(plan)
        return plan


def _canonical(value: Any) -> Any:
    """JSON form of the few non-JSON types that appear in params."""
    if isinstance(value, Fraction):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    raise TypeError(f"cache-key param of type {type(value).__name__} is not JSON-able: {value!r}")


def _split(length: int, max_frames: int) -> list[int]:
    """Balanced chunk lengths: 100 with max 48 -> [34, 33, 33], not [48, 48, 4]."""
    n = math.ceil(length / max_frames)
    q, r = divmod(length, n)
    return [q + 1] * r + [q] * (n - r)


def make_plan(
    source_hash: str,
    frame_count: int,
    fps: Fraction,
    working_size: tuple[int, int],
    shots: Sequence[Shot],
    max_chunk_frames: int = 48,
) -> RenderPlan:
    """Split every shot into balanced chunks of at most ``max_chunk_frames`` frames.

    Balanced splitting keeps every chunk at least (max_chunk_frames + 1) // 2
    frames long unless its whole shot is shorter: no tiny tail chunks.
    """
    if max_chunk_frames < 1:
        raise ValueError(f"max_chunk_frames must be >= 1, got {max_chunk_frames}")
    if frame_count < 1:
        raise ValueError(f"frame_count must be >= 1, got {frame_count}")
    if len(working_size) != 2 or min(working_size) < 1:
        raise ValueError(f"working_size must be (width, height) > 0, got {working_size}")
    shots = tuple(shots)
    check_tiling(shots, frame_count)
    chunks = []
    for shot in shots:
        start = shot.start
        for j, length in enumerate(_split(shot.length, max_chunk_frames)):
            chunks.append(Chunk(shot.index, j, start, start + length))
            start += length
    return RenderPlan(source_hash, frame_count, Fraction(fps), (int(working_size[0]), int(working_size[1])), shots, tuple(chunks))


def _check_chunks(plan: RenderPlan) -> None:
    """Chunks must tile each shot in order (used for plans read back from JSON)."""
    check_tiling(plan.shots, plan.frame_count)
    for shot in plan.shots:
        chunks = plan.chunks_of_shot(shot.index)
        bounds = [shot.start] + [c.end for c in chunks]
        if [c.start for c in chunks] != bounds[:-1] or bounds[-1] != shot.end or [c.index for c in chunks] != list(range(len(chunks))):
            raise ValueError(f"chunks of shot {shot.index} do not tile frames [{shot.start}, {shot.end})")
    if sum(c.length for c in plan.chunks) != plan.frame_count:
        raise ValueError("chunks do not tile the film")


def flow_pairs(plan: RenderPlan, chunk: Chunk | None = None) -> list[tuple[int, int]]:
    """Consecutive frame pairs (t-1, t) inside shots; never across a cut.

    For the whole plan, or only the pairs ending in ``chunk``: those include the
    pair that bridges from the previous chunk of the same shot.
    """
    if chunk is not None:
        first = chunk.start if chunk.first_in_shot else chunk.start - 1
        return [(t, t + 1) for t in range(first, chunk.end - 1)]
    return [(t, t + 1) for s in plan.shots for t in range(s.start, s.end - 1)]
