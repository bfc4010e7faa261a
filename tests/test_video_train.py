"""Video phase: training pairs, temporal losses, 7-channel init, train_video resume, flow-recurrent stylizer."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models import losses as L
from models.checkpoint import load_style_model, save_style_model
from models.recurrent import load_recurrent_init
from models.train_video import VideoTrainConfig, train_video
from models.transformer import TransformerConfig, TransformerNet
from models.video_data import ClipPairs, PairSampler, SyntheticPairs, list_videos
from pipeline.errors import InputError
from pipeline.flow import FlowPair, reliability_mask, warp_torch
from methods.flow_recurrent import FlowRecurrent
from pipeline.carry import CarryState
from pipeline.synthetic import camera_move

TINY = TransformerConfig(base_channels=8, residual_blocks=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three small photos, a style image and a short panning clip with exact motion."""
    from skimage import data as sk

    root = tmp_path_factory.mktemp("video_train")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(sk, name)()).resize((96, 64)).save(photos / f"{name}.png")
    style = root / "style.jpg"
    Image.fromarray(sk.rocket()).save(style)
    clips = root / "clips"
    clips.mkdir()
    from pipeline.media import SegmentWriter

    frames, _ = camera_move("astronaut", 12, (96, 64), "pan", 0.3)
    with SegmentWriter(clips / "pan.mp4", Fraction(24), (96, 64), crf=10, preset="ultrafast") as w:
        w.write(frames)
    return root, photos, style, clips


def _checkpoint(path, in_channels: int, style=None, photos=None, seed: int = 0):
    """A random tiny net saved with a card like the image trainer's."""
    torch.manual_seed(seed)
    net = TransformerNet(TransformerConfig(8, 1, in_channels))
    card = {"name": path.stem, "method": "test", "loss_network": "test",
            "config": {"style": str(style), "data": str(photos), "style_size": 64},
            "losses": {"weights": {"content": 1.0, "style": 1.0, "tv": 0.1, "range": 1.0}}}
    return save_style_model(path, net, card)


def _masked_error(a, b, mask):
    return float(((a - b).abs() * mask).sum() / (mask.sum() * a.shape[1]))


# ---------------------------------------------------------------- data


def test_synthetic_pairs_have_exact_flow(data):
    _, photos, _, _ = data
    import cv2

    from models.data import list_images, load_rgb

    files = list_images(photos)
    batch = PairSampler(files, 48, torch.Generator().manual_seed(1), mix=(1, 0)).sample(8)
    assert batch.prev.shape == batch.cur.shape == (8, 3, 48, 48)
    assert batch.backward.shape == (8, 2, 48, 48) and batch.mask.shape == (8, 1, 48, 48)
    assert 0.3 < float(batch.mask.mean()) < 0.999, "the moving patch and the camera move must occlude something"

    # One frame of each pair is a plain crop, the other resampled. Where frame t-1 is the crop,
    # warping it reproduces frame t to float precision; the other way round only a bilinear
    # resampling's softness remains (small on smooth photos).
    smooth = SyntheticPairs(files, 48, load=lambda p: cv2.GaussianBlur(load_rgb(p), (0, 0), 1.5))
    g = torch.Generator().manual_seed(1)
    errors = []
    for _ in range(8):
        prev, cur, backward, mask = (torch.from_numpy(np.ascontiguousarray(a)) for a in smooth.sample(g))
        prev, cur, backward = (t.permute(2, 0, 1)[None] for t in (prev, cur, backward))
        warped = _masked_error(warp_torch(prev, backward), cur, mask)
        unwarped = _masked_error(prev, cur, mask)
        assert warped < 0.25 * unwarped, (warped, unwarped)
        errors.append(warped)
    assert min(errors) < 1e-5, errors


def test_sampler_is_deterministic_in_its_generator(data):
    _, photos, _, _ = data
    from models.data import list_images

    files = list_images(photos)
    a = PairSampler(files, 32, torch.Generator().manual_seed(3), mix=(1, 0)).sample(2)
    b = PairSampler(files, 32, torch.Generator().manual_seed(3), mix=(1, 0)).sample(2)
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))


def test_dark_pairs_are_dim_8bit_and_keep_their_motion(data):
    """A darkened pair keeps its flow and mask, is as dim as the gain range says (a fade allowed
    between its frames), and lies on 8-bit levels as a decoded dark frame does."""
    _, photos, _, _ = data
    from models.data import list_images
    from models.video_data import DARK_GAIN, MAX_FADE

    files = list_images(photos)
    lit = PairSampler(files, 32, torch.Generator().manual_seed(5), mix=(1, 0)).sample_one()
    dark = PairSampler(files, 32, torch.Generator().manual_seed(5), mix=(1, 0), dark_fraction=1.0).sample_one()
    assert torch.equal(lit[2], dark[2]) and torch.equal(lit[3], dark[3])
    for a, b in zip(lit[:2], dark[:2]):
        assert float(b.max()) <= DARK_GAIN[1] * MAX_FADE + 1 / 255
        assert float(b.mean()) < 0.5 * float(a.mean())
        assert torch.equal(b * 255, torch.round(b * 255))
    means = [float(PairSampler(files, 32, torch.Generator().manual_seed(s), mix=(1, 0),
                               dark_fraction=0.5).sample_one()[1].mean()) for s in range(12)]
    lit_means = [float(PairSampler(files, 32, torch.Generator().manual_seed(s), mix=(1, 0)).sample_one()[1].mean())
                 for s in range(12)]
    darkened = sum(m < 0.5 * l for m, l in zip(means, lit_means))
    assert 2 <= darkened <= 10, darkened
    with pytest.raises(InputError, match="dark_fraction"):
        PairSampler(files, 32, torch.Generator(), mix=(1, 0), dark_fraction=1.5)


def test_feedback_jitter_moves_level_and_contrast_only():
    from models.train_video import _jitter

    torch.manual_seed(0)
    img = torch.rand(6, 3, 16, 16) * 0.5 + 0.25
    assert torch.equal(_jitter(img, 0.0, torch.Generator()), img)
    out = _jitter(img, 0.3, torch.Generator().manual_seed(1))
    assert out.shape == img.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, _jitter(img, 0.3, torch.Generator().manual_seed(1)))
    dmean = (out.mean(dim=(1, 2, 3)) - img.mean(dim=(1, 2, 3))).abs()
    assert float(dmean.max()) <= 0.15 + 1e-6 and float(dmean.max()) > 0.01
    # the texture is kept: per image, output and input are an affine map of each other
    for a, b in zip(img, out):
        assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) > 0.999


def test_clip_pairs_have_dis_flow_and_mask(data):
    _, photos, _, clips = data
    from models.data import list_images

    pairs = ClipPairs(list_videos(clips), 48, pairs_per_clip=4, log=lambda *_: None)
    assert len(pairs) >= 3 and pairs.clips == ["pan.mp4"]
    batch = PairSampler(list_images(photos), 48, torch.Generator().manual_seed(0), clips=pairs,
                        mix=(0, 1)).sample(4)
    m = batch.mask
    assert float(m.mean()) > 0.5
    warped = _masked_error(warp_torch(batch.prev, batch.backward), batch.cur, m)
    unwarped = _masked_error(batch.prev, batch.cur, m)
    assert warped < 0.5 * unwarped, (warped, unwarped)


# ---------------------------------------------------------------- losses


def test_temporal_output_loss_zero_when_warped_and_luminance_compensated():
    g = torch.Generator().manual_seed(0)
    out_prev, in_prev = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    mask = torch.ones(2, 1, 16, 16)
    assert float(L.temporal_output_loss(out_prev, out_prev, in_prev, in_prev, mask)) == 0.0
    # A global light change of the input that the output follows costs (almost) nothing...
    brighter = L.temporal_output_loss(out_prev + 0.1, out_prev, in_prev + 0.1, in_prev, mask)
    assert float(brighter) < 1e-10
    # ...while the same output change without the input's is penalized: 3 channels * 0.1^2.
    assert float(L.temporal_output_loss(out_prev + 0.1, out_prev, in_prev, in_prev, mask)) == pytest.approx(0.03)
    # Masked pixels cost nothing; normalization is by pixels, not by mask area.
    half = mask.clone()
    half[..., 8:] = 0
    assert float(L.temporal_output_loss(out_prev + 0.1, out_prev, in_prev, in_prev, half)) == pytest.approx(0.015)


def test_temporal_feature_loss_resizes_mask():
    f = torch.rand(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 32, 32)
    assert float(L.temporal_feature_loss(f + 1, f, mask)) == 0.0
    mask[..., :16] = 1
    assert float(L.temporal_feature_loss(f + 1, f, mask)) == pytest.approx(0.5)


# ---------------------------------------------------------------- 7-channel init and training


def test_extended_checkpoint_reproduces_per_frame_output(tmp_path):
    path = _checkpoint(tmp_path / "perframe.safetensors", 3)
    net3, _ = load_style_model(path)
    net7, _ = load_recurrent_init(path)
    assert net7.config.in_channels == 7
    x = torch.rand(2, 3, 36, 44)
    extra = torch.cat([torch.rand(2, 3, 36, 44), (torch.rand(2, 1, 36, 44) > 0.5).float()], dim=1)
    with torch.no_grad():
        expected = net3.stylize(x)
        assert torch.equal(net7.stylize(torch.cat([x, torch.zeros_like(extra)], 1)), expected)
        assert torch.equal(net7.stylize(torch.cat([x, extra], 1)), expected)  # new channels ignored at step 0


def _video_cfg(root, init, out, steps, **kw):
    return VideoTrainConfig(init=str(init), out=str(out), videos=str(root / "clips"), image_size=32,
                            batch_size=2, steps=steps, pairs_per_clip=3, checkpoint_every_steps=2,
                            temporal_feature_weight=1.0, bf16=False, **kw)


def test_train_video_writes_checkpoint_and_resumes_exactly(tmp_path, data):
    root, photos, style, _ = data
    init = _checkpoint(tmp_path / "init.safetensors", 3, style, photos)
    quiet = {"progress": False, "log": lambda *_: None}

    straight = tmp_path / "straight.safetensors"
    train_video(_video_cfg(root, init, straight, 4), **quiet)
    net, card = load_style_model(straight)
    assert net.config.in_channels == 7 and card["method"] == "flow-recurrent"
    assert card["steps"] == 4 and card["init_checkpoint_sha256_16"]
    assert card["losses"]["weights"]["temporal"] > 0 and card["training_data"]["videos"] == ["pan.mp4"]
    assert {"temporal", "temporal_feature", "content", "style"} <= set(card["losses"]["final_ema"])

    stopped = tmp_path / "stopped.safetensors"
    train_video(_video_cfg(root, init, stopped, 2), **quiet)  # stops after 2 steps...
    logs = []
    train_video(_video_cfg(root, init, stopped, 4), progress=False, log=logs.append)  # ...and goes on
    assert any("resuming from step 2" in line for line in logs)
    a = load_file(str(straight.with_name(straight.name + ".state.safetensors")))
    b = load_file(str(stopped.with_name(stopped.name + ".state.safetensors")))
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("model.", "opt.")):
            assert torch.equal(a[k], b[k]), f"{k} differs after resume"

    # A flow-recurrent checkpoint can be fine-tuned further. Its card names the painting and the data
    # folders, not this machine's paths: they are looked up under ../shared/data, else given again.
    assert card["config"]["style"] == style.name and card["config"]["data"] == [f"{photos.parent.name}/photos"]
    with pytest.raises(InputError, match="pass it"):
        train_video(_video_cfg(root, straight, tmp_path / "more.safetensors", 1), **quiet)
    more = train_video(_video_cfg(root, straight, tmp_path / "more.safetensors", 1, data=str(photos),
                                  style=str(style)), **quiet)
    assert load_style_model(more)[1]["init_checkpoint"] == "straight.safetensors"


# ---------------------------------------------------------------- stylizer


class ExactFlow:
    """A FlowSource over exact synthetic flow: a pan is a pure translation, so backward = -forward."""

    def __init__(self, forward_flows: np.ndarray):
        self.forward = forward_flows
        self.asked: list[int] = []

    def pair(self, t: int) -> FlowPair:
        self.asked.append(t)
        fwd = self.forward[t - 1]
        bwd = -fwd
        return FlowPair(fwd, bwd, reliability_mask(fwd, bwd))


def test_flow_recurrent_chunked_equals_unchunked(tmp_path):
    path = _checkpoint(tmp_path / "recurrent.safetensors", 7, seed=1)
    stylizer = FlowRecurrent(path)
    frames, flows = camera_move("astronaut", 7, (48, 32), "pan", 0.4)
    flow = ExactFlow(flows)

    whole, end = stylizer.stylize(frames, 0, None, flow)
    assert 0 not in flow.asked, "no flow is needed at a shot start"
    first, state = stylizer.stylize(frames[:3], 0, None, flow)
    state = CarryState.from_bytes(state.to_bytes())  # as stored between chunks
    second, end2 = stylizer.stylize(frames[3:], 3, state, flow)
    assert np.array_equal(np.concatenate([first, second]), whole)
    assert np.array_equal(end.last_output, end2.last_output) and end2.next_frame == 7
    # The carried output matters: the same frame as a shot start comes out differently.
    as_start, _ = stylizer.stylize(frames[3:4], 3, None, flow)
    assert not np.array_equal(as_start[0], whole[3])


def test_flow_recurrent_refuses_per_frame_checkpoint(tmp_path):
    path = _checkpoint(tmp_path / "starry.safetensors", 3)
    with pytest.raises(InputError, match="style starry is a per-frame model; flow-recurrent needs a model "
                                         "trained with `filmstyle train --video`"):
        FlowRecurrent(path)


def test_reconet_training_makes_a_one_frame_net_that_renders_without_flow(tmp_path, data, demo_clip_factory):
    """--temporal reconet: both frames through the net, temporal losses in training only; the result
    is a 3-channel net for the ``stable`` method, and its render computes and reads no flow."""
    from engine.config import RenderConfig
    from engine.local import render
    from pipeline.media import probe

    root, photos, style, _ = data
    init = _checkpoint(tmp_path / "init.safetensors", 3, style, photos)
    out = train_video(_video_cfg(root, init, tmp_path / "stable.safetensors", 2, temporal="reconet"),
                      progress=False, log=lambda *_: None)
    net, card = load_style_model(out)
    assert net.config.in_channels == 3 and card["method"] == "stable"
    assert card["losses"]["weights"]["temporal_feature"] > 0
    assert {"temporal", "temporal_feature"} <= set(card["losses"]["final_ema"])
    with pytest.raises(InputError, match="cannot initialise a one-frame"):
        train_video(_video_cfg(root, _checkpoint(tmp_path / "r.safetensors", 7), tmp_path / "x.safetensors", 1,
                               temporal="reconet"), progress=False, log=lambda *_: None)

    clip = demo_clip_factory(("astronaut", "coffee"), width=96, height=54, seconds_per_shot=0.5)
    report = render(RenderConfig(input=clip, output=str(tmp_path / "s.mp4"), style=str(out), method="stable",
                                 width=96, chunk_frames=6, cache_dir=str(tmp_path / "c")), progress=False, log=None)
    assert report.flow == {} and probe(tmp_path / "s.mp4").frame_count == probe(clip).frame_count
    assert not (tmp_path / "c" / "flow").exists()  # no flow computed, none cached


def test_low_rank_loss_is_zero_for_aligned_frames_and_grows_with_independent_noise():
    torch.manual_seed(0)
    frame = torch.rand(2, 1, 3, 24, 32)
    stack = frame.expand(2, 4, 3, 24, 32)  # K = 4 identical aligned frames
    mask = torch.ones(2, 1, 24, 32)
    assert float(L.low_rank_loss(stack, stack, mask)) == pytest.approx(0, abs=1e-6)
    assert float(L.low_rank_loss(0.5 * stack + 0.2, stack, mask)) < 1e-3  # a global level change is not flicker
    losses = [float(L.low_rank_loss(stack + s * torch.randn_like(stack), stack, mask)) for s in (0.05, 0.2, 0.8)]
    assert 0 < losses[0] < losses[1] < losses[2]
    # Pixels outside the mask (occluded in some of the K frames) do not count.
    noisy = stack.clone()
    noisy[..., :8] = torch.rand_like(noisy[..., :8])
    mask[..., :8] = 0
    assert float(L.low_rank_loss(noisy, stack, mask)) == pytest.approx(0, abs=1e-6)


def test_low_rank_loss_gradient_stays_bounded_for_a_nearly_black_output():
    # An untrained student's first outputs are nearly black: a scale-free ratio's gradient there
    # was ~1e11 and the clipped step followed this loss alone.
    torch.manual_seed(0)
    frames = torch.rand(2, 4, 3, 24, 32)
    out = (1e-4 * torch.rand_like(frames)).requires_grad_()
    L.low_rank_loss(out, frames, torch.ones(2, 1, 24, 32)).backward()
    assert torch.isfinite(out.grad).all() and float(out.grad.norm()) < 100


def test_difference_weighting_is_zero_where_the_teachers_agree():
    torch.manual_seed(0)
    a = torch.rand(1, 3, 8, 8)
    b = a.clone()
    b[..., 4:] += 0.3  # the teachers differ on the right half only
    w = L.difference_weight(a, b)
    assert torch.all(w[..., :4] == 0) and torch.allclose(w[..., 4:], torch.full_like(w[..., 4:], 0.3))
    student = a + 0.1
    # Where the teachers agree the loss is the plain squared error; alpha weighs the rest more.
    plain = L.distillation_loss(student, a, a, alpha=10.0)
    assert float(plain) == pytest.approx(float((student - a).pow(2).sum(1).mean()), rel=1e-6)
    assert float(L.distillation_loss(student, a, b, alpha=10.0)) > float(plain)


def test_distill_trains_a_flow_free_student_and_records_its_teachers(tmp_path, data, demo_clip_factory):
    from engine.config import RenderConfig
    from engine.local import render
    from models.distill import DistillConfig, RecurrentTeacher, distill
    from models.video_data import SyntheticSequences

    root, photos, style, _ = data
    frame = _checkpoint(tmp_path / "frame.safetensors", 3, style, photos)
    flow = _checkpoint(tmp_path / "flow.safetensors", 7, style, photos, seed=1)
    cfg = DistillConfig(teacher_flow=str(flow), teacher_frame=str(frame), out=str(tmp_path / "student.safetensors"),
                        data=str(photos), frames=3, image_size=32, batch_size=2, steps=2, bf16=False,
                        checkpoint_every_steps=1)
    # The cards of _checkpoint record no painting hash: both None, so they count as the same painting.
    out = distill(cfg, progress=False, log=lambda *_: None)
    net, card = load_style_model(out)
    assert card["method"] == "distilled" and net.config.in_channels == 3 and net.config.base_channels == 16
    assert card["teachers"]["flow"]["name"] == "flow.safetensors" and card["steps"] == 2
    assert {"distill", "low_rank", "style", "content"} <= set(card["losses"]["final_ema"])
    assert "/" not in card["config"]["teacher_flow"]  # no path of this machine in the card
    assert card["config"]["lr_decay"] == "cosine"  # a from-scratch student settles at the end

    # Teacher A runs over the sequence as a render does: its first frame is a shot start.
    a, _ = load_style_model(flow)
    b, _ = load_style_model(frame)
    seq = SyntheticSequences(sorted(photos.glob("*.png")), 32).batch(torch.Generator().manual_seed(0), 1, 3)
    out_a, out_b = RecurrentTeacher(a.eval(), b.eval())(seq.frames, seq.backward, seq.step_mask)
    assert out_a.shape == out_b.shape == seq.frames.shape
    with pytest.raises(InputError, match="teacher A must be a flow-recurrent net"):
        distill(DistillConfig(teacher_flow=str(frame), teacher_frame=str(frame), out=str(tmp_path / "x.safetensors"),
                              data=str(photos)), progress=False, log=lambda *_: None)

    clip = demo_clip_factory(("astronaut", "coffee"), width=96, height=54, seconds_per_shot=0.5)
    report = render(RenderConfig(input=clip, output=str(tmp_path / "d.mp4"), style=str(out), method="distilled",
                                 width=96, cache_dir=str(tmp_path / "c")), progress=False, log=None)
    assert report.flow == {} and not (tmp_path / "c" / "flow").exists()


def test_flow_blend_teacher_is_the_render_blend_and_steadier_than_teacher_b(tmp_path, data):
    """Teacher A by flow-blend: the shot's first frame is teacher B's own; after it, A changes less
    along the exact flow than B does (what the student is to learn); a distillation from it records it."""
    from methods.flow_blend import BlendTeacher
    from models.distill import FLOW_BLEND, DistillConfig, distill
    from models.video_data import SyntheticSequences
    from pipeline.flow import warp_torch

    root, photos, style, _ = data
    frame = _checkpoint(tmp_path / "frame.safetensors", 3, style, photos)
    seq = SyntheticSequences(sorted(photos.glob("*.png")), 48).batch(torch.Generator().manual_seed(3), 2, 4)
    frames = torch.floor(seq.frames * 255 + 0.5) / 255
    kept = frames.clone()
    out_a, out_b = BlendTeacher(str(frame), "cpu")(frames, seq.backward, seq.step_mask)
    # The teacher leaves the frames as they were: they are also the student's input and the content
    # target (an in-place quantisation once scaled them by 255, and the student learned that scale).
    assert torch.equal(frames, kept)
    assert out_a.shape == out_b.shape == frames.shape
    assert torch.equal(out_a[:, 0], out_b[:, 0]) and not torch.equal(out_a[:, 1:], out_b[:, 1:])

    def change(out):  # mean squared change of frames 1.. against the previous output warped
        prev = warp_torch(out[:, :-1].flatten(0, 1), seq.backward[:, 1:].flatten(0, 1))
        m = seq.step_mask[:, 1:].flatten(0, 1)
        return float(((out[:, 1:].flatten(0, 1) - prev).pow(2) * m).sum() / m.sum())

    assert change(out_a) < 0.8 * change(out_b)
    cfg = DistillConfig(teacher_flow=FLOW_BLEND, teacher_frame=str(frame), out=str(tmp_path / "s.safetensors"),
                        data=str(photos), frames=3, image_size=32, batch_size=1, steps=1, bf16=False)
    first = distill(cfg, progress=False, log=lambda *_: None, blend_teacher=BlendTeacher)
    _, card = load_style_model(first)
    assert card["teachers"]["flow"]["name"] == FLOW_BLEND and "flow-blend teacher" in card["method_detail"]
    # A warm start from a student (another style's, an earlier run's); a net of another size is refused.
    warm = DistillConfig(**{**cfg.__dict__, "out": str(tmp_path / "w.safetensors"), "init": str(first), "lr": 0.0})
    net, card = load_style_model(distill(warm, progress=False, log=lambda *_: None, blend_teacher=BlendTeacher))
    assert card["init"]["name"] == "s.safetensors"
    start, _ = load_style_model(first)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), start.state_dict().values()))
    with pytest.raises(InputError, match="cannot start from this net"):
        distill(DistillConfig(**{**warm.__dict__, "out": str(tmp_path / "x.safetensors"), "init": str(frame)}),
                progress=False, log=lambda *_: None, blend_teacher=BlendTeacher)
    # --norm: the student's normalization (the size's, none, unless named); a warm start keeps it.
    assert net.config.norm == "none"
    normed = DistillConfig(**{**cfg.__dict__, "out": str(tmp_path / "n.safetensors"), "norm": "instance"})
    net, card = load_style_model(distill(normed, progress=False, log=lambda *_: None, blend_teacher=BlendTeacher))
    assert net.config.norm == card["architecture"]["norm"] == "instance"
    with pytest.raises(InputError, match="norm none"):
        distill(DistillConfig(**{**normed.__dict__, "out": str(tmp_path / "y.safetensors"), "init": str(first)}),
                progress=False, log=lambda *_: None, blend_teacher=BlendTeacher)
