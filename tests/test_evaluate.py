"""`engine.evaluate`: warping error with an independent flow, seams, style loss, plot."""
from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from models.checkpoint import save_style_model
from models.transformer import TransformerConfig, TransformerNet
from engine import evaluate as E
from engine.config import RenderConfig
from engine.local import render
from pipeline.errors import InputError
from pipeline.synthetic import make_demo_clip


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    style = str(save_style_model(d / "s.safetensors", TransformerNet(TransformerConfig(8, 1, norm="instance", input_skip=False)), {"name": "s"}))
    clip = str(make_demo_clip(d / "clip.mp4", width=160, height=90, fps=Fraction(24), seconds_per_shot=1,
                              shots=("astronaut", "coffee")))
    out = {}
    for method in ("per-frame", "flow-blend"):
        cfg = RenderConfig(input=clip, output=str(d / f"{method}.mp4"), style=style, method=method, width=96,
                             chunk_frames=8, cache_dir=str(d / "cache"))
        out[method] = render(cfg, progress=False, log=lambda m: None)
    return clip, out


def test_blend_scores_better_and_seams_are_measured(renders, tmp_path):
    clip, reports = renders
    res = {m: E.evaluate(r.output, clip, width=96, shot_starts=[0, 24], chunk_starts=[0, 8, 16, 24, 32, 40])
           for m, r in reports.items()}
    assert 24 not in res["per-frame"].per_frame  # no pair across the cut
    assert len(res["per-frame"].per_frame) == 46
    assert res["flow-blend"].warping_error < 0.6 * res["per-frame"].warping_error
    seam = res["flow-blend"].seam
    assert seam["boundary"] > 0 and seam["interior"] > 0
    plot = tmp_path / "p.png"
    E.plot(res["flow-blend"], str(plot), shot_starts=[24], chunk_starts=[8, 16, 32, 40])
    assert plot.stat().st_size > 1000
    d = json.loads(res["flow-blend"].to_json())
    assert d["frames"] == 48 and d["flow_backend"] == "tvl1"


def test_judge_flow_is_cached_and_a_second_evaluation_computes_none(renders, tmp_path, monkeypatch):
    clip, reports = renders
    cache = str(tmp_path / "judge")
    first = E.evaluate(reports["per-frame"].output, clip, width=96, shot_starts=[0, 24], flow_cache=cache)
    stored = list((tmp_path / "judge").rglob("*"))
    assert sum(p.is_file() for p in stored) == 46  # one entry per pair inside the shots

    def no_flow(*a, **k):
        raise AssertionError("the judge's flow was computed again")

    monkeypatch.setattr(E, "compute_pair", no_flow)
    again = E.evaluate(reports["per-frame"].output, clip, width=96, shot_starts=[0, 24], flow_cache=cache)
    other = E.evaluate(reports["flow-blend"].output, clip, width=96, shot_starts=[0, 24], flow_cache=cache)
    assert again.warping_error == first.warping_error
    assert other.warping_error < first.warping_error
    with pytest.raises(AssertionError, match="computed again"):  # another judge has its own entries
        E.evaluate(reports["per-frame"].output, clip, width=96, flow_backend="farneback", flow_cache=cache)


def test_style_loss_against_an_image(renders):
    from skimage import data
    from PIL import Image
    clip, reports = renders
    import tempfile, os
    with tempfile.TemporaryDirectory() as tmp:
        img = os.path.join(tmp, "style.png")
        Image.fromarray(data.rocket()).save(img)
        src = E._frames(E.media.probe(clip), (96, 54))
        s, c, s0, tone = E.style_losses(E._frames(E.media.probe(reports["per-frame"].output), (96, 54)),
                                        src, img, samples=4)
        itself = E.style_losses(src, src, img, samples=4)
    assert s > 0 and c > 0 and s0 > 0 and -1 <= tone <= 1
    assert itself.content == 0 and itself.tone == pytest.approx(1, abs=1e-5) and itself.style == s0


def test_frame_count_mismatch(renders, tmp_path):
    clip, reports = renders
    short = tmp_path / "short.mp4"
    from pipeline import media
    info = media.probe(clip)
    with media.SegmentWriter(short, info.fps, (160, 90)) as w:
        for f in media.decode_frames(info, 0, 10, (160, 90)):
            w.write(f)
    with pytest.raises(InputError, match="frames"):
        E.evaluate(str(short), clip)


def test_eval_cli_reads_the_report(renders, tmp_path):
    import subprocess
    import sys

    _, reports = renders
    out = reports["flow-blend"].output
    proc = subprocess.run([sys.executable, "-m", "cli", "eval", out, "--width", "96", "--style", "none",
                           "--json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png"),
                           "--flow-cache", str(tmp_path / "fc")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "warping error" in proc.stdout and "seams" in proc.stdout
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["seam"]["ratio"] > 0 and (tmp_path / "e.png").is_file()
    assert any(p.is_file() for p in (tmp_path / "fc").rglob("*"))  # the judge's flow was kept
