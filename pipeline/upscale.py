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

from .depth import full_scale


class Upscaler(Protocol):
    name: str
    # True: __call__ wants ``guide``, the source frames at the delivery size (a second decode)
    needs_guide: bool

    def __init__(self, *, device: str = "cpu", **options): ...

    def __call__(self, frames: np.ndarray, size: tuple[int, int], guide: np.ndarray | None = None) -> np.ndarray:
        """(N, h, w, 3) uint8 -> (N, H, W, 3) uint8 with size = (W, H); uint16 in, uint16 out."""
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
    needs_guide = False

    def __init__(self, *, device: str = "cpu", **options):
        from .errors import InputError

        if options:  # an OpenCV resize has nothing to set: a typo must not pass silently
            raise InputError(f"upscaler {self.name} takes no options (got {', '.join(sorted(options))})")
        self.device = device  # OpenCV resizes on the CPU whatever the nets run on

    def __call__(self, frames: np.ndarray, size: tuple[int, int], guide: np.ndarray | None = None) -> np.ndarray:
        w, h = size
        if frames.shape[1:3] == (h, w):
            return frames
        out = np.empty((len(frames), h, w, 3), dtype=frames.dtype)  # uint8, or uint16 for a deep film
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


@register("guided")
class Guided(_CV2Resize):
    """Lanczos, plus the film's own detail where the stylized frame follows the film (Fast Guided
    Filter, He & Sun 2015, used for detail transfer).

    At the working size, a local linear model ``out ~ a * source + b`` (per output channel, on the
    source's luma, box radius ``RADIUS`` px, regulariser ``EPS``) says how much each region of the
    stylized frame follows the film's light and dark: ``a`` near 1 on an edge the style kept, near 0
    inside a brush stroke that paints over the film. The delivered frame is the lanczos upscale
    plus ``a`` (upsampled) times the detail the working size lost (the source at the delivery size
    minus its own upscaled working-size copy). Strokes keep their texture (the full guided filter,
    ``a * source + b``, box-blurs whatever the source does not explain: the strokes); edges the style
    kept get the film's full-resolution sharpness. The guide costs a second decode of the chunk at
    the delivery size.
    """

    interpolation = cv2.INTER_LANCZOS4
    needs_guide = True
    RADIUS = 4  # working-size pixels: a stroke's scale at 640 px
    EPS = 2e-3  # (0..1 units)^2: a region with luma std below ~0.045 counts as flat (a -> 0)

    def __call__(self, frames: np.ndarray, size: tuple[int, int], guide: np.ndarray | None = None) -> np.ndarray:
        w, h = size
        up = super().__call__(frames, size)
        if guide is None or frames.shape[1:3] == (h, w):
            return up
        if guide.shape[1:3] != (h, w) or len(guide) != len(frames):
            raise ValueError(f"guide frames {guide.shape} do not match {len(frames)} frames at {w}x{h}")
        lh, lw = frames.shape[1:3]
        k = (2 * self.RADIUS + 1,) * 2
        top = full_scale(frames)
        out = np.empty_like(up)
        for i, (p, g, u) in enumerate(zip(frames, guide, up)):
            g_hi = cv2.cvtColor(g, cv2.COLOR_RGB2GRAY).astype(np.float32) / full_scale(g)
            g_lo = cv2.resize(g_hi, (lw, lh), interpolation=cv2.INTER_AREA)
            detail = g_hi - cv2.resize(g_lo, (w, h), interpolation=self.interpolation)
            p = p.astype(np.float32) / top
            mean_g = cv2.boxFilter(g_lo, -1, k)
            var_g = cv2.boxFilter(g_lo * g_lo, -1, k) - mean_g * mean_g
            mean_p = cv2.boxFilter(p, -1, k)
            cov = cv2.boxFilter(p * g_lo[..., None], -1, k) - mean_p * mean_g[..., None]
            a = cv2.boxFilter(cov / (var_g[..., None] + self.EPS), -1, k)
            a_hi = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
            q = u.astype(np.float32) + top * a_hi * detail[..., None]
            out[i] = np.clip(q + 0.5, 0, top).astype(frames.dtype)
        return out


def upscaler_class(name: str):
    """The registered class of upscaler ``name``; one clear error for an unknown one."""
    from .errors import InputError

    if name not in UPSCALERS:
        raise InputError(f"unknown upscaler {name!r}; available: {', '.join(sorted(UPSCALERS))}")
    return UPSCALERS[name]


def make_upscaler(name: str, *, device: str = "cpu", **options) -> Upscaler:
    """The upscaler ``name`` for frames coming off ``device``, with its ``options``."""
    return upscaler_class(name)(device=device, **options)
