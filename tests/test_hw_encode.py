"""NVENC when it runs, x264/x265 otherwise: the choice, the segment command, the clear refusals."""
from __future__ import annotations

import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from engine.config import RenderConfig
from pipeline import ffmpeg_tools as ft
from pipeline.delivery import Delivery
from pipeline.errors import InputError
from pipeline.hw_encode import nvenc_status, resolve_encoder

ROOT = Path(__file__).resolve().parents[1]


def _fake_ffmpeg(tmp_path: Path, name: str, listed: bool, trial_rc: int) -> str:
    """An ffmpeg stand-in: lists h264_nvenc or not, and its trial encode exits with ``trial_rc``."""
    exe = tmp_path / name
    exe.write_text("#!/bin/sh\n"
                   'case "$*" in *-encoders*) '
                   + ('echo " V....D h264_nvenc  NVIDIA NVENC H.264 encoder (codec h264)"; ' if listed else "")
                   + 'echo " V..... libx264  libx264 H.264"; exit 0;; esac\n'
                   f'[ {trial_rc} -ne 0 ] && echo "[h264_nvenc @ 0x1] Cannot load libcuda.so.1" >&2\n'
                   f"exit {trial_rc}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_listed_is_not_working_a_trial_encode_decides(tmp_path):
    assert nvenc_status("h264", _fake_ffmpeg(tmp_path, "works", True, 0)) == (True, "")
    ok, why = nvenc_status("h264", _fake_ffmpeg(tmp_path, "no_driver", True, 1))
    assert not ok and why.endswith("(Cannot load libcuda.so.1)")
    ok, why = nvenc_status("h264", _fake_ffmpeg(tmp_path, "not_built", False, 0))
    assert not ok and "has no h264_nvenc" in why
    assert not nvenc_status("prores")[0]


def test_auto_is_software_off_cuda_and_nvenc_fits_only_h264_and_h265():
    assert resolve_encoder("auto", "h264", 8, "cpu") == "software"
    assert resolve_encoder("auto", "prores", 10, "cuda") == "software"
    assert resolve_encoder("software", "h264", 8, "cuda") == "software"
    with pytest.raises(InputError, match="not prores"):
        resolve_encoder("nvenc", "prores", 10, "cuda")
    with pytest.raises(InputError, match="not h264 at 10 bits"):
        Delivery(codec="h264", bit_depth=10, encoder="nvenc")
    with pytest.raises(InputError, match="unknown encoder"):
        resolve_encoder("quicksync", "h264", 8, "cpu")
    assert RenderConfig("a.mp4", "b.mp4").delivery().segment_encoder()[0] == "libx264"  # auto before resolving


def test_the_nvenc_segment_command_and_the_work_key():
    cmd = " ".join(ft.encode_cmd("seg.mp4", Fraction(24), (320, 180), Delivery(encoder="nvenc", crf=20)))
    assert "-c:v h264_nvenc" in cmd and "-cq 20" in cmd and "-pix_fmt yuv420p" in cmd
    assert "-crf" not in cmd and "medium" not in cmd  # x264's options are not NVENC's
    cmd = " ".join(ft.encode_cmd("seg.mp4", Fraction(24), (320, 180), Delivery(codec="h265", bit_depth=10,
                                                                               encoder="nvenc")))
    assert "-c:v hevc_nvenc" in cmd and "-pix_fmt p010le" in cmd and "-tag:v hvc1" in cmd and "x265" not in cmd
    # software leaves the work key as it was before the encoder was a setting; nvenc changes it
    assert "encoder" not in Delivery().to_dict() and Delivery(encoder="nvenc").to_dict()["encoder"] == "nvenc"


@pytest.mark.skipif(nvenc_status("h264")[0], reason="NVENC works on this machine")
def test_asking_for_nvenc_where_it_cannot_run_fails_in_one_line(tmp_path, media_clip):
    proc = subprocess.run([sys.executable, "-m", "cli", "render", str(media_clip("main.mp4")), "-o",
                           str(tmp_path / "out.mp4"), "--encoder", "nvenc"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--encoder nvenc" in proc.stderr and "--encoder software" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out.mp4").exists()
