"""What a stylization method carries across frames and chunks, and the flow it may ask for.

A method turns a chunk (N, H, W, 3 uint8 RGB frames of one shot) plus the state carried out
of the previous chunk of the same shot into stylized frames and a new carry state. The state
holds exactly what a method feeds forward from frame to frame, in the representation it uses
internally (uint8 frames), so a chunked render equals an unchunked one. It travels between
processes and machines as an .npz (never a pickle).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class CarryState:
    """What crosses a chunk boundary inside a shot. ``None`` fields mean 'start of a shot'."""

    next_frame: int  # absolute index of the frame this state precedes
    last_output: np.ndarray | None = None  # last stylized frame (H, W, 3) uint8
    last_source: np.ndarray | None = None  # last source frame (H, W, 3) uint8
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # method-specific arrays

    def to_bytes(self) -> bytes:
        arrays = {f"extra.{k}": v for k, v in self.extra.items()}
        if self.last_output is not None:
            arrays["last_output"] = self.last_output
        if self.last_source is not None:
            arrays["last_source"] = self.last_source
        buf = io.BytesIO()
        np.savez_compressed(buf, next_frame=np.int64(self.next_frame), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CarryState":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # never unpickle
            extra = {k[6:]: z[k] for k in z.files if k.startswith("extra.")}
            return cls(
                next_frame=int(z["next_frame"]),
                last_output=z["last_output"] if "last_output" in z.files else None,
                last_source=z["last_source"] if "last_source" in z.files else None,
                extra=extra,
            )


class FlowSource(Protocol):
    """Optical flow for the consecutive pairs of a chunk (``pipeline.flow.CachedFlowSource``)."""

    def pair(self, t: int):  # -> FlowPair (forward t-1 -> t, backward t -> t-1, reliability mask)
        ...
