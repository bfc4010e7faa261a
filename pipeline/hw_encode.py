"""Hardware video encoding: NVENC where the machine has it, x264/x265 everywhere else.

On a GPU node the net takes milliseconds a frame and x264 at the delivery size becomes the render's
speed limit (52 ms of CPU a 1280x720 frame at preset medium, README "Benchmarks"); NVENC encodes on
the GPU's own encoder block and leaves the node's cores free. ffmpeg builds commonly list
``h264_nvenc`` and ``hevc_nvenc`` (imageio-ffmpeg's static build does) whether or not a driver is
present, so "listed" is not "works": a two-frame trial encode decides, once per process.

``--encoder`` takes ``auto`` (NVENC when the render runs on CUDA and the trial passes, else software),
``software`` (x264/x265, the same bits on every machine) or ``nvenc`` (an error where it cannot run).
The choice is resolved on the head and travels to the workers in the ``Delivery``, so every segment
of a render comes from the same encoder and the segments concatenate by stream copy.
"""
from __future__ import annotations

import functools
import re
import subprocess

from .errors import InputError

ENCODERS = ("auto", "software", "nvenc")

#: NVENC encoder per codec, and the bit depths it takes here (h264_nvenc's 10-bit needs Ada or
#: newer; HEVC Main10 runs on every NVENC generation filmstyle's GPUs have). Others stay software.
NVENC = {"h264": ("h264_nvenc", (8,)), "h265": ("hevc_nvenc", (8, 10))}

#: pix_fmt NVENC takes for a 10-bit segment (it has no planar yuv420p10le input).
NVENC_PIX_FMT = {8: "yuv420p", 10: "p010le"}


def nvenc_fits(codec: str, depth: int) -> bool:
    """Whether NVENC encodes ``codec`` at ``depth`` bits (``NVENC``)."""
    return codec in NVENC and depth in NVENC[codec][1]


def nvenc_options(crf: int) -> dict:
    """NVENC's constant-quality mode at the software encoder's CRF number.

    ``cq`` is NVENC's quality target on the same QP-like scale as x264's CRF (lower is better); the
    two are not bit-for-bit equivalent, which is why ``software`` stays the default off the GPU and
    ``benchmarks/gpu_check.py`` measures size and PSNR of both on the same frames. p5 with the hq
    tune is NVENC's slower, better half (p1 fastest, p7 slowest); spatial AQ as x264's default AQ.
    """
    return {"preset": "p5", "tune": "hq", "rc": "vbr", "cq": crf, "b:v": 0, "spatial-aq": 1}


@functools.lru_cache(maxsize=None)
def nvenc_status(codec: str, ffmpeg: str | None = None) -> tuple[bool, str]:
    """(works, why not): NVENC of ``codec`` listed by this ffmpeg and a trial encode passes."""
    from .ffmpeg_tools import ffmpeg_binary

    if codec not in NVENC:
        return False, f"NVENC does not encode {codec} (h264 and h265 only)"
    exe = ffmpeg or ffmpeg_binary()
    encoder = NVENC[codec][0]
    try:
        listed = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30).stdout
        if encoder not in listed:
            return False, f"{exe} has no {encoder}"
        opts = [a for k, v in nvenc_options(18).items() for a in (f"-{k}", str(v))]  # the options a render uses
        trial = subprocess.run([exe, "-hide_banner", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=256x144:r=25",
                                "-frames:v", "2", "-c:v", encoder, *opts, "-f", "null", "-"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{exe}: {e}"
    if trial.returncode != 0:
        return False, f"{encoder} does not run here ({_first_cause(trial.stderr, encoder) or f'exit {trial.returncode}'})"
    return True, ""


def _first_cause(stderr: str, encoder: str) -> str:
    """The encoder's own first complaint ("Cannot load libcuda.so.1"), not ffmpeg's closing lines."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    own = [ln for ln in lines if ln.startswith(f"[{encoder} @")] or lines
    return re.sub(r"^\[[^]]*\]\s*", "", own[0]) if own else ""


def resolve_encoder(spec: str, codec: str, depth: int, device: str) -> str:
    """``auto`` | ``software`` | ``nvenc`` -> ``software`` or ``nvenc`` for this render."""
    if spec not in ENCODERS:
        raise InputError(f"unknown encoder {spec!r}; choose from {', '.join(ENCODERS)}")
    if spec == "software":
        return "software"
    fits = nvenc_fits(codec, depth)
    if spec == "auto":
        # Off CUDA the workers may be CPU nodes without an encoder block: software, the same everywhere.
        return "nvenc" if device.startswith("cuda") and fits and nvenc_status(codec)[0] else "software"
    if not fits:
        raise InputError(f"--encoder nvenc encodes h264 (8-bit) and h265 (8- or 10-bit), not {codec} at {depth} bits")
    works, why = nvenc_status(codec)
    if not works:
        raise InputError(f"--encoder nvenc: {why}; use --encoder software (x264/x265)")
    return "nvenc"
