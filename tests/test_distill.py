"""Distillation: the student's guidance input, the distilled sampler, training, resuming, the folder's checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import diffusion.model.distill as distill_module
from diffusion.checkpoint import CheckpointError
from diffusion.config import ConfigError, DistillConfig, SamplerConfig, parse_params
from diffusion.model.distill import Grid, distill
from diffusion.model.samplers import ddim_sample, distilled_sample, sample
from diffusion.model.samplers.guidance import guided_output
from diffusion.model.samplers.spacing import trailing_timesteps
from diffusion.model.saved import load_diffusion
from diffusion.model.student import check_student, load_student, student_config
from diffusion.model.train import train_diffusion
from diffusion.model.unet import UNet
from tests.test_model_train import _config, _patterns


def _distill_cfg(**over: object) -> DistillConfig:
    raw = {
        "teacher_steps": 4,
        "min_steps": 1,
        "guidance_steps": 6,
        "round_steps": 4,
        "batch_size": 8,
        "lr": 1e-3,
        "checkpoint_every": 3,
        "log_every": 2,
        "guidance_range": [1.0, 3.0],
    } | over
    return parse_params({"distill": raw}).distill


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNet, object, str]:
    """A tiny teacher trained 200 steps on four strokes, loaded from its folder as distillation loads it."""
    root = tmp_path_factory.mktemp("teacher")
    data = _patterns(copies=4)
    train_diffusion(_config(steps=200), data, data, root / "model", root / "resume", progress=False)
    model, process = load_diffusion(root / "model")
    from diffusion.checkpoint import file_sha256

    return model, process, file_sha256(root / "model" / "ema.safetensors")


def _weights(folder: Path, steps: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    return {n: load_student(folder, n)[0].state_dict() for n in steps}


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "section, message",
    [
        ({"teacher_steps": 12}, "teacher_steps (12) must be a power of two"),
        ({"min_steps": 16, "teacher_steps": 16}, "min_steps (16) must be < teacher_steps (16)"),
        ({"guidance_range": [3.0, 1.0]}, "guidance_range"),
        ({"teacher_steps": 2048}, "distill.teacher_steps (2048) must be <= diffusion.process.timesteps"),
    ],
)
def test_bad_distill_params_are_one_line(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="distill") as err:
        parse_params({"distill": section})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_student_steps_halve_from_the_teacher_to_the_minimum() -> None:
    assert DistillConfig().student_steps() == [16, 8, 4]  # the shipped min_steps
    assert DistillConfig(min_steps=1).student_steps() == [16, 8, 4, 2, 1]
    assert _distill_cfg(teacher_steps=8, min_steps=2).student_steps() == [8, 4, 2]


# --------------------------------------------------------------------------- network and sampler
def test_a_student_copied_from_its_teacher_starts_as_the_conditional_teacher(teacher) -> None:
    model, _, _ = teacher
    student = UNet(model.cfg.model_copy(update={"guidance_input": True}))
    student.load_state_dict(model.state_dict(), strict=False)  # the guidance MLP keeps its zero last layer
    x, t, labels = torch.randn(3, 1, 16, 16), torch.tensor([999, 500, 3]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        for w in (1.0, 2.5):
            out = student(x, t, labels, torch.full((3,), w))
            torch.testing.assert_close(out, model(x, t, labels))
    with pytest.raises(ValueError, match="needs its guidance strength"):
        student(x, t, labels)
    with pytest.raises(ValueError, match="no guidance input"):
        model(x, t, labels, torch.ones(3))


class Counting(torch.nn.Module):
    """Counts network calls and the images and timesteps each saw."""

    def __init__(self, net: UNet):
        super().__init__()
        self.net, self.calls, self.null_class, self.image_shape = net, [], net.null_class, net.image_shape
        self.null_style = net.null_style

    def forward(self, x, t, labels, *rest):
        self.calls.append((x.shape[0], sorted(set(t.tolist()))))
        return self.net(x, t, labels, *rest)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_the_distilled_sampler_makes_steps_evaluations_per_image(teacher, steps: int) -> None:
    model, process, _ = teacher
    student = Counting(UNet(model.cfg.model_copy(update={"guidance_input": True})).eval())
    labels = torch.tensor([0, 1, 2, 3, 0])
    cfg = SamplerConfig(name="distilled", steps=steps, guidance=1.5)
    out = sample(student, process, labels, cfg, torch.Generator().manual_seed(0), "cpu")
    assert out.shape == (5, 1, 16, 16) and out.abs().max() <= 1.0
    per_image = sum(n for n, _ in student.calls) / labels.shape[0]
    assert per_image == steps  # one pass per step: guidance is an input, not a second half
    student.calls.clear()  # network batches of 2: three passes a step (each padded to MIN_ROWS)
    again = sample(student, process, labels, cfg, torch.Generator().manual_seed(0), "cpu", batch_size=2)
    assert len(student.calls) == 3 * steps and torch.allclose(again, out, atol=1e-5)
    visited = sorted({t for _, ts in student.calls for t in ts}, reverse=True)
    assert visited == trailing_timesteps(process.num_timesteps, steps)


def test_round_grids_nest_and_end_on_clean_data() -> None:
    from diffusion.config import ProcessConfig
    from diffusion.model.process import GaussianDiffusion

    process = GaussianDiffusion(ProcessConfig())
    for steps in (1, 2, 4, 8):
        grid = Grid(process, steps, torch.device("cpu"))
        assert grid.t.tolist() == trailing_timesteps(1000, steps)
        assert grid.mid.tolist() == trailing_timesteps(1000, 2 * steps)[1::2]
        assert grid.alpha[-1].item() == 1.0 and grid.sigma[-1].item() == 0.0


# --------------------------------------------------------------------------- training
def test_distillation_writes_a_student_per_step_count_and_learns_the_guided_teacher(
    teacher, tmp_path
) -> None:
    model, process, sha = teacher
    cfg = _distill_cfg(guidance_steps=100, round_steps=4, lr=2e-3, log_every=10, checkpoint_every=1000)
    data = _patterns(copies=4)
    result = distill(model, process, cfg, data, sha, tmp_path / "out", tmp_path / "resume", progress=False)
    config = student_config(tmp_path / "out")
    assert config["steps"] == [4, 2, 1] and config["teacher_sha256"] == sha
    assert config["unet"]["guidance_input"] is True
    guided = [row["loss"] for row in result.history if row["stage"] == 4]
    assert guided[-1] < guided[0]  # the student learns the guided output (one pass instead of two)
    # ... and it matches the guided teacher better than the untrained student (its conditional) did
    g = torch.Generator().manual_seed(3)
    t, labels = torch.randint(0, 1000, (16,), generator=g), torch.arange(16) % 4
    x = process.q_sample(data.images[labels], t, torch.randn((16, 1, 16, 16), generator=g))  # noised strokes
    w = torch.full((16,), 2.5)
    student, _ = load_student(tmp_path / "out", 4)
    with torch.no_grad():
        target = guided_output(model, x, t, labels, w)
        before = (model(x, t, labels) - target).pow(2).mean()
        after = (student(x, t, labels, w) - target).pow(2).mean()
    assert after < 0.5 * before, (after, before)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_killed_distillation_resumes_to_the_same_weights(teacher, tmp_path, monkeypatch, dropout) -> None:
    """Killed mid-way through a round (the third save) and resumed: every student bit for bit, dropout's
    global random stream included."""
    trained, process, sha = teacher
    model = UNet(trained.cfg.model_copy(update={"dropout": dropout}))
    model.load_state_dict(trained.state_dict())
    model.eval()
    cfg, data = _distill_cfg(), _patterns(copies=4)
    distill(model, process, cfg, data, sha, tmp_path / "whole", tmp_path / "r1", progress=False)

    saves, real_save = [], distill_module._save_state

    def killed(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 3:  # after the guidance stage's end: mid-way through the rounds
            raise KeyboardInterrupt

    monkeypatch.setattr(distill_module, "_save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        distill(model, process, cfg, data, sha, tmp_path / "parts", tmp_path / "r2", progress=False)
    monkeypatch.setattr(distill_module, "_save_state", real_save)
    distill(model, process, cfg, data, sha, tmp_path / "parts", tmp_path / "r2", progress=False)

    whole, parts = _weights(tmp_path / "whole", [4, 2, 1]), _weights(tmp_path / "parts", [4, 2, 1])
    for n in (4, 2, 1):
        for key, value in whole[n].items():
            assert torch.equal(value, parts[n][key]), (n, key)


def test_a_finished_distillation_of_other_digits_is_not_resumed(teacher, tmp_path) -> None:
    """The state of a run on other training digits (a new split or source) is ignored: the students are
    those of a fresh run on the new digits, not the old run's."""
    model, process, sha = teacher
    cfg, data = _distill_cfg(), _patterns(copies=4)
    distill(model, process, cfg, data, sha, tmp_path / "old", tmp_path / "state", progress=False)
    flipped = type(data)(images=data.images.flip(-1), labels=data.labels)
    distill(model, process, cfg, flipped, sha, tmp_path / "resumed", tmp_path / "state", progress=False)
    distill(model, process, cfg, flipped, sha, tmp_path / "fresh", tmp_path / "other", progress=False)
    resumed, fresh = _weights(tmp_path / "resumed", [4, 2, 1]), _weights(tmp_path / "fresh", [4, 2, 1])
    assert all(torch.equal(value, fresh[4][key]) for key, value in resumed[4].items())
    old = _weights(tmp_path / "old", [4])
    assert not all(torch.equal(value, old[4][key]) for key, value in resumed[4].items())


def test_a_distilled_student_samples_close_to_its_teacher_from_the_same_start(teacher, tmp_path) -> None:
    """After distilling on the four strokes, every student lands near the guided teacher's DDIM at
    teacher_steps from the same x_T, and the 1-step student far nearer than the teacher's own 1-step DDIM."""
    model, process, sha = teacher
    cfg = _distill_cfg(guidance_steps=100, round_steps=100, lr=2e-3, log_every=50, checkpoint_every=1000)
    distill(model, process, cfg, _patterns(copies=4), sha, tmp_path / "out", tmp_path / "r", progress=False)
    labels = torch.arange(16) % 4
    x_T = torch.randn((16, 1, 16, 16), generator=torch.Generator().manual_seed(7))
    errors = {}
    with torch.no_grad():
        reference = ddim_sample(model, process, x_T, labels, 2.0, 4, torch.Generator())
        for steps in (4, 2, 1):
            student, _ = load_student(tmp_path / "out", steps)
            ours = distilled_sample(student, process, x_T, labels, 2.0, steps)
            naive = ddim_sample(model, process, x_T, labels, 2.0, steps, torch.Generator())
            errors[steps] = ((ours - reference).abs().mean().item(), (naive - reference).abs().mean().item())
    assert all(ours < 0.1 for ours, _ in errors.values()), errors  # mean |error| in [-1, 1] pixels
    assert errors[1][0] < 0.7 * errors[1][1], errors


# --------------------------------------------------------------------------- the folder's checks
def test_the_student_folder_refuses_other_steps_guidance_and_teachers(teacher, tmp_path) -> None:
    model, process, sha = teacher
    distill(model, process, _distill_cfg(), _patterns(), sha, tmp_path / "s", tmp_path / "r", progress=False)
    folder = tmp_path / "s"
    assert check_student(folder, 2, 1.5, sha, "generate.sampler")["steps"] == [4, 2, 1]
    cases = [
        ((8, 1.5, sha), "generate.sampler.steps (8): the student in"),
        ((2, 5.0, sha), "generate.sampler.guidance (5) is outside [1, 3]"),
        ((2, 1.5, "0" * 64), "distilled from another teacher"),
    ]
    for args, message in cases:
        with pytest.raises(CheckpointError) as err:
            check_student(folder, *args, where="generate.sampler")
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no 8-step student"):
        load_student(folder, 8)
