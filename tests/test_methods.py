"""Methods as plug-ins, and one render sequence for both executors.

* A method is one module: the identity method (tests/identity_method.py) is registered from this test and is then
  a render method (both executors), a CLI flag source and a validated option set, with no
  other file touched.
* Every shipped method renders the same frames with the in-process and the Prefect + Ray
  executor (one sequence, two ways of running its units).
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from frames import all_frames

from engine.config import RenderConfig
from engine.local import render
from methods import METHODS, make_method, register, unregister, validate_options
from pipeline import media
from pipeline.errors import InputError

FPS = Fraction(24)
OPTS = {"width": 96, "chunk_frames": 8, "crf": 0}


@pytest.fixture
def identity():
    import identity_method  # registers the method (the module registers it on import, as in a worker)

    register(identity_method.Identity)  # again, after an earlier test's teardown
    yield identity_method.Identity
    unregister(identity_method.Identity.name)


@pytest.fixture(scope="module")
def clip(demo_clip_factory):
    return demo_clip_factory(("astronaut", "coffee"), fps=FPS)


@pytest.fixture(scope="module")
def recurrent_style(tmp_path_factory):
    """A tiny random flow-recurrent (7-channel) checkpoint."""
    import torch

    from models.checkpoint import save_style_model
    from models.transformer import TransformerConfig, TransformerNet

    torch.manual_seed(2)
    net = TransformerNet(TransformerConfig(base_channels=8, residual_blocks=1, norm="instance", in_channels=7))
    return str(save_style_model(tmp_path_factory.mktemp("rec") / "rec.safetensors", net, {"name": "rec"}))



def test_a_registered_method_is_a_render_method_with_flags_and_checked_options(tmp_path, clip, identity):
    from cli.args import config_from_args
    from cli.main import build_parser, main

    assert validate_options("identity-test", {"gain": "1.5"}) == {"gain": 1.5}
    with pytest.raises(InputError, match=r"gain must be in \(0, 2\]"):
        make_method("identity-test", "unused", options={"gain": 3})
    with pytest.raises(InputError, match="has no option strength"):
        validate_options("identity-test", {"strength": 0.5})

    args = build_parser().parse_args(["render", clip, "-o", "x.mp4", "--method", "identity-test", "--gain", "0.5"])
    cfg = config_from_args(args)
    assert (cfg.method, cfg.options) == ("identity-test", {"gain": 0.5})
    # A flag of another method is an error, in one line with exit code 2.
    rc = main(["render", clip, "-o", str(tmp_path / "y.mp4"), "--method", "identity-test", "--strength", "0.5",
               "--engine", "local", "-q"])
    assert rc == 2 and not (tmp_path / "y.mp4").exists()

    cfg = RenderConfig(input=clip, output=str(tmp_path / "id.mp4"), method="identity-test", options={"gain": 1.0}, out_width=96,
                       cache_dir=str(tmp_path / "cache"), **OPTS)
    report = render(cfg, progress=False, log=None)
    assert report.method == "identity-test" and report.options == {"gain": 1.0}
    assert report.flow == {} and report.model_card == {"name": "identity"}  # no flow for a method without it
    info = media.probe(clip)
    src = np.stack(list(media.decode_frames(info, 0, info.frame_count, tuple(report.working_size))))
    out = all_frames(tmp_path / "id.mp4")
    assert out.shape == src.shape and np.abs(out.astype(int) - src).mean() < 2.0  # x264 crf 0 in 4:2:0


def test_the_cli_loads_a_plug_in_named_in_the_environment_and_renders_with_it(tmp_path, clip):
    """A plug-in outside the tree: $FILMSTYLE_METHODS names its module; its flags and method appear."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FILMSTYLE_METHODS": "identity_method",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "plug.mp4"
    proc = subprocess.run([sys.executable, "-m", "cli", "render", clip, "-o", str(out), "--method", "identity-test",
                           "--gain", "0.5", "--engine", "local", "--width", "96", "--chunk-frames", "8",
                           "--cache-dir", str(tmp_path / "cache"), "-q"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["method"] == "identity-test" and report["options"] == {"gain": 0.5}
    assert all_frames(out).mean() < 0.6 * all_frames(clip).mean()  # the gain reached the frames

    env["FILMSTYLE_METHODS"] = "no_such_plugin"
    proc = subprocess.run([sys.executable, "-m", "cli", "styles"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "method plug-in no_such_plugin cannot be imported" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "ray_local")
@pytest.mark.parametrize("method", ["per-frame", "flow-blend", "flow-recurrent", "identity-test"])
def test_both_executors_render_the_same_frames(tmp_path, clip, tiny_styles, recurrent_style, identity, method):
    from flows.render import render_flow

    style = recurrent_style if method == "flow-recurrent" else tiny_styles[0]
    opts = {**OPTS, "method": method, "cache_dir": str(tmp_path / "cache")}
    local = render(RenderConfig(input=clip, output=str(tmp_path / "local.mp4"), style=style, **opts),
                   progress=False, log=None)
    ray = render_flow(clip, str(tmp_path / "ray.mp4"), style, opts)
    assert np.array_equal(all_frames(tmp_path / "local.mp4"), all_frames(tmp_path / "ray.mp4")), method
    assert ray["engine"] == "prefect+ray" and local.engine == "local"
    assert ray["chunks"] == local.chunks == 6 and ray["options"] == local.options
    assert bool(ray["flow"]) == bool(local.flow) == METHODS[method].needs_flow  # flow only when needed
    saved = json.loads(Path(f"{tmp_path / 'ray.mp4'}.report.json").read_text())
    assert set(saved["stage_seconds"]) >= {"probe", "shots", "render", "decode", "stylize", "encode", "assemble"}


def test_render_config_takes_method_options_at_the_top_level_and_rejects_unknown_ones():
    cfg = RenderConfig.from_dict({"input": "a.mp4", "output": "b.mp4", "method": "flow-blend", "strength": 0.3})
    assert cfg.options == {"strength": 0.3}
    with pytest.raises(InputError, match="unknown render option"):
        RenderConfig.from_dict({"input": "a.mp4", "output": "b.mp4", "strenght": 0.3})


def test_upscalers_are_built_for_the_render_device_with_their_options(tmp_path, clip, tiny_styles):
    """A learned upscaler gets the device the nets run on and its options from the factory."""
    from pipeline import upscale

    seen = []

    @upscale.register("recording-test")
    class Recording(upscale.Lanczos):
        def __init__(self, *, device="cpu", **options):
            seen.append((device, options))
            super().__init__(device=device)

    try:
        up = upscale.make_upscaler("recording-test", device="cuda:1", tile=256)
        assert seen == [("cuda:1", {"tile": 256})] and up.name == "recording-test"
        out = tmp_path / "o.mp4"
        render(RenderConfig(input=clip, output=str(out), style=tiny_styles[0], upscaler="recording-test",
                            out_width=128, device="cpu", cache_dir=str(tmp_path / "c"), **OPTS),
               progress=False, log=None)
        assert seen[-1] == ("cpu", {}) and media.probe(out).width == 128
    finally:
        upscale.UPSCALERS.pop("recording-test")
    with pytest.raises(InputError, match="lanczos takes no options"):
        upscale.make_upscaler("lanczos", tile=256)


def test_quantisation_rounds_half_up_and_leaves_its_input_alone():
    import torch

    from methods.net import to_uint8, to_uint16

    y = torch.tensor([0.0, 0.5 / 255, 1.0, 1.5, -0.2])
    kept = y.clone()
    assert to_uint8(y).tolist() == [0, 1, 255, 255, 0]
    assert to_uint16(y).tolist() == [0, 129, 65535, 65535, 0]
    assert torch.equal(y, kept)  # float() of a float32 tensor is the tensor itself: no in-place scaling
