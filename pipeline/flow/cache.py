"""The flow cache: content-addressed ``FlowPair``s over a Storage, and batch computation into it.

``FlowCache`` keys, stores and verifies entries; ``compute_flows`` fills a cache for one chunk's
pairs (the unit of parallel work); ``CachedFlowSource`` is the stylizer's view of the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np

from .backends import FlowBackend, _bidirectional
from .codec import FORMAT_VERSION, CorruptEntry, decode_pair, encode_pair
from .masks import FlowPair, compute_pair, pair_from_flows

if TYPE_CHECKING:  # runtime needs nothing from these modules
    from ..media import VideoInfo
    from ..plan import RenderPlan
    from ..storage import Storage

log = logging.getLogger("pipeline.flow")  # the name it had before the package split: logging configs use it


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
        return decode_pair(self.store(key, pair))

    def store(self, key: str, pair: FlowPair) -> bytes:
        """Store ``pair``; returns the stored bytes (``put`` without the read-back)."""
        data = encode_pair(pair)
        self.storage.put(key, data)
        self._stats.bytes_written += len(data)
        return data

    def get_or_compute(self, t: int, compute_fn: Callable[[], FlowPair]) -> FlowPair:
        key = self.key(t)
        pair = self.get(key)
        return pair if pair is not None else self.put(key, compute_fn())

    def compute(self, backend: FlowBackend, prev: np.ndarray, cur: np.ndarray) -> FlowPair:
        """``compute_pair`` with this cache's mask options, after checking ``backend`` is the keyed one."""
        self._check_backend(backend)
        return compute_pair(backend, prev, cur, **self.mask_options)

    def flows(self, backend: FlowBackend, prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The forward and backward flow of ``compute``, without the mask (``pair_from_flows`` adds it)."""
        self._check_backend(backend)
        return _bidirectional(backend, prev, cur)

    def _check_backend(self, backend: FlowBackend) -> None:
        if backend_identity(backend) != self.backend_id:
            raise ValueError(f"backend {backend_identity(backend)} differs from the cache's {self.backend_id}")

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
    stored pair. Returns {"pairs", "computed", "cached"}.

    Each pair's flows are computed here while a thread makes the mask of the pair before and stores
    it: the mask (8 ms a 640x360 pair on one core) and the packed, compressed entry (6 ms) ran
    after DIS with the other core idle, 72 ms a pair in all with DIS medium; beside it, 40 ms
    (cockatoo clip, 2 cores; the README's throughput benchmark times the stage in a render).
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..media import decode_frames

    if (plan.source_hash, tuple(plan.working_size)) != (cache.source_hash, cache.size):
        raise ValueError("the flow cache was made for another source or working size than the plan")
    for a, b in pairs:
        if b != a + 1:
            raise ValueError(f"flow pair ({a}, {b}) is not a consecutive (t-1, t) pair")
    targets = {b for _, b in pairs}
    todo = sorted(t for t in targets if not cache.has(t))
    wanted = set(todo)
    done = 0

    def finish(t: int, flows: tuple[np.ndarray, np.ndarray]) -> None:
        cache.store(cache.key(t), pair_from_flows(*flows, **cache.mask_options))

    def land(future) -> None:
        nonlocal done
        future.result()
        done += 1
        if progress is not None:
            progress(done, len(todo))

    with ThreadPoolExecutor(1, thread_name_prefix="filmstyle-flow-store") as pool:
        pending = None  # the previous pair's store: at most one in flight, so memory stays flat
        try:
            for start, end in _frame_runs((t - 1, t) for t in todo):
                prev = None
                for t, frame in enumerate(decode_frames(source_info, start, end, plan.working_size), start):
                    if prev is not None and t in wanted:
                        flows = cache.flows(backend, prev, frame)
                        if pending is not None:
                            land(pending)
                        pending = pool.submit(finish, t, flows)
                    prev = frame
            if pending is not None:
                land(pending)
                pending = None
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
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
