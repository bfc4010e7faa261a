"""Flow backends: the ``FlowBackend`` protocol, each backend class, and the ``FLOW_BACKENDS`` registry.

OpenCV's DIS (the default) and Farneback, scikit-image's TV-L1 and ILK (independent judges for
``filmstyle eval``) and torchvision's RAFT (only with weights already on disk). A backend's name,
params and library version make up its identity in every flow cache key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import cv2
import numpy as np

from ..errors import InputError


class FlowBackend(Protocol):
    """Dense flow a -> b between two RGB uint8 frames of one size (see the conventions in ``pipeline.flow``)."""

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
        self._dis: dict = {}  # direction -> estimator (one per thread that uses it)

    def params(self) -> dict[str, Any]:
        return {"preset": self.preset}

    def _calc(self, a, b, direction: str = "forward"):
        dis = self._dis.get(direction)
        if dis is None:
            dis = self._dis[direction] = cv2.DISOpticalFlow_create(self.PRESETS[self.preset])
        return dis.calc(a, b, None)

    def bidirectional(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both directions at once, the backward one in a thread with its own estimator: DIS keeps
        to about one core (40.9 ms a 640x360 pair in series with 2 cores free, 27.6 ms so), and
        each direction is computed from the frames alone, so the flow is the same either way."""
        _same_shape(a, b)
        ga, gb = self._prepare(a), self._prepare(b)
        backward = _side_thread().submit(self._calc, gb, ga, "backward")
        try:
            forward = self._calc(ga, gb)
        finally:
            back = backward.result()
        return forward, back

    def __getstate__(self):  # cv2 objects do not pickle (Ray ships backends to workers)
        return {**self.__dict__, "_dis": {}}


_SIDE: list = []


def _side_thread():
    """One process-wide worker thread for the second direction of a flow pair."""
    if not _SIDE:
        from concurrent.futures import ThreadPoolExecutor

        _SIDE.append(ThreadPoolExecutor(1, thread_name_prefix="filmstyle-flow"))
    return _SIDE[0]


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
