"""One model, two conditions: digit and style, each with its own null row, trained on a mix of styles and
guided jointly; single-style data and checkpoints stay exactly what they were."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffusion.config import ConfigError, SamplerConfig, parse_params
from diffusion.data.datasets import to_uint8
from diffusion.model.process import GaussianDiffusion, condition_dropped, null_labels
from diffusion.model.samplers import guided_output, sample
from diffusion.model.saved import load_diffusion
from diffusion.model.train import train_diffusion
from diffusion.model.unet import UNet
from diffusion.quality.report_styles import _interpolation, blended, style_interpolation
from diffusion.quality.trajectory import draw_trajectory


def _config(steps: int, **unet: object):
    raw = {
        "unet": {"image_size": 16, "base_channels": 16, "channel_mults": [1, 2], "attention": False}
        | {"num_classes": 4}
        | unet,
        "process": {"timesteps": 200},
        "train": {"batch_size": 32, "steps": steps, "lr": 5e-3, "warmup_steps": 10, "ema_decay": 0.9}
        | {"checkpoint_every": 1000, "log_every": 25, "val_batches": 1, "p_uncond": 0.2},
    }
    return parse_params({"diffusion": raw}).diffusion


def _two_styles(copies: int) -> SimpleNamespace:
    """Four strokes (labels 0-3) in two styles: 0 white on black, 1 black on white. (8 * copies) images."""
    z = -torch.ones(4, 16, 16)
    z[0, 4:12, 4:12] = 1
    z[1, :, 7:9] = 1
    z[2, 7:9, :] = 1
    z[3, torch.arange(16), torch.arange(16)] = 1
    images = torch.cat([z, -z]).unsqueeze(1).repeat(copies, 1, 1, 1)
    styles = torch.tensor([0] * 4 + [1] * 4).repeat(copies)
    return SimpleNamespace(images=images, labels=torch.arange(4).repeat(2 * copies), styles=styles)


def test_null_labels_drop_each_condition() -> None:
    net = UNet(_config(1).unet.model_copy(update={"num_styles": 3}))
    assert net.null_class == 4 and net.null_style == 3
    assert torch.equal(null_labels(net, torch.tensor([1, 2])), torch.tensor([4, 4]))
    assert torch.equal(null_labels(net, torch.tensor([[1, 0], [2, 2]])), torch.tensor([[4, 3], [4, 3]]))
    plain = UNet(_config(1).unet)
    assert plain.null_style is None and plain.style_emb is None
    assert not any("style" in name for name in plain.state_dict())  # today's checkpoints, key for key


def test_style_guidance_guides_the_style_alone() -> None:
    """guide: style is eps(c, ∅) + w (eps(c, s) - eps(c, ∅)) in one batch of 2B; joint guidance is unchanged;
    digits alone have no style to guide; and the dump of the default leaves the new key out (run keys)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNet(_config(1).unet.model_copy(update={"num_styles": 2})).eval()
        torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # a new U-Net predicts 0 for every label
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 50, 150])
    labels = torch.tensor([[0, 1], [2, 0], [3, 1]])
    no_style = condition_dropped(net, labels, "style")
    assert torch.equal(no_style, torch.tensor([[0, 2], [2, 2], [3, 2]])) and labels[0, 1] == 1  # a copy
    no_digit = condition_dropped(net, labels, "digit")
    assert torch.equal(no_digit, torch.tensor([[4, 1], [4, 0], [4, 1]])) and labels[0, 0] == 0
    with torch.no_grad():
        cond, digit_only, style_only, neither = (
            net(x, t, labels),
            net(x, t, no_style),
            net(x, t, no_digit),
            net(x, t, null_labels(net, labels)),
        )
        styled = guided_output(net, x, t, labels, 2.5, unguided=no_style)
        digited = guided_output(net, x, t, labels, 2.5, unguided=no_digit)
        joint = guided_output(net, x, t, labels, 2.5)
    torch.testing.assert_close(styled, digit_only + 2.5 * (cond - digit_only), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(digited, style_only + 2.5 * (cond - style_only), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(joint, neither + 2.5 * (cond - neither), rtol=1e-4, atol=1e-5)
    assert (styled - joint).abs().max() > 1e-3 and (digit_only - neither).abs().max() > 1e-3  # not all alike
    cfg = SamplerConfig(name="ddim", steps=3, guidance=2.0, guide="style")
    process = GaussianDiffusion(_config(1).process)
    drawn = sample(net, process, labels, cfg, torch.Generator().manual_seed(0), "cpu")
    assert drawn.shape == (3, 1, 16, 16) and torch.isfinite(drawn).all()
    on_digit = sample(
        net,
        process,
        labels,
        cfg.model_copy(update={"guide": "digit"}),
        torch.Generator().manual_seed(0),
        "cpu",
    )
    assert on_digit.shape == drawn.shape and not torch.equal(on_digit, drawn)
    with pytest.raises(ValueError, match="guide 'style' needs a model of digit and style"):
        sample(net, process, labels[:, 0], cfg, torch.Generator().manual_seed(0), "cpu")
    # the report's "how these digits were drawn" of such a version: every digit in one style
    traj = draw_trajectory(net, process, cfg, seed=0, columns=2, classes=(0, 3), style=1)
    assert traj.final.shape == (2, 16, 16)
    from diffusion.quality.report_page import _Model, _style_of

    printed_first = SimpleNamespace(
        manifest={"counts": {"23": {}, "17": {}}, "model": {}}
    )  # printed/7, uci/3
    drawing = (_Model(net, process, "", "cpu"), cfg, 0)
    assert _style_of(printed_first, drawing) == 1  # the version's first requested (digit, style) cell
    assert _style_of(printed_first, (drawing[0], SamplerConfig(guide="all"), 0)) is None  # any style
    from diffusion.data.card import _guide

    assert _guide({"guide": "style", "guidance": 1.5}) == " on the style alone"  # what the card says
    assert (
        _guide({"guidance": 1.5}) == _guide({"guide": "style", "guidance": 1.0}) == ""
    )  # joint; no guidance
    assert "guide" not in SamplerConfig().model_dump() and cfg.model_dump()["guide"] == "style"
    with pytest.raises(ConfigError, match="sampler.guide: style guides a condition of a requested style"):
        parse_params({"diffusion": {"sampler": {"guide": "style"}}})


def test_two_condition_model_draws_the_requested_style(tmp_path: Path) -> None:
    cfg, data = _config(250), _two_styles(copies=8)
    result = train_diffusion(cfg, data, data, tmp_path / "model", tmp_path / "state", progress=False)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["config"]["unet"]
    assert saved["num_styles"] == 3 and result.metrics["val_loss"] < 0.3

    model, process = load_diffusion(tmp_path / "model")
    assert model.null_style == 3
    digits = torch.arange(4).repeat(4)
    for style, ink_is_bright in ((0, True), (1, False)):
        labels = torch.stack([digits, torch.full_like(digits, style)], dim=1)
        for guidance in (1.0, 2.0):
            x = sample(model, process, labels, SamplerConfig(name="ddim", steps=20, guidance=guidance),
                       torch.Generator().manual_seed(0), "cpu")  # fmt: skip
            mean = to_uint8(x).astype(float).mean()
            # style 0 is mostly black (ink < 1/4 of the pixels); style 1 mostly white
            assert (mean < 100) if ink_is_bright else (mean > 155), (style, guidance, mean)
    # between the two styles (same x_T, style embedding blended): from dark to bright
    row = style_interpolation(
        model, process, [2, 2, 2, 2], 0, 1, [0.0, 0.5, 1.0], SamplerConfig(name="ddim", steps=20), 0
    )  # digit-major: four rows of three blends
    means = to_uint8(row).reshape(4, 3, -1).astype(float).mean(axis=(0, 2))
    assert row.shape == (12, 1, 16, 16) and means[0] < 100 < 155 < means[2], means
    with pytest.raises(ValueError, match="knows one style"):
        blended(UNet(_config(1).unet), 0, 1, 0.5)
    # the report's picture: drawn with the version's sampler, or a line saying why not (never a traceback)
    drawn = SimpleNamespace(network=model, process=process)
    styles = ["handwritten-mnist", "printed"]
    picture, _ = _interpolation(styles, (drawn, SamplerConfig(name="ddim", steps=4), 0), tmp_path, 1)
    assert picture["from"] == "handwritten-mnist" and (tmp_path / picture["src"]).is_file()
    distilled = SamplerConfig(name="distilled", steps=4)
    picture, status = _interpolation(styles, (drawn, distilled, 0), tmp_path, 1)
    assert picture is None and status.startswith("not drawn: this network has no guidance input")
    # digits alone mean "any style": the null style row, and still a digit-shaped image
    x = sample(model, process, digits, SamplerConfig(name="ddim", steps=20, guidance=2.0),
               torch.Generator().manual_seed(0), "cpu")  # fmt: skip
    assert x.shape == (16, 1, 16, 16) and torch.isfinite(x).all()


def test_single_style_data_trains_todays_model(tmp_path: Path) -> None:
    """One style (or none recorded): no style condition, the checkpoint in today's format, the same weights."""
    cfg, data = _config(8), _two_styles(copies=1)
    one = SimpleNamespace(
        images=data.images[:4], labels=data.labels[:4], styles=torch.zeros(4, dtype=torch.long)
    )
    bare = SimpleNamespace(images=data.images[:4], labels=data.labels[:4])
    train_diffusion(cfg, one, one, tmp_path / "a", tmp_path / "sa", progress=False)
    train_diffusion(cfg, bare, bare, tmp_path / "b", tmp_path / "sb", progress=False)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["config"]["unet"]
    assert "num_styles" not in saved
    assert (tmp_path / "a" / "ema.safetensors").read_bytes() == (
        tmp_path / "b" / "ema.safetensors"
    ).read_bytes()


def test_loss_drops_digit_and_style_alone_and_together() -> None:
    """p_uncond drops a row's whole condition; a (digit, style) row also drops each alone."""
    seen: list[torch.Tensor] = []

    class Spy(UNet):
        def forward(self, x, t, labels, guidance=None):  # noqa: ANN001, ANN201
            seen.append(labels)
            return super().forward(x, t, labels, guidance)

    net = Spy(_config(1).unet.model_copy(update={"num_styles": 3}))
    process = GaussianDiffusion(_config(1).process)
    labels = torch.stack([torch.arange(4000) % 4, torch.arange(4000) % 3], dim=1)
    process.loss(net, torch.zeros(4000, 1, 16, 16), labels, torch.Generator().manual_seed(0), p_uncond=0.2)
    digit_null, style_null = (seen[0][:, 0] == 4), (seen[0][:, 1] == 3)
    both = (digit_null & style_null).float().mean().item()
    assert abs(both - (0.2 + 0.8 * 0.04)) < 0.03  # the joint null, for guidance
    assert abs((digit_null & ~style_null).float().mean().item() - 0.8 * 0.16) < 0.03
    assert abs((style_null & ~digit_null).float().mean().item() - 0.8 * 0.16) < 0.03


def test_a_two_condition_teacher_distils_into_a_student_of_styles(tmp_path: Path) -> None:
    from diffusion.model.distill import distill
    from diffusion.model.samplers import distilled_sample
    from diffusion.model.student import load_student
    from tests.test_distill import _distill_cfg

    cfg, data = _config(20), _two_styles(copies=2)
    train_diffusion(cfg, data, data, tmp_path / "teacher", tmp_path / "state", progress=False)
    teacher, process = load_diffusion(tmp_path / "teacher")
    distill(
        teacher,
        process,
        _distill_cfg(),
        data,
        "sha",
        tmp_path / "student",
        tmp_path / "resume",
        progress=False,
    )
    student, _ = load_student(tmp_path / "student", 2)
    assert student.null_style == 3 and student.cfg.guidance_input
    labels = torch.tensor([[1, 0], [1, 1]])
    x = distilled_sample(student, process, torch.randn(2, 1, 16, 16), labels, 1.5, 2)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()


def test_other_style_weights_never_resume_a_state(tmp_path: Path) -> None:
    """The style weights decide the draws, so a state saved under other weights is not continued."""
    cfg, data = _config(6), _two_styles(copies=1)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoint_every": 3})})
    runs = {}
    for name, weights, state in (
        ("even", None, "s"),
        ("skewed", {"printed": 50.0}, "s"),
        ("fresh", {"printed": 50.0}, "f"),
    ):
        train_diffusion(
            cfg, data, data, tmp_path / name, tmp_path / state, progress=False, style_weights=weights
        )
        runs[name] = (tmp_path / name / "ema.safetensors").read_bytes()
    assert runs["skewed"] == runs["fresh"] != runs["even"]
    meta = json.loads((tmp_path / "even" / "config.json").read_text())["meta"]
    assert meta["styles"] == ["handwritten-mnist", "printed"]
