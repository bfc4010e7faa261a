"""The on-disk format of a ``FlowPair``: ``encode_pair`` / ``decode_pair`` and ``CorruptEntry``.

A fixed header (magic, version, size, quantization scales, payload length, SHA-256) and a
compressed payload of predicted, zigzagged, byte-shuffled int16 flow quanta plus a uint8 mask.
The header's version names the compressor (1: zlib, 2: zstd); both decode to the same pair, so
``FORMAT_VERSION``, the quantization's version and part of every cache key, does not change with it.
"""
from __future__ import annotations

import functools
import hashlib
import math
import struct
import zlib
from typing import Callable

import numpy as np

from .masks import FlowPair


#: Bump when the stored values or the meaning of a cached entry change (it is in every key).
FORMAT_VERSION = 1
_MAGIC = b"FSFLOW"
# magic, compressor version, height, width, forward scale, backward scale, payload bytes, sha256(payload)
_HEADER = struct.Struct("<6sHIIffQ32s")
#: Flow is stored in steps of 1/32 px (max error 1/64 px, 30-100x below DIS's own error).
_SCALE = 32.0
# Compressors by header version. zstd level 1 on 640x360 DIS pairs (cockatoo clip, one core): 2.9 ms
# to compress, 1.9 ms to decompress, 250 kB; zlib level 1 took 9.8 ms, 4.6 ms and 296 kB (level 6:
# 73 ms and 235 kB, more than DIS itself). zlib stays readable, and is written where the zstandard
# wheel is missing (a bare GPU machine).
_ZLIB, _ZSTD = 1, 2


@functools.lru_cache(maxsize=None)  # once per process: an entry is written per frame pair
def _zstd():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _compress(raw: bytes) -> tuple[int, bytes]:
    zstd = _zstd()
    if zstd is None:
        return _ZLIB, zlib.compress(raw, 1)
    return _ZSTD, zstd.ZstdCompressor(level=1).compress(raw)


def _decompressor(version: int) -> Callable[[bytes], bytes]:
    if version == _ZLIB:
        return zlib.decompress
    zstd = _zstd()
    if zstd is None:
        raise CorruptEntry("a zstd flow entry needs the zstandard package (pip install zstandard)")
    return zstd.ZstdDecompressor().decompress


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
    """Bytes of a FlowPair: header (magic, compressor, shape, scales, length, sha256) + payload.

    Flows are quantized to 1/32 px (coarser only beyond +-1024 px); the mask to 1/255.
    """
    h, w = pair.mask.shape
    if pair.forward.shape != (h, w, 2) or pair.backward.shape != (h, w, 2):
        raise ValueError("FlowPair arrays differ in size")
    sf, sb = _quant_scale(pair.forward), _quant_scale(pair.backward)
    mask = np.rint(np.clip(pair.mask, 0, 1) * 255).astype(np.uint8)
    raw = _pack_flow(pair.forward, sf) + _pack_flow(pair.backward, sb) + mask.tobytes()
    version, payload = _compress(raw)
    header = _HEADER.pack(_MAGIC, version, h, w, sf, sb, len(payload), hashlib.sha256(payload).digest())
    return header + payload


def decode_pair(data: bytes, size: tuple[int, int] | None = None) -> FlowPair:
    """Inverse of ``encode_pair``; CorruptEntry on any mismatch (or a size other than ``size`` = (w, h))."""
    if len(data) < _HEADER.size:
        raise CorruptEntry(f"{len(data)} bytes is shorter than the header")
    magic, version, h, w, sf, sb, n, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC or version not in (_ZLIB, _ZSTD):
        raise CorruptEntry(f"bad magic or version ({magic!r}, {version})")
    if size is not None and (w, h) != tuple(size):
        raise CorruptEntry(f"stored size {w}x{h}, expected {size[0]}x{size[1]}")
    payload = data[_HEADER.size:]
    if len(payload) != n or hashlib.sha256(payload).digest() != digest:
        raise CorruptEntry(f"payload of {len(payload)} bytes (expected {n}) fails its checksum")
    plane = h * w * 4  # bytes of one packed flow
    try:
        raw = _decompressor(version)(payload)
    except CorruptEntry:
        raise
    except Exception as e:  # zlib.error, zstandard.ZstdError
        raise CorruptEntry(f"payload does not decompress ({e})") from None
    if len(raw) != 2 * plane + h * w:
        raise CorruptEntry(f"payload holds {len(raw)} bytes, expected {2 * plane + h * w}")
    forward = _unpack_flow(raw[:plane], h, w, sf)
    backward = _unpack_flow(raw[plane:2 * plane], h, w, sb)
    mask = np.frombuffer(raw, np.uint8, offset=2 * plane).reshape(h, w).astype(np.float32) / 255
    return FlowPair(forward, backward, mask)
