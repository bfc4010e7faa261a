"""Frames deeper than 8 bits: a film with more than 8 bits a sample, rendered to a deeper master,
travels as uint16 RGB (full 16-bit scale) through decode, the methods, the upscalers and the
encoder (``engine.chunks.deep_frames`` decides). Everything that scales pixel values asks here."""
from __future__ import annotations

import numpy as np


def full_scale(frames: np.ndarray) -> float:
    """The value of white: 255.0 for uint8 frames, 65535.0 for uint16 ones."""
    return float(np.iinfo(frames.dtype).max)


def eight_bit(frame: np.ndarray) -> np.ndarray:
    """A frame as the flow backends take it: 16-bit frames rounded to 8 bits, as ffmpeg's own 8-bit
    decode (which the flow stage uses) rounds them; 8-bit frames as they are."""
    if frame.dtype == np.uint8:
        return frame
    return ((frame.astype(np.uint32) + 128) // 257).astype(np.uint8)
