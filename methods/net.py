"""``NetRunner``: a loaded transform net and how to run it (device, precision, batch, stroke scale).

Every method runs its nets through ``NetRunner.apply`` (tensors) or ``__call__`` (uint8 frames),
so device placement, autocast and the stroke scale are written once. On CUDA the frames travel
as uint8 (a quarter of the bytes of float) from pinned host memory with non-blocking copies.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from models.inference import for_inference
from pipeline.errors import InputError

from .base import Method, RunSettings

MAX_FRAME_THREADS = 8


def configure_threads(threads: int | None) -> int:
    """Use every core (or the given count) for intra-op parallelism; returns the count set."""
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-like (antialiased) down, bicubic up: neither aliases strokes nor blurs them more than needed."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] * size[1] < x.shape[-2] * x.shape[-1]
    return torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear" if down else "bicubic",
                                           antialias=down, align_corners=False)


def to_uint8(y: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 with round-half-up: every method's frames are quantised the same way.
    ``y`` is left as it is (``float()`` of a float32 tensor is the tensor itself: an in-place
    multiply scaled the distillation's training frames by 255 behind its back)."""
    return y.float().mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)


def to_uint16(y: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> 16-bit values (as int32: torch has no uint16 arithmetic), round-half-up."""
    return y.float().mul(65535.0).add_(0.5).clamp_(0, 65535).to(torch.int32)


class NetRunner:
    """A loaded transform net and how to run it.

    ``style_scale`` s: the net sees the frame at 1/s of the working size and its output is
    resized back. A net paints strokes of a fixed size in pixels (the painting's, at the size
    it trained on), so at s = 2 they cover twice the share of the frame; the frame size is kept.
    """

    def __init__(self, model_path: str | Path, run: RunSettings = RunSettings()):
        from models.checkpoint import file_digest, load_style_model

        if run.precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"unknown precision {run.precision!r} (fp32, bf16 or fp16)")
        if run.precision == "fp16" and not run.device.startswith("cuda"):
            raise InputError("fp16 runs on CUDA only; on a CPU use fp32 or bf16")
        if not 0.25 <= float(run.style_scale) <= 8:
            raise InputError(f"style scale must be between 0.25 and 8, not {run.style_scale}")
        self.net, self.card = load_style_model(model_path, device=run.device)
        self.model_hash = file_digest(model_path)
        self.device, self.batch = run.device, max(1, int(run.batch))
        self.precision, self.style_scale = run.precision, float(run.style_scale)
        self.cuda = self.device.startswith("cuda")
        # bf16 runs the whole net in bf16 (no casts around every layer); fp16 keeps autocast, whose
        # fp32 islands guard its narrow range
        self.net = for_inference(self.net, "bf16" if self.precision == "bf16" else "fp32")
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        # a CPU runs independent frames side by side (``__call__``), at most MAX_FRAME_THREADS:
        # each holds a frame's activations
        self.cores = torch.get_num_threads()
        self.frame_threads = 1 if self.cuda else max(1, min(self.cores, MAX_FRAME_THREADS))
        self._pool: ThreadPoolExecutor | None = None

    def params(self) -> dict:
        """What of the running changes the output (a scale of 1 is left out: keys from before it stay valid)."""
        return {"precision": self.precision, **({"style_scale": self.style_scale} if self.style_scale != 1 else {})}

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A host tensor on the net's device (pinned and non-blocking on CUDA)."""
        if not self.cuda:
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    @torch.inference_mode()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] on the device -> (N, 3, H, W) stylized, at the stroke scale."""
        size = tuple(x.shape[-2:])
        if self.style_scale != 1:
            x = _resize(x, (max(4, round(size[0] / self.style_scale)), max(4, round(size[1] / self.style_scale))))
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.float16,
                            enabled=self.precision == "fp16"):
            y = self.net.stylize(x.to(self.dtype)).float()
        return _resize(y, size).clamp_(0, 1) if self.style_scale != 1 else y

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W, 3) uint8, in batches of ``self.batch``; uint16 frames (a
        deep source for a deep delivery) come back uint16: the net runs in float either way.

        The frames are independent, so on a CPU they go to ``frame_threads`` threads at once, each
        net call on one core: the full net at 640x360 in bf16 ran 5.18 fps so against 4.32 fps with
        both cores on one frame (medians of five alternating runs, AMD EPYC, 2 cores; the layers
        between the convolutions gain little from a second core). Frames are the same either way
        (thread counts do not change them: models/transformer.py)."""
        out = np.empty_like(frames)
        starts = range(0, len(frames), self.batch)
        if self.frame_threads > 1 and len(starts) > 1:
            for _ in self._frame_pool().map(lambda i: self._part(frames, out, i), starts):
                pass
            # PyTorch keeps the last count set in any thread for threads started later (the upscale
            # and encode threads): give them this thread's
            torch.set_num_threads(self.cores)
        else:
            for i in starts:
                self._part(frames, out, i)
        return out

    def _part(self, frames: np.ndarray, out: np.ndarray, i: int) -> None:
        deep = frames.dtype == np.uint16
        with torch.inference_mode():
            part = frames[i:i + self.batch]
            # torch has no uint16 arithmetic: 16-bit frames go over as int32
            x = self.to_device(torch.from_numpy(part.astype(np.int32) if deep else part))
            x = x.permute(0, 3, 1, 2).float().div_(65535.0 if deep else 255.0)
            y = self.apply(x.contiguous(memory_format=torch.channels_last))
            y = to_uint16(y) if deep else to_uint8(y)
            out[i:i + self.batch] = y.permute(0, 2, 3, 1).cpu().numpy()

    def _frame_pool(self):
        if self._pool is None:
            per = max(1, self.cores // self.frame_threads)
            self._pool = ThreadPoolExecutor(self.frame_threads, thread_name_prefix="filmstyle-net",
                                            initializer=_intra_op_threads, initargs=(per,))
        return self._pool


def _intra_op_threads(n: int) -> None:
    """This thread's intra-op thread count. PyTorch sets a thread's count from the process-wide one
    at its first op; reading it first makes that happen now, so the count set here stays."""
    torch.get_num_threads()
    torch.set_num_threads(n)


class NetMethod(Method):
    """A method that runs one style net: loads it, reports its card, keys the work by its hash.

    Subclasses add what their options change to ``option_params``.
    """

    #: Where a flow method's steps between the net's calls (the warp, flow-blend's blend) run: None,
    #: on the net's device unless that is the CPU (torch on a GPU, ``on_device``; NumPy/OpenCV on
    #: a CPU, where they are faster); True or False forces it (the tests run the torch path on a CPU).
    flow_steps_on_device: bool | None = None

    def __init__(self, style_path: str | Path, run: RunSettings = RunSettings()):
        self.run = NetRunner(style_path, run)
        self.model_hash = self.run.model_hash

    @property
    def on_device(self) -> bool:
        """Whether the flow steps run in torch on the net's device (``flow_steps_on_device``)."""
        return self.flow_steps_on_device if self.flow_steps_on_device is not None else self.run.device != "cpu"

    @property
    def card(self) -> dict:
        return self.run.card

    @property
    def exposure_blind(self) -> bool:
        """Whether the net paints every exposure at one level (pipeline.exposure): a net that
        normalises its first layer per frame (instance norm) cannot see how bright the frame is.
        The nets without normalisation (the students, the first flow-recurrent nets) follow the
        exposure in part by themselves (starry_night's student: output luminance 0.46 -> 0.18 as
        the input goes 0.56 -> 0.02) and are left as they paint. Instance norm at the inner
        resolutions only ("instance-inner") is blind as well: a student with it gave 0.414 at full
        exposure and 0.399 at 0.03 (four BSDS test photos)."""
        return self.run.net.config.norm in ("instance", "instance-inner")

    def option_params(self) -> dict:
        return {}

    def params(self) -> dict:
        return {"method": self.name, "model": self.model_hash, **self.run.params(), **self.option_params()}
