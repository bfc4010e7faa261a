"""Upscalers: working resolution -> delivery resolution.

Stylization runs at a working width (style strokes keep their size and the net
stays fast); frames are then resized to the delivery size. Each upscaler is a
small class registered by name, so a learned super-resolution model lands as
one more entry: the factory hands every upscaler the device the render's nets run
on and its options (weights, tile size...), which the resizers here do not need.
"""
from __future__ import annotations

from typing import Callable, Protocol

import cv2
import numpy as np


class Upscaler(Protocol):
    name: str

    def __init__(self, *, device: str = "cpu", **options): ...

    def __call__(self, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(N, h, w, 3) uint8 -> (N, H, W, 3) uint8 with size = (W, H)."""
        ...


UPSCALERS: dict[str, Callable[..., Upscaler]] = {}


def register(name: str):
    def deco(cls):
        cls.name = name
        UPSCALERS[name] = cls
        return cls
    return deco


class _CV2Resize:
    interpolation = cv2.INTER_LINEAR

    def __init__(self, *, device: str = "cpu", **options):
        from .errors import InputError

        if options:  # an OpenCV resize has nothing to set: a typo must not pass silently
            raise InputError(f"upscaler {self.name} takes no options (got {', '.join(sorted(options))})")
        self.device = device  # OpenCV resizes on the CPU whatever the nets run on

    def __call__(self, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        if frames.shape[1:3] == (h, w):
            return frames
        out = np.empty((len(frames), h, w, 3), dtype=np.uint8)
        for i, f in enumerate(frames):
            cv2.resize(f, (w, h), dst=out[i], interpolation=self.interpolation)
        return out


@register("lanczos")
class Lanczos(_CV2Resize):
    interpolation = cv2.INTER_LANCZOS4


@register("bicubic")
class Bicubic(_CV2Resize):
    interpolation = cv2.INTER_CUBIC


@register("area")
class Area(_CV2Resize):
    """Best for delivery sizes below the working size."""

    interpolation = cv2.INTER_AREA


def upscaler_class(name: str):
    """The registered class of upscaler ``name``; one clear error for an unknown one."""
    from .errors import InputError

    if name not in UPSCALERS:
        raise InputError(f"unknown upscaler {name!r}; available: {', '.join(sorted(UPSCALERS))}")
    return UPSCALERS[name]


def make_upscaler(name: str, *, device: str = "cpu", **options) -> Upscaler:
    """The upscaler ``name`` for frames coming off ``device``, with its ``options``."""
    return upscaler_class(name)(device=device, **options)
