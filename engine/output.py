"""Closing a render: the segments concatenated with the source's audio and subtitles into the
output (atomically, local or s3://), a preview strip beside it, and the work folder removed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from pipeline import media
from pipeline.delivery import SEQUENCE_MANIFEST
from pipeline.errors import OutputError
from pipeline.image_sequence import write_sequence
from pipeline.storage import clear, open_object

from .chunks import chunk_store
from .job import RenderJob, node_source


def contact_strip(video: str, count: int = 4, height: int = 120) -> bytes:
    """A PNG of ``count`` frames of ``video`` side by side, evenly spaced (a preview)."""
    import cv2

    info = media.probe(video)
    w, h = info.display_size
    size = media.working_size(info, max(2, round(height * w / h)))
    picks = sorted({round(i * (info.frame_count - 1) / max(1, count - 1)) for i in range(count)})
    frames = [next(iter(media.decode_frames(info, i, i + 1, size))) for i in picks]
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.hstack(frames), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"{video}: could not encode the preview")
    return png.tobytes()


def assemble_output(job: RenderJob, *, preview: bool = True) -> str | None:
    """Concatenate the segments, mux the source's audio and subtitles, write the output (atomically,
    local or s3://) and its preview PNG beside it. Returns the preview's URI (or None).

    An image-sequence delivery (png, tiff, exr) writes its folder of images, WAVs and manifest
    (``pipeline.image_sequence``) from the concatenated lossless segments instead."""
    src = node_source(job)
    store = chunk_store(job)
    delivery = job.cfg.delivery()
    out_store, out_key = open_object(job.output_uri, job.s3)
    local_out = out_store.local_path(out_key)
    with tempfile.TemporaryDirectory(prefix="filmstyle-assemble-") as tmp:
        segments = store.fetch_segments(job.plan.chunks, tmp)
        if delivery.sequence:
            video = os.path.join(tmp, "sequence.mkv")
            media.assemble(segments, video, source=None, fps=src.info.fps, audio=False, subtitles=False)
            folder = local_out or os.path.join(tmp, Path(out_key).name)
            write_sequence(video, folder, source=src.info, delivery=delivery, fps=src.info.fps,
                           frames=job.plan.frame_count)
            png = contact_strip(video) if preview else None
            if local_out is None:  # the manifest last: a reader that finds it finds every file
                names = sorted(os.listdir(folder), key=lambda n: n == SEQUENCE_MANIFEST)
                for name in names:
                    out_store.put_file(f"{out_key.rstrip('/')}/{name}", os.path.join(folder, name))
        else:
            target = local_out or os.path.join(tmp, f"output{Path(out_key).suffix}")
            media.assemble(segments, target, source=src.info, fps=src.info.fps)
            png = contact_strip(target) if preview else None
            if local_out is None:
                out_store.put_file(out_key, target)
    if png is None:
        return None
    out_store.put(f"{out_key}.preview.png", png)
    return f"{job.output_uri}.preview.png"


def finish_work(job: RenderJob) -> None:
    """Remove the work folder (segments, states, markers) unless --keep-work."""
    if not job.cfg.keep_work:
        clear(job.work())
