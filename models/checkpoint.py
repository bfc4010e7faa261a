"""Style checkpoints: safetensors files with a JSON model card, and the shipped-style registry.

A checkpoint is never unpickled. The architecture travels in the safetensors
metadata (``filmstyle.card``), so any checkpoint loads without side files; a
``NAME.json`` beside a shipped checkpoint holds the same card for people.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from pipeline.errors import InputError

from .transformer import TransformerConfig, TransformerNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CARD_KEY = "filmstyle.card"
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def file_digest(path: str | Path, length: int = 16) -> str:
    from pipeline.hashing import file_hash

    return file_hash(path, "sha256", length)


def save_style_model(path: str | Path, net: TransformerNet, card: dict, *, dtype=torch.float16) -> Path:
    """Write weights (fp16 by default) + card atomically; also write the card as ``.json`` beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card = dict(card, architecture=net.config.to_dict(), dtype=str(dtype).removeprefix("torch."))
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in net.state_dict().items()}
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={CARD_KEY: json.dumps(card, sort_keys=True)})
    os.chmod(tmp, 0o644)  # safetensors creates files 0600; checkpoints are meant to be shared
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path


def _check_safetensors_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise InputError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    if any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise InputError(
            f"{path}: this is a pickle-based (torch.save) file; filmstyle never unpickles checkpoints "
            "- convert it to .safetensors"
        )
    if len(head) < 9:
        raise InputError(f"{path}: not a safetensors checkpoint (file too short)")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len > os.path.getsize(path):
        raise InputError(f"{path}: not a safetensors checkpoint (bad header)")


def read_card(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path}: corrupt safetensors checkpoint ({e})") from None
    if CARD_KEY not in meta:
        raise InputError(f"{path}: safetensors file without a filmstyle model card (not a style checkpoint)")
    return json.loads(meta[CARD_KEY])


def load_style_model(path: str | Path, device: str = "cpu") -> tuple[TransformerNet, dict]:
    """Load a checkpoint as an fp32 eval-mode net; every failure is one clear InputError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    card = read_card(path)
    try:
        config = TransformerConfig.from_dict(card["architecture"])
        net = TransformerNet(config)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: model card has an unknown architecture ({e})") from None
    try:
        state = load_file(str(path), device=device)
    except Exception as e:
        raise InputError(f"{path}: corrupt safetensors checkpoint ({e})") from None
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or bad_shape:
        detail = (missing or extra or bad_shape)[0]
        raise InputError(
            f"{path}: weights do not match the architecture in its card "
            f"({len(missing)} missing, {len(extra)} unexpected, {len(bad_shape)} mis-shaped, e.g. {detail})"
        )
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.to(device).eval()
    return net, card


def shipped_styles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def shipped_variant(name: str, folder: str) -> Path | None:
    """The net of shipped style ``name`` kept in ``weights/FOLDER/`` (a method's own net), if shipped."""
    p = WEIGHTS_DIR / folder / f"{name}.safetensors"
    return p if p.is_file() else None
