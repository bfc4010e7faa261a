"""Every frame of a video as one array: what the render tests compare, frame for frame."""
from __future__ import annotations

import numpy as np

from pipeline import media


def all_frames(path) -> np.ndarray:
    info = media.probe(str(path))
    return np.stack(list(media.decode_frames(info, 0, info.frame_count)))
