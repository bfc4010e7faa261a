"""Optical flow: backends, warping, occlusion masks and the compressed flow cache.

Conventions (used by every function here and by the stylizers and metrics)
--------------------------------------------------------------------------
* A flow is a float32 array (H, W, 2) in pixels, channel 0 = dx, channel 1 = dy,
  attached to the pixels of its *source* frame: a pixel x of frame a moves to
  x + flow(x) in frame b.
* For the pair (t-1, t): ``forward`` maps t-1 -> t (lives on frame t-1's pixels),
  ``backward`` maps t -> t-1 (lives on frame t's pixels). A pair is named by t.
* ``warp(image, flow)(x) = image(x + flow(x))``: backward warping with bilinear
  sampling, borders replicated. So
      warp(frame_t,     forward)  ~ frame_{t-1}   (frame t pulled into t-1's geometry)
      warp(output_{t-1}, backward) ~ output_t     (previous output pulled into t's geometry)
  The stylizers use the second form; the warping-error metric the first.
* ``FlowPair.mask`` is the reliability of frame t's pixels for that second form:
  1 where O_{t-1}(x + backward(x)) is a valid prediction of O_t(x), 0 where the
  pixel is disoccluded, on a motion boundary, or looks outside frame t-1.

Pixel coordinates are pixel centres (0 .. W-1), as in cv2.remap and in
``grid_sample(align_corners=True)``; both warps agree to float precision.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

import cv2
import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # runtime needs nothing from these modules
    import torch

    from .media import VideoInfo
    from .plan import RenderPlan
    from .storage import Storage

log = logging.getLogger(__name__)

__all__ = [
    "warp", "warp_torch", "resize_flow",
    "FlowBackend", "DISBackend", "FarnebackBackend", "TVL1Backend", "ILKBackend",
    "RAFTBackend", "FLOW_BACKENDS", "make_flow_backend",
    "in_frame", "consistency_mask", "reliability_mask", "FlowPair", "compute_pair",
    "FORMAT_VERSION", "CacheStats", "backend_identity", "FlowCache", "encode_pair", "decode_pair", "CorruptEntry",
    "compute_flows", "CachedFlowSource",
]


# --------------------------------------------------------------------------- warping

@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    xs.flags.writeable = ys.flags.writeable = False  # shared between calls
    return xs, ys


def _check_flow(flow: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[:2] != shape[:2]:
        raise ValueError(f"flow of shape {flow.shape} does not fit an image of shape {shape}")
    return np.asarray(flow, dtype=np.float32)


_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def warp(image: np.ndarray, flow: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Sample ``image`` (H, W) or (H, W, C), any C, at x + flow(x); borders replicated.

    ``interpolation`` "linear" (bilinear) or "cubic" (bicubic: sharper, for images
    that are warped again and again, where bilinear's blur compounds). Keeps the
    dtype of ``image`` for the dtypes cv2.remap supports (uint8 results are
    rounded); other dtypes come back as float32.
    """
    flow = _check_flow(flow, image.shape)
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
    if image.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        image = image.astype(np.float32)
    xs, ys = _pixel_grid(*image.shape[:2])
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]

    def remap(img: np.ndarray) -> np.ndarray:
        out = cv2.remap(img, map_x, map_y, _INTERPOLATION[interpolation], borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(img.shape)  # remap drops a trailing channel axis of size 1

    if image.ndim == 3 and image.shape[2] > 4:
        # Beyond 4 channels OpenCV quantizes positions to 1/32 px; groups of 4 stay exact.
        return np.concatenate([remap(np.ascontiguousarray(image[..., i:i + 4]))
                               for i in range(0, image.shape[2], 4)], axis=2)
    return remap(image)


def warp_torch(x: "torch.Tensor", flow: "torch.Tensor") -> "torch.Tensor":
    """``warp`` for tensors: x (N, C, H, W) sampled at pixel + flow, flow (N, 2, H, W) in pixels.

    Differentiable in both arguments (for temporal losses). With
    align_corners=True, normalised -1 and +1 are the centres of the first and
    last pixels, which is exactly cv2.remap's pixel-centre convention;
    padding "border" equals BORDER_REPLICATE for bilinear sampling.
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    if flow.shape != (n, 2, h, w):
        raise ValueError(f"flow of shape {tuple(flow.shape)} does not fit a tensor of shape {tuple(x.shape)}")
    # Half types cannot hold pixel coordinates (bf16 is 4 px coarse at x = 640): sample in float32.
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    flow = flow.to(dtype)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=x.device),
                            torch.arange(w, dtype=dtype, device=x.device), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(x.dtype)


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flow resampled to ``size`` = (width, height), its vectors rescaled to the new pixel units."""
    h, w = flow.shape[:2]
    out = cv2.resize(flow, (int(size[0]), int(size[1])), interpolation=cv2.INTER_LINEAR)
    return out * np.array([size[0] / w, size[1] / h], dtype=np.float32)


# --------------------------------------------------------------------------- backends

class FlowBackend(Protocol):
    """Dense flow a -> b between two RGB uint8 frames of one size (see the module conventions)."""

    name: str
    version: str  # library version: part of every cache key

    def params(self) -> dict[str, Any]:
        ...

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ...


def _gray(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"flow backends take uint8 frames, got {frame.dtype}")
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"frames differ in size: {a.shape[:2]} vs {b.shape[:2]}")


class _GrayBackend:
    """Shared by the classical backends: they see grayscale frames, converted once per pair."""

    name = ""
    _prepare = staticmethod(_gray)  # frame -> what ``_calc`` takes

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _same_shape(a, b)
        return self._calc(self._prepare(a), self._prepare(b))

    def bidirectional(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flow a->b, flow b->a), converting each frame to grayscale once."""
        _same_shape(a, b)
        ga, gb = self._prepare(a), self._prepare(b)
        return self._calc(ga, gb), self._calc(gb, ga)

    def _calc(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class _Cv2Backend(_GrayBackend):
    """The OpenCV backends: lazily built (so picklable) estimators."""

    version = f"opencv-{cv2.__version__}"


class DISBackend(_Cv2Backend):
    """OpenCV's Dense Inverse Search (Kroeger et al. 2016): fast, good enough for temporal guidance."""

    name = "dis"
    PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}

    def __init__(self, preset: str = "medium"):
        if preset not in self.PRESETS:
            raise InputError(f"unknown DIS preset {preset!r}; choose one of {', '.join(self.PRESETS)}")
        self.preset = preset
        self._dis = None

    def params(self) -> dict[str, Any]:
        return {"preset": self.preset}

    def _calc(self, a, b):
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(self.PRESETS[self.preset])
        return self._dis.calc(a, b, None)

    def __getstate__(self):  # cv2 objects do not pickle (Ray ships backends to workers)
        return {**self.__dict__, "_dis": None}


class FarnebackBackend(_Cv2Backend):
    """OpenCV's Farneback polynomial-expansion flow: slower and blurrier than DIS; a baseline."""

    name = "farneback"

    # winsize 21 (OpenCV's example uses 15): lower EPE on our synthetic pans and on Sintel, same speed.
    def __init__(self, pyr_scale: float = 0.5, levels: int = 5, winsize: int = 21, iterations: int = 3,
                 poly_n: int = 5, poly_sigma: float = 1.2, gaussian: bool = False):
        if not 0 < pyr_scale < 1 or levels < 1 or winsize < 3 or iterations < 1 or poly_n not in (5, 7):
            raise InputError("Farneback needs 0 < pyr_scale < 1, levels >= 1, winsize >= 3, "
                             "iterations >= 1 and poly_n 5 or 7")
        self._params = {"pyr_scale": float(pyr_scale), "levels": int(levels), "winsize": int(winsize),
                        "iterations": int(iterations), "poly_n": int(poly_n),
                        "poly_sigma": float(poly_sigma), "gaussian": bool(gaussian)}

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def _calc(self, a, b):
        p = self._params
        flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if p["gaussian"] else 0
        return cv2.calcOpticalFlowFarneback(a, b, None, p["pyr_scale"], p["levels"], p["winsize"],
                                            p["iterations"], p["poly_n"], p["poly_sigma"], flags)


class _SkimageBackend(_GrayBackend):
    """The scikit-image backends: grayscale in [0, 1], (row, col) output turned into (dx, dy).

    They are slower than OpenCV's but come from other algorithm families, so
    they serve as independent judges of a render's temporal stability
    (``filmstyle eval``): Farneback, the other OpenCV method, misses the large
    motion of handheld close-ups (13 px/frame on the cockatoo clip, where it
    returns about 1 px and its consistency check passes).
    """

    FUNCTION = ""

    def __init__(self, **params: Any):
        try:
            import skimage
            import skimage.registration  # noqa: F401
        except ImportError:
            raise InputError(f"flow backend {self.name!r} needs scikit-image (pip install scikit-image)") from None
        self.version = f"skimage-{skimage.__version__}"
        self._params = params

    @staticmethod
    def _prepare(frame: np.ndarray) -> np.ndarray:
        return _gray(frame).astype(np.float32) / 255.0

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def _calc(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        from skimage import registration

        # skimage returns the flow that registers b onto a: a(x) ~ b(x + flow(x)), i.e. a -> b here.
        rows, cols = getattr(registration, self.FUNCTION)(a, b, **self._params)
        return np.ascontiguousarray(np.stack([cols, rows], axis=-1), dtype=np.float32)


class TVL1Backend(_SkimageBackend):
    """TV-L1 (Zach et al. 2007; Wedel et al. 2009): a global variational method, about 1 s a flow at 640x360."""

    name = "tvl1"
    FUNCTION = "optical_flow_tvl1"

    def __init__(self, num_warp: int = 5, num_iter: int = 10, attachment: float = 15.0):
        if num_warp < 1 or num_iter < 1 or attachment <= 0:
            raise InputError("TV-L1 needs num_warp >= 1, num_iter >= 1 and attachment > 0")
        super().__init__(num_warp=int(num_warp), num_iter=int(num_iter), attachment=float(attachment))


class ILKBackend(_SkimageBackend):
    """Iterative Lucas-Kanade with a Gaussian window, dense: about 0.6 s a flow at 640x360."""

    name = "ilk"
    FUNCTION = "optical_flow_ilk"

    def __init__(self, radius: int = 10, num_warp: int = 10):
        if radius < 1 or num_warp < 1:
            raise InputError("ILK needs radius >= 1 and num_warp >= 1")
        super().__init__(radius=int(radius), num_warp=int(num_warp))


class RAFTBackend:
    """torchvision's RAFT (Teed & Deng 2020), on the GPU when there is one.

    Only where torchvision is installed and its weights file is already on disk
    (``weights=PATH``, or torch hub's checkpoint folder where torchvision keeps
    downloads): nothing is ever downloaded.
    """

    name = "raft"
    MODELS = ("small", "large")

    def __init__(self, model: str = "small", weights: str | None = None, iters: int = 12,
                 device: str | None = None):
        if model not in self.MODELS:
            raise InputError(f"unknown RAFT model {model!r}; choose one of {', '.join(self.MODELS)}")
        try:
            import torchvision
            from torchvision.models import optical_flow
        except ImportError:
            raise InputError("flow backend 'raft' needs torchvision, which is not installed here; "
                             "use --flow dis (the default) or install torchvision and its RAFT weights") from None
        enum = optical_flow.Raft_Small_Weights if model == "small" else optical_flow.Raft_Large_Weights
        path = Path(weights) if weights else _hub_checkpoint(enum.DEFAULT.url)
        if not path.is_file():
            raise InputError(f"flow backend 'raft': weights {path} not found (never downloaded at run "
                             f"time); copy {enum.DEFAULT.url.rsplit('/', 1)[-1]} there or pass weights=PATH")
        self.model, self.iters, self.weights = model, int(iters), path
        self.device = device
        self.version = f"torchvision-{torchvision.__version__}"
        self._net = None

    def params(self) -> dict[str, Any]:
        return {"model": self.model, "weights": self.weights.name, "iters": self.iters}

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._run(a[None], b[None])[0]

    def bidirectional(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both directions in one batch of two."""
        fw, bw = self._run(np.stack([a, b]), np.stack([b, a]))
        return fw, bw

    def _run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        _same_shape(a[0], b[0])
        net, device = self._load()
        h, w = a.shape[1:3]
        pad = (0, -w % 8, 0, -h % 8)  # RAFT needs sides divisible by 8

        def prep(x):
            t = torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2).float()
            return F.pad(t / 127.5 - 1.0, pad, mode="replicate")

        with torch.inference_mode():
            flow = net(prep(a), prep(b), num_flow_updates=self.iters)[-1]
        return flow[:, :, :h, :w].permute(0, 2, 3, 1).float().cpu().numpy()

    def _load(self):
        import torch
        from torchvision.models import optical_flow

        if self._net is None:
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            net = optical_flow.raft_small() if self.model == "small" else optical_flow.raft_large()
            net.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
            self._net = (net.eval().to(device), device)
        return self._net

    def __getstate__(self):
        return {**self.__dict__, "_net": None}


def _hub_checkpoint(url: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


FLOW_BACKENDS: dict[str, Callable[..., FlowBackend]] = {
    "dis": DISBackend,
    "farneback": FarnebackBackend,
    "tvl1": TVL1Backend,
    "ilk": ILKBackend,
    "raft": RAFTBackend,
}


def make_flow_backend(name: str, **params: Any) -> FlowBackend:
    """A backend by registry name; InputError for an unknown name, bad params or a missing dependency."""
    try:
        factory = FLOW_BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown flow backend {name!r}; choose one of {', '.join(FLOW_BACKENDS)}") from None
    try:
        return factory(**params)
    except TypeError as e:  # unexpected keyword
        raise InputError(f"flow backend {name!r}: {e}") from None


def _bidirectional(backend: FlowBackend, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = getattr(backend, "bidirectional", None)
    return both(a, b) if both is not None else (backend(a, b), backend(b, a))


# --------------------------------------------------------------------------- occlusion

# Ruder et al.'s consistency rule (see DESIGN.md): relative and absolute tolerances.
_REL_TOL, _ABS_TOL = 0.01, 0.5
_MB_REL_TOL, _MB_ABS_TOL = 0.01, 0.002


def _passes(excess: np.ndarray, tol: float, soft: bool) -> np.ndarray:
    """Hard: excess <= tol. Soft: 2^(-excess/tol) for excess > 0, i.e. exactly 0.5 at the hard threshold."""
    if not soft:
        return (excess <= tol).astype(np.float32)
    return np.exp2(-np.maximum(excess, 0.0) / tol).astype(np.float32)


def _sq(v: np.ndarray) -> np.ndarray:
    return v[..., 0] ** 2 + v[..., 1] ** 2


def consistency_mask(flow: np.ndarray, reverse: np.ndarray, *, soft: bool = False,
                     motion_boundaries: bool = True) -> np.ndarray:
    """Reliability (H, W) float32 in [0, 1] of the pixels of ``flow``'s source frame.

    ``flow`` maps frame a -> b, ``reverse`` maps b -> a. A pixel x of frame a is
    unreliable if the round trip does not come back
    (|w + r|^2 > 0.01 (|w|^2 + |r|^2) + 0.5 with w = flow(x), r = reverse(x + w)),
    if it lies on a motion boundary of ``flow``
    (|grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002, central differences) or if
    x + w falls outside frame b. ``soft`` replaces the two thresholds by a
    smooth falloff that crosses 0.5 at them; out-of-frame pixels stay 0.
    """
    flow = _check_flow(flow, flow.shape)
    reverse = _check_flow(reverse, flow.shape)
    back = warp(reverse, flow)
    norms = _sq(flow)
    mask = _passes(_sq(flow + back) - _REL_TOL * (norms + _sq(back)), _ABS_TOL, soft)
    if motion_boundaries:
        du_dy, du_dx = np.gradient(flow[..., 0])
        dv_dy, dv_dx = np.gradient(flow[..., 1])
        grad = du_dx ** 2 + du_dy ** 2 + dv_dx ** 2 + dv_dy ** 2
        mask *= _passes(grad - _MB_REL_TOL * norms, _MB_ABS_TOL, soft)
    return mask * in_frame(flow)


def in_frame(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: x + flow(x) lies inside the frame (pixel centres 0 .. W-1, 0 .. H-1)."""
    h, w = flow.shape[:2]
    xs, ys = _pixel_grid(h, w)
    tx, ty = xs + flow[..., 0], ys + flow[..., 1]
    return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


def reliability_mask(forward: np.ndarray, backward: np.ndarray, *, soft: bool = False,
                     motion_boundaries: bool = True) -> np.ndarray:
    """Reliability of frame t's pixels for warping frame t-1 into frame t.

    ``forward`` maps t-1 -> t, ``backward`` t -> t-1; the backward flow (the
    one the warp uses) is checked against the forward flow. The mask for the
    other direction (frame t-1's pixels, used by the warping-error metric) is
    ``consistency_mask(forward, backward)``.
    """
    return consistency_mask(backward, forward, soft=soft, motion_boundaries=motion_boundaries)


@dataclass(frozen=True, eq=False)
class FlowPair:
    """Flow of the pair (t-1, t). Unpacks as ``forward, backward, mask = pair``."""

    forward: np.ndarray  # (H, W, 2) float32, t-1 -> t, on frame t-1's pixels
    backward: np.ndarray  # (H, W, 2) float32, t -> t-1, on frame t's pixels
    mask: np.ndarray  # (H, W) float32 in [0, 1]: reliability of frame t's pixels

    def __iter__(self):
        return iter((self.forward, self.backward, self.mask))


def compute_pair(backend: FlowBackend, prev: np.ndarray, cur: np.ndarray, *, soft: bool = False,
                 motion_boundaries: bool = True) -> FlowPair:
    """Forward and backward flow between frames t-1 (``prev``) and t (``cur``) and frame t's mask."""
    forward, backward = _bidirectional(backend, prev, cur)
    mask = reliability_mask(forward, backward, soft=soft, motion_boundaries=motion_boundaries)
    return FlowPair(forward.astype(np.float32, copy=False), backward.astype(np.float32, copy=False), mask)


# --------------------------------------------------------------------------- storage format

#: Bump when the stored format or the meaning of a cached entry changes (it is in every key).
FORMAT_VERSION = 1
_MAGIC = b"FSFLOW"
# magic, version, height, width, forward scale, backward scale, payload bytes, sha256(payload)
_HEADER = struct.Struct("<6sHIIffQ32s")
#: Flow is stored in steps of 1/32 px (max error 1/64 px, 30-100x below DIS's own error).
_SCALE = 32.0
_ZLIB_LEVEL = 6


class CorruptEntry(ValueError):
    """A stored flow entry failed its integrity check."""


def _quant_scale(flow: np.ndarray) -> float:
    """1/32 px steps, or a coarser power of two if the flow would overflow int16."""
    peak = float(np.abs(flow).max(initial=0.0))
    if not math.isfinite(peak):
        raise ValueError("flow contains NaN or infinity")
    scale = _SCALE
    while peak * scale > 32767:
        scale /= 2
    return scale


def _pack_flow(flow: np.ndarray, scale: float) -> bytes:
    """int16 quanta, planar, planar predictor (left + up - upleft), zigzag, byte-shuffled.

    Flow is piecewise smooth, so the residuals are mostly tiny: with zlib this
    is 3-4x smaller than float16 + zlib (measured on real clips).
    Arithmetic wraps modulo 2^16 both ways, so it is exact for any int16 input.
    """
    q = np.ascontiguousarray(np.rint(flow * scale).astype(np.int16).transpose(2, 0, 1))
    r = np.diff(q, axis=1, prepend=np.zeros_like(q[:, :1]))
    r = np.diff(r, axis=2, prepend=np.zeros_like(r[:, :, :1]))
    z = np.ascontiguousarray(((r << 1) ^ (r >> 15)).view(np.uint16), dtype="<u2")
    return np.ascontiguousarray(z.view(np.uint8).reshape(-1, 2).T).tobytes()


def _unpack_flow(data: bytes, h: int, w: int, scale: float) -> np.ndarray:
    z = np.frombuffer(data, np.uint8).reshape(2, -1).T.copy().view("<u2").reshape(2, h, w)
    r = (z >> 1).astype(np.int16) ^ -(z & 1).astype(np.int16)
    q = np.cumsum(np.cumsum(r, axis=2, dtype=np.int16), axis=1, dtype=np.int16)
    return np.ascontiguousarray(q.transpose(1, 2, 0), dtype=np.float32) / np.float32(scale)


def encode_pair(pair: FlowPair) -> bytes:
    """Bytes of a FlowPair: header (magic, version, shape, scales, length, sha256) + zlib payload.

    Flows are quantized to 1/32 px (coarser only beyond +-1024 px); the mask to 1/255.
    """
    h, w = pair.mask.shape
    if pair.forward.shape != (h, w, 2) or pair.backward.shape != (h, w, 2):
        raise ValueError("FlowPair arrays differ in size")
    sf, sb = _quant_scale(pair.forward), _quant_scale(pair.backward)
    mask = np.rint(np.clip(pair.mask, 0, 1) * 255).astype(np.uint8)
    raw = _pack_flow(pair.forward, sf) + _pack_flow(pair.backward, sb) + mask.tobytes()
    payload = zlib.compress(raw, _ZLIB_LEVEL)
    header = _HEADER.pack(_MAGIC, FORMAT_VERSION, h, w, sf, sb, len(payload), hashlib.sha256(payload).digest())
    return header + payload


def decode_pair(data: bytes, size: tuple[int, int] | None = None) -> FlowPair:
    """Inverse of ``encode_pair``; CorruptEntry on any mismatch (or a size other than ``size`` = (w, h))."""
    if len(data) < _HEADER.size:
        raise CorruptEntry(f"{len(data)} bytes is shorter than the header")
    magic, version, h, w, sf, sb, n, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != FORMAT_VERSION:
        raise CorruptEntry(f"bad magic or version ({magic!r}, {version})")
    if size is not None and (w, h) != tuple(size):
        raise CorruptEntry(f"stored size {w}x{h}, expected {size[0]}x{size[1]}")
    payload = data[_HEADER.size:]
    if len(payload) != n or hashlib.sha256(payload).digest() != digest:
        raise CorruptEntry(f"payload of {len(payload)} bytes (expected {n}) fails its checksum")
    plane = h * w * 4  # bytes of one packed flow
    try:
        raw = zlib.decompress(payload)
    except zlib.error as e:
        raise CorruptEntry(f"payload does not decompress ({e})") from None
    if len(raw) != 2 * plane + h * w:
        raise CorruptEntry(f"payload holds {len(raw)} bytes, expected {2 * plane + h * w}")
    forward = _unpack_flow(raw[:plane], h, w, sf)
    backward = _unpack_flow(raw[plane:2 * plane], h, w, sb)
    mask = np.frombuffer(raw, np.uint8, offset=2 * plane).reshape(h, w).astype(np.float32) / 255
    return FlowPair(forward, backward, mask)


# --------------------------------------------------------------------------- cache

@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # includes corrupt entries (they are recomputed)
    corrupt: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def backend_identity(backend: FlowBackend) -> dict[str, Any]:
    """What of a backend decides its output: name, params and library version."""
    return {"name": backend.name, "params": backend.params(), "version": getattr(backend, "version", "")}


class FlowCache:
    """Content-addressed FlowPairs of one source at one working size with one method, over a Storage.

    A key hashes (format version, OpenCV version, source content hash, t,
    working size, backend name/params/version, mask options): any change gives
    a new key, so stale entries are never read. ``backend`` only names the
    method; the cache never runs it.
    """

    def __init__(self, storage: "Storage", source_hash: str, size: tuple[int, int], backend: FlowBackend, *,
                 soft: bool = False, motion_boundaries: bool = True, prefix: str = "flow/"):
        self.storage = storage
        self.source_hash = source_hash
        self.size = (int(size[0]), int(size[1]))
        self.backend_id = backend_identity(backend)
        self.mask_options = {"soft": bool(soft), "motion_boundaries": bool(motion_boundaries)}
        self.prefix = prefix
        self._stats = CacheStats()
        self._warned: set[str] = set()

    def key(self, t: int) -> str:
        """Storage key of the pair (t-1, t)."""
        blob = json.dumps({"kind": "flow-pair", "format": FORMAT_VERSION, "opencv": cv2.__version__,
                           "source": self.source_hash, "t": int(t), "size": list(self.size),
                           "backend": self.backend_id, "mask": self.mask_options},
                          sort_keys=True, separators=(",", ":"))
        return f"{self.prefix}{self.source_hash[:16]}/{hashlib.sha256(blob.encode()).hexdigest()}"

    def has(self, t: int) -> bool:
        """Whether the pair (t-1, t) is stored (not verified: ``get`` checks integrity)."""
        return self.storage.exists(self.key(t))

    def get(self, key: str) -> FlowPair | None:
        """The stored pair, or None on a miss. A corrupt entry is logged (once), deleted and a miss."""
        try:
            data = self.storage.get(key)
        except KeyError:
            self._stats.misses += 1
            return None
        self._stats.bytes_read += len(data)
        try:
            pair = decode_pair(data, self.size)
        except CorruptEntry as e:
            self._drop_corrupt(key, e)
            return None
        self._stats.hits += 1
        return pair

    def put(self, key: str, pair: FlowPair) -> FlowPair:
        """Store ``pair``; returns it as it reads back (quantized), so hits and misses give equal results."""
        data = encode_pair(pair)
        self.storage.put(key, data)
        self._stats.bytes_written += len(data)
        return decode_pair(data)

    def get_or_compute(self, t: int, compute_fn: Callable[[], FlowPair]) -> FlowPair:
        key = self.key(t)
        pair = self.get(key)
        return pair if pair is not None else self.put(key, compute_fn())

    def compute(self, backend: FlowBackend, prev: np.ndarray, cur: np.ndarray) -> FlowPair:
        """``compute_pair`` with this cache's mask options, after checking ``backend`` is the keyed one."""
        if backend_identity(backend) != self.backend_id:
            raise ValueError(f"backend {backend_identity(backend)} differs from the cache's {self.backend_id}")
        return compute_pair(backend, prev, cur, **self.mask_options)

    def stats(self) -> CacheStats:
        return CacheStats(**self._stats.as_dict())

    def _drop_corrupt(self, key: str, err: Exception) -> None:
        self._stats.corrupt += 1
        self._stats.misses += 1
        if key not in self._warned:
            self._warned.add(key)
            log.warning("flow cache entry %s is corrupt (%s): deleted, will recompute", key, err)
        try:
            self.storage.delete(key)
        except KeyError:  # another worker deleted it first
            pass


# --------------------------------------------------------------------------- batch computation

def _frame_runs(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Contiguous frame ranges [start, end) covering every frame of ``pairs``, each frame once."""
    frames = sorted({f for pair in pairs for f in pair})
    runs: list[tuple[int, int]] = []
    for f in frames:
        if runs and runs[-1][1] == f:
            runs[-1] = (runs[-1][0], f + 1)
        else:
            runs.append((f, f + 1))
    return runs


def compute_flows(source_info: "VideoInfo", plan: "RenderPlan", pairs: Sequence[tuple[int, int]],
                  backend: FlowBackend, cache: FlowCache, *,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Fill ``cache`` with the pairs (t-1, t) it lacks; the unit of parallel work (one chunk's pairs).

    Frames are decoded at ``plan.working_size`` in contiguous runs, each needed
    frame once. Stored entries are trusted here (readers verify them and
    recompute a corrupt one). ``progress(done, total)`` is called after each
    computed pair. Returns {"pairs", "computed", "cached"}.
    """
    from .media import decode_frames

    if (plan.source_hash, tuple(plan.working_size)) != (cache.source_hash, cache.size):
        raise ValueError("the flow cache was made for another source or working size than the plan")
    for a, b in pairs:
        if b != a + 1:
            raise ValueError(f"flow pair ({a}, {b}) is not a consecutive (t-1, t) pair")
    targets = {b for _, b in pairs}
    todo = sorted(t for t in targets if not cache.has(t))
    wanted = set(todo)
    done = 0
    for start, end in _frame_runs((t - 1, t) for t in todo):
        prev = None
        for t, frame in enumerate(decode_frames(source_info, start, end, plan.working_size), start):
            if prev is not None and t in wanted:
                cache.put(cache.key(t), cache.compute(backend, prev, frame))
                done += 1
                if progress is not None:
                    progress(done, len(todo))
            prev = frame
    return {"pairs": len(targets), "computed": done, "cached": len(targets) - len(todo)}


class CachedFlowSource:
    """The stylizer's view of the flow: ``pair(t)`` -> FlowPair for (t-1, t), read from the cache.

    With ``backend`` and ``frames`` (a mapping or a function from absolute frame
    index to the RGB frame at the working size) a missing or corrupt pair is
    computed and stored; without them a miss raises KeyError.
    """

    def __init__(self, cache: FlowCache, backend: FlowBackend | None = None,
                 frames: Mapping[int, np.ndarray] | Callable[[int], np.ndarray] | None = None):
        self.cache = cache
        self.backend = backend
        self._frame = frames.__getitem__ if isinstance(frames, Mapping) else frames

    def pair(self, t: int) -> FlowPair:
        return self.cache.get_or_compute(t, lambda: self._compute(t))

    def _compute(self, t: int) -> FlowPair:
        if self.backend is None or self._frame is None:
            raise KeyError(f"flow for frames ({t - 1}, {t}) is not in the cache and no frames were given to compute it")
        return self.cache.compute(self.backend, self._frame(t - 1), self._frame(t))
