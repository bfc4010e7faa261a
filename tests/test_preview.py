"""filmstyle preview: a contact sheet of moments x styles and a side-by-side clip around a cut,
from a few seeks (never a decode of the whole film)."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from pipeline import media


@pytest.fixture(scope="module")
def clip(demo_clip_factory):
    return demo_clip_factory(("astronaut", "coffee", "chelsea", "rocket"), width=160, height=90, fps=Fraction(24))


def test_preview_writes_the_sheet_and_a_clip_around_a_cut(tmp_path, clip, tiny_styles, monkeypatch):
    from engine import preview as P

    def whole_film(*a, **k):
        raise AssertionError("preview decoded a frame range: it must only seek")

    monkeypatch.setattr(media, "decode_frames", whole_film)
    result = P.preview(clip, list(tiny_styles), str(tmp_path / "pv"), moments=3, width=96, clip_width=64,
                       clip_seconds=1.0, log=None)
    sheet = np.asarray(Image.open(result.sheet))
    assert sheet.shape == (3 * (54 + 4), 3 * (96 + 4), 3)  # 3 moments x (source + 2 styles)
    left, right = sheet[:54, :96].astype(int), sheet[:54, 100:196].astype(int)
    assert np.abs(left - right).mean() > 5  # a stylized tile, not the source again
    assert result.cut_s == pytest.approx(2.0, abs=0.05)  # cuts at 1, 2 and 3 s of 4: the middle one
    info = media.probe(result.clip)
    assert (info.width, info.height, info.frame_count, info.fps) == (128, 36, 24, Fraction(24))


def test_preview_cli_bad_input_is_one_line(tmp_path, clip):
    base = [sys.executable, "-m", "cli", "preview"]
    for args, message in (([str(tmp_path / "missing.mp4"), "--style", "mosaic"], "file not found"),
                          ([clip, "--style", "no_such_style"], "unknown style")):
        proc = subprocess.run(base + args + ["-o", str(tmp_path / "pv")], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("pv*"))


def test_a_student_column_is_labelled_with_its_method():
    from engine.preview import _column_label
    from models.checkpoint import shipped_styles, shipped_variant

    student = shipped_variant("starry_night", "distilled")
    assert _column_label(str(student)) == "starry_night (distilled)"
    assert _column_label(str(shipped_styles()["starry_night"])) == "starry_night"
    assert _column_label("starry_night") == "starry_night"
