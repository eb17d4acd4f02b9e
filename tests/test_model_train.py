"""Training: config errors, LR schedule, EMA, overfitting a handful of digits, checkpoints, kill and resume."""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

import diffusion.model.train as train_module
from diffusion.checkpoint import CheckpointError
from diffusion.config import ConfigError, DiffusionConfig, DiffusionTrainConfig, parse_params
from diffusion.model.ema import EMA
from diffusion.model.process import GaussianDiffusion
from diffusion.model.resume import (
    TrainState,
    fingerprint,
    flatten_optimizer,
    load_state,
    training_config,
    unflatten_optimizer,
)
from diffusion.model.saved import load_diffusion, new_model, save_diffusion
from diffusion.model.train import lr_at, train_diffusion, validation_loss


def _patterns(copies: int = 1, size: int = 16) -> SimpleNamespace:
    """Four fixed strokes (box, bar, cross, diagonal) as images (4*copies, 1, size, size) in [-1, 1], labels 0-3."""
    z = -torch.ones(4, size, size)
    c, idx = size // 2, torch.arange(size)
    z[0, 3:-3, 3:5] = z[0, 3:-3, -5:-3] = z[0, 3:5, 3:-3] = z[0, -5:-3, 3:-3] = 1
    z[1, :, c - 1 : c + 1] = 1
    z[2, c - 1 : c + 1, :] = z[2, :, c - 1 : c + 1] = 1
    z[3, idx, idx] = z[3, idx[1:], idx[:-1]] = 1
    return SimpleNamespace(
        images=z.unsqueeze(1).repeat(copies, 1, 1, 1), labels=torch.arange(4).repeat(copies)
    )


def _config(**train: object) -> DiffusionConfig:
    train_cfg = {"batch_size": 16, "steps": 12, "lr": 2e-3, "warmup_steps": 5, "ema_decay": 0.99}
    train_cfg |= {"checkpoint_every": 5, "log_every": 4, "val_batches": 2, "p_uncond": 0.2}
    train_cfg |= {"min_snr_gamma": None} | train  # L_simple: the loss these tests' thresholds are set in
    raw = {
        "unet": {
            "image_size": 16,
            "base_channels": 16,
            "channel_mults": [1, 2],
            "attention": False,
            "num_classes": 4,
        },
        "process": {"timesteps": 1000},
        "train": train_cfg,
        "sampler": {"name": "dpm-solver++", "steps": 10},
    }
    return parse_params({"diffusion": raw}).diffusion


@pytest.mark.parametrize(
    "section, message",
    [
        ({"sampler": {"name": "euler"}}, "sampler.name"),
        (
            {"sampler": {"steps": 51}, "process": {"timesteps": 50}},
            "sampler.steps (51) must be <= process.timesteps",
        ),
        ({"sampler": {"guidance": -1.0}}, "sampler.guidance"),
        ({"unet": {"base_channels": 36}}, "divisible by groups"),
        ({"process": {"schedule": "sigmoid"}}, "process.schedule"),
        ({"train": {"learning_rate": 1e-3}}, "train.learning_rate"),
    ],
)
def test_bad_configs_raise_config_error(section: dict, message: str):
    with pytest.raises(ConfigError, match="diffusion") as err:
        parse_params({"diffusion": section})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_network_the_training_digits_do_not_fit_is_one_line_before_any_step(tmp_path: Path) -> None:
    """The review's two: num_classes under the labels (an IndexError mid-step) and channels the digits do
    not have (a conv error)."""
    data = _patterns()
    for unet, said in [
        (
            {"num_classes": 3},
            "diffusion.unet.num_classes (3): the training digits have labels up to 3; set it",
        ),
        (
            {"in_channels": 3},
            "diffusion.unet.in_channels and image_size (3, 16): the training digits are 1 x 16",
        ),
        (
            {"image_size": 32},
            "diffusion.unet.in_channels and image_size (1, 32): the training digits are 1 x 16",
        ),
    ]:
        cfg = _config()
        cfg = cfg.model_copy(update={"unet": cfg.unet.model_copy(update=unet)})
        with pytest.raises(ConfigError, match=re.escape(said)):
            train_diffusion(cfg, data, data, tmp_path / "out", tmp_path / "state", progress=False)
        assert not list(tmp_path.iterdir())  # nothing written


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = DiffusionTrainConfig(lr=1e-3, steps=110, warmup_steps=10)
    assert lr_at(cfg, 0) == pytest.approx(1e-4) and lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 10) == pytest.approx(1e-3) and lr_at(cfg, 60) == pytest.approx(0.5e-3)
    assert lr_at(cfg, 109) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_at(DiffusionTrainConfig(warmup_steps=0), 0) == pytest.approx(1e-3)


def test_ema_follows_weights_with_warm_up():
    layer = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    ema = EMA(layer, decay=0.9)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema.update(layer)  # first decay min(0.9, 1/10) = 0.1
    assert ema.state_dict()["weight"].item() == pytest.approx(0.9)
    for _ in range(200):
        ema.update(layer)
    assert ema.current_decay() == 0.9 and ema.state_dict()["weight"].item() == pytest.approx(1.0)


@pytest.fixture
def flush_denormals():
    """Subnormal floats flushed to zero while the test runs, on one torch thread. Emulated bf16 (a CPU
    without bf16 units) slows down about 5x once the tiny model's values turn subnormal; flushing changes
    none of this test's losses. The flag is per thread (the CPU's control register), so the test runs on
    the calling thread alone, and both are put back (flushing is off by default) for the tests after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiny_model_overfits_a_handful_of_digits(tmp_path: Path, precision: str, flush_denormals: None):
    cfg = _config(
        steps=120,
        batch_size=16,
        lr=5e-3,
        warmup_steps=10,
        log_every=25,
        p_uncond=0.0,
        checkpoint_every=1000,
    )
    data = _patterns(copies=8)
    process = GaussianDiffusion(cfg.process)
    before = validation_loss(new_model(cfg, torch.device("cpu")).eval(), process, data, cfg.train)
    result = train_diffusion(
        cfg, data, data, tmp_path / "out", tmp_path / "state", progress=False, precision=precision
    )
    assert before == pytest.approx(1.0, abs=0.1)  # the zero predictor
    assert result.metrics["val_loss"] <= before / 10, (before, result.metrics)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 3
    assert [row["step"] for row in result.history] == [25, 50, 75, 100, 120]  # and the last step
    assert set(result.metrics) == {"train_loss", "val_loss", "steps", "images_per_second", "parameters"}


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path):
    cfg = _config()
    model, ema_model = new_model(cfg, torch.device("cpu")), new_model(cfg, torch.device("cpu"))
    for net in (model, ema_model):
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    torch.nn.init.normal_(ema_model.label_emb.weight)
    save_diffusion(tmp_path / "ckpt", cfg, model.state_dict(), ema_model.state_dict(), {"val_loss": 0.5})
    x, t, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 5, 500, 999]), torch.tensor([0, 1, 3, 4])
    for name, original in [("ema", ema_model), ("model", model)]:
        loaded, process = load_diffusion(tmp_path / "ckpt", "cpu", weights=name)
        assert loaded.cfg == cfg.unet and process.num_timesteps == 1000 and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x, t, y), original.eval()(x, t, y))
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_diffusion(tmp_path / "ckpt", "cpu", weights="missing")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="checkpoint config not found"):
        load_diffusion(tmp_path / "nowhere")


def test_training_writes_a_loadable_checkpoint_and_is_seeded(tmp_path: Path):
    cfg, data = _config(steps=6), _patterns(copies=4)
    first = train_diffusion(cfg, data, data, tmp_path / "a", tmp_path / "sa", progress=False)
    second = train_diffusion(cfg, data, data, tmp_path / "b", tmp_path / "sb", progress=False)
    assert first.history == second.history and first.metrics["val_loss"] == second.metrics["val_loss"]
    ema_a, ema_b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    model, _ = load_diffusion(tmp_path / "a")
    assert sum(p.numel() for p in model.parameters()) == first.metrics["parameters"]


def _weights(directory: Path, name: str = "ema") -> dict[str, torch.Tensor]:
    return load_file(directory / f"{name}.safetensors")


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg, data = _config(steps=12, checkpoint_every=5), _patterns(copies=4)
    uninterrupted = train_diffusion(
        cfg, data, data, tmp_path / "full", tmp_path / "full_state", progress=False
    )

    real_step, calls = train_module.train_step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:  # killed after the step-5 state was written, mid-way to step 10
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(cfg, data, data, tmp_path / "out", tmp_path / "state", progress=False)
    assert not (tmp_path / "out").exists()

    calls.clear()
    monkeypatch.setattr(train_module, "train_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    resumed = train_diffusion(cfg, data, data, tmp_path / "out", tmp_path / "state", progress=False)
    assert len(calls) == 12 - 5  # continued from the step-5 state
    assert resumed.history == uninterrupted.history
    assert [list(row) for row in resumed.history] == [
        list(row) for row in uninterrupted.history
    ]  # CSV columns
    for name in ("ema", "model"):
        full, res = _weights(tmp_path / "full", name), _weights(tmp_path / "out", name)
        assert all(torch.equal(full[k], res[k]) for k in full), name
    assert resumed.metrics["val_loss"] == uninterrupted.metrics["val_loss"]


class _ValueReads(TorchDispatchMode):
    """Counts, by function, the tensor values our own code reads into Python (`.item()`, `float(t)`,
    `bool(t)`): on a GPU each is a host sync. Reads inside torch (AdamW's CPU step counters) are not ours."""

    WRAPPERS = ("torch/_dynamo/", "torch/_compile.py", "torch/utils/_python_dispatch.py")

    def __init__(self):
        super().__init__()
        self.readers: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frame = sys._getframe(1)  # the code that asked for the value, past the mode's own wrappers
            while frame.f_code.co_filename.endswith(self.WRAPPERS) or "/torch/_" in frame.f_code.co_filename:
                frame = frame.f_back
            if "/diffusion/" in frame.f_code.co_filename:
                self.readers[frame.f_code.co_name] += 1
        return func(*args, **(kwargs or {}))


def test_training_reads_the_loss_back_only_every_log_every_steps(tmp_path: Path):
    """No loss.item() per step: the losses are summed on the device and read for a history row (every
    log_every steps) and for the resume state (every checkpoint_every steps)."""
    cfg, data = _config(steps=8, log_every=4, checkpoint_every=100), _patterns(copies=4)
    with _ValueReads() as reads:
        result = train_diffusion(cfg, data, data, tmp_path / "out", tmp_path / "state", progress=False)
    assert [row["step"] for row in result.history] == [4, 8]
    # 2 history rows + 1 resume state (at the last step) in the loop, 1 read of the summed validation loss,
    # and before any step the labels' largest (the network must hold every class: `_check_fits`)
    assert reads.readers == {"_check_fits": 1, "_train_loop": 3, "validation_loss": 1}


def test_a_state_of_another_config_or_other_digits_is_not_resumed(tmp_path: Path):
    cfg, data = _config(steps=5), _patterns(copies=4)
    train_diffusion(cfg, data, data, tmp_path / "out", tmp_path / "state", progress=False)
    digits = fingerprint(data.images, data.labels)

    def fresh(c: DiffusionConfig) -> TrainState:
        model = new_model(c, torch.device("cpu"))
        opt = torch.optim.AdamW(model.parameters())
        return TrainState(model, EMA(model, 0.9), opt, torch.Generator())

    def key(c: DiffusionConfig, sha: str = digits) -> dict:
        return training_config(c, "fp32", None, sha)

    assert load_state(tmp_path / "state", key(cfg), state := fresh(cfg)) and state.step == 5
    other = _config(steps=5, lr=1e-3)
    assert not load_state(tmp_path / "state", key(other), state := fresh(other)) and state.step == 0
    # sampler and eval settings do not restart training
    same_training = cfg.model_copy(update={"sampler": cfg.sampler.model_copy(update={"steps": 20})})
    assert load_state(tmp_path / "state", key(same_training), fresh(same_training))
    # other training digits (a new split, source or font) do: the finished state is not taken as the model
    assert not load_state(tmp_path / "state", key(cfg, "0" * 64), fresh(cfg))
    changed = SimpleNamespace(images=data.images.flip(-1), labels=data.labels)
    result = train_diffusion(cfg, changed, changed, tmp_path / "out2", tmp_path / "state", progress=False)
    fresh_run = train_diffusion(cfg, changed, changed, tmp_path / "out3", tmp_path / "new", progress=False)
    assert result.history == fresh_run.history  # trained on the new digits from step 0
    assert (tmp_path / "out2/ema.safetensors").read_bytes() == (
        tmp_path / "out3/ema.safetensors"
    ).read_bytes()


def test_optimizer_state_flattens_without_pickle():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = flatten_optimizer(opt.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in tensors.values()) and "0.exp_avg" in tensors
    restored = unflatten_optimizer(tensors, meta)
    other = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    other.load_state_dict(restored)
    assert other.param_groups[0]["betas"] == (0.8, 0.99)
    assert torch.equal(
        other.state_dict()["state"][1]["exp_avg_sq"], opt.state_dict()["state"][1]["exp_avg_sq"]
    )
