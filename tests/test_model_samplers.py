"""Samplers: step-for-step agreement with diffusers' schedulers, guidance, determinism, no host sync per
step, the forward strip."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import diffusion.model.samplers.ddim as ddim_module
from diffusion.config import ProcessConfig, SamplerConfig, UNetConfig
from diffusion.data.datasets import to_uint8
from diffusion.model.forward import forward_strip
from diffusion.model.process import TABLES, GaussianDiffusion
from diffusion.model.samplers import (
    ddim_sample,
    ddpm_sample,
    device_generator,
    dpm_solver_sample,
    guided_output,
    sample,
)
from diffusion.model.samplers.spacing import trailing_timesteps
from diffusion.model.unet import UNet

LABELS = torch.tensor([0, 3, 7, 10])  # 10: the null class
GUIDANCE = 2.0


@pytest.fixture(scope="module")
def model() -> UNet:
    """A tiny random float64 U-Net with a non-zero output layer (a trained model is not needed to compare maths)."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), groups=4)).double().eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


@pytest.fixture(scope="module")
def model32(model: UNet) -> UNet:
    """A float32 copy of `model`, in eval mode: what `sample` runs in use."""
    net = UNet(model.cfg)
    net.load_state_dict(model.state_dict())
    return net.eval()


PROCESS_40 = GaussianDiffusion(ProcessConfig(timesteps=40))
SIX_LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


def _x_T(seed: int = 1) -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction"}  # diffusers' names


def _run_diffusers(scheduler, model: UNet, process: GaussianDiffusion, steps: int, seed: int = 1, **step_kw):
    """diffusers' sampling loop on our guided network output, with the same x_T (and noise stream)."""
    scheduler.alphas_cumprod = process.alphas_cumprod.clone()  # float64 schedule (diffusers keeps float32)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = guided_output(model, x, t.repeat(4), LABELS, GUIDANCE)
            x = scheduler.step(output, t, x, generator=generator, **step_kw).prev_sample
    return x


def test_trailing_spacing_matches_diffusers():
    for t_max, steps in [(1000, 50), (1000, 20), (1000, 7), (50, 50), (100, 1)]:
        scheduler = DDIMScheduler(num_train_timesteps=t_max, timestep_spacing="trailing")
        scheduler.set_timesteps(steps)
        assert trailing_timesteps(t_max, steps) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("schedule, prediction", [("cosine", "eps"), ("linear", "eps"), ("cosine", "v")])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_matches_diffusers(model: UNet, schedule: str, prediction: str, clip: bool):
    process = GaussianDiffusion(ProcessConfig(schedule=schedule, timesteps=1000, prediction=prediction))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        trained_betas=process.betas.numpy(),
        timestep_spacing="trailing",
        clip_sample=clip,
        set_alpha_to_one=True,
        prediction_type=PREDICTION_TYPE[prediction],
    )
    assert torch.allclose(scheduler.alphas_cumprod.double(), process.alphas_cumprod, atol=1e-6)  # same betas
    ref = _run_diffusers(scheduler, model, process, 10, eta=0.0, use_clipped_model_output=True)
    ours = ddim_sample(model, process, _x_T(), LABELS, GUIDANCE, 10, torch.Generator(), clip=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    if clip:
        assert ours.abs().max() <= 1.0


def test_ddim_with_eta_matches_diffusers(model: UNet):
    process = GaussianDiffusion(ProcessConfig(schedule="cosine", timesteps=1000, prediction="eps"))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, trained_betas=process.betas.numpy(), timestep_spacing="trailing"
    )
    ref = _run_diffusers(scheduler, model, process, 20, seed=5, eta=1.0, use_clipped_model_output=True)
    generator = torch.Generator().manual_seed(5)
    x_T = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    ours = ddim_sample(model, process, x_T, LABELS, GUIDANCE, 20, generator, eta=1.0)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction, steps", [("eps", 20), ("eps", 5), ("v", 20), ("v", 5)])
@pytest.mark.parametrize("clip", [True, False])
def test_dpm_solver_matches_diffusers(model: UNet, prediction: str, steps: int, clip: bool):
    process = GaussianDiffusion(ProcessConfig(schedule="cosine", timesteps=1000, prediction=prediction))
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=process.betas.numpy(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        thresholding=clip,  # dynamic thresholding capped at 1.0 is plain clipping of x0 to [-1, 1]
        sample_max_value=1.0,
        prediction_type=PREDICTION_TYPE[prediction],
    )
    ref = _run_diffusers(scheduler, model, process, steps)
    ours = dpm_solver_sample(model, process, _x_T(), LABELS, GUIDANCE, steps, clip=clip)
    # diffusers computes each update in float32; unclipped outputs of a random net reach ~1e5
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_matches_diffusers(model: UNet, prediction: str):
    process = GaussianDiffusion(
        ProcessConfig(schedule="linear", timesteps=50, beta_end=0.2, prediction=prediction)
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=50,
        trained_betas=process.betas.numpy(),
        clip_sample=True,
        variance_type="fixed_small",
        prediction_type=PREDICTION_TYPE[prediction],
    )
    ref = _run_diffusers(scheduler, model, process, 50, seed=9)
    generator = torch.Generator().manual_seed(9)
    x_T = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    ours = ddpm_sample(model, process, x_T, LABELS, GUIDANCE, generator)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_first_order_dpm_solver_equals_ddim(model: UNet):
    """DPM-Solver++ with one step per model call and no history is DDIM (Lu et al. 2022, sec. 4)."""
    process = GaussianDiffusion(ProcessConfig(timesteps=1000))
    for steps in (1, 2):  # with <= 2 steps the second-order correction never applies
        ddim = ddim_sample(model, process, _x_T(), LABELS, GUIDANCE, steps, torch.Generator())
        dpm = dpm_solver_sample(model, process, _x_T(), LABELS, GUIDANCE, steps)
        torch.testing.assert_close(dpm, ddim, rtol=1e-9, atol=1e-9)


class _Counting(torch.nn.Module):
    def __init__(self, net: UNet):
        super().__init__()
        self.net, self.null_class, self.image_shape, self.batches = net, net.null_class, net.image_shape, []
        self.null_style = net.null_style

    def forward(self, x, t, labels):
        self.batches.append(x.shape[0])
        return self.net(x, t, labels)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_guidance_is_one_batched_call_and_equals_guidance_in_eps_space(model: UNet, prediction: str):
    process = GaussianDiffusion(ProcessConfig(timesteps=1000, prediction=prediction))
    counting, x, labels = _Counting(model), _x_T(), torch.tensor([1, 2, 3, 4])
    t = torch.tensor([600, 600, 30, 999])

    def eps(w: float) -> torch.Tensor:
        return process.eps_from_output(guided_output(counting, x, t, labels, w), x, t)

    with torch.no_grad():
        eps_c = process.eps_from_output(model(x, t, labels), x, t)
        eps_u = process.eps_from_output(model(x, t, torch.full_like(labels, 10)), x, t)
        torch.testing.assert_close(eps(3.0), eps_u + 3.0 * (eps_c - eps_u))
        torch.testing.assert_close(eps(1.0), eps_c)
        torch.testing.assert_close(eps(0.0), eps_u)
    assert counting.batches == [8, 4, 4]


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(name="ddim", steps=5, guidance=2.0),
        SamplerConfig(name="ddim", steps=5, guidance=2.0, eta=1.0),
        SamplerConfig(name="dpm-solver++", steps=5, guidance=2.0),
        SamplerConfig(name="ddpm", guidance=1.0),
    ],
)
def test_sample_is_deterministic_under_a_generator(model32: UNet, cfg: SamplerConfig):
    def draw(seed: int, batch_size: int | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sample(model32, PROCESS_40, SIX_LABELS, cfg, generator, "cpu", batch_size)

    first = draw(0)
    assert first.shape == (6, 1, 8, 8) and first.dtype == torch.float32
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, draw(0))
    assert not torch.allclose(first, draw(1))
    if cfg.name == "dpm-solver++" or cfg.eta == 0.0 and cfg.name == "ddim":  # x_T drawn up front for all N
        torch.testing.assert_close(draw(0, batch_size=4), first)


def test_per_step_noise_comes_from_a_device_generator_seeded_after_x_T(model32: UNet):
    """sample(): x_T from the caller's generator, then one draw seeds the per-step noise generator."""
    cfg = SamplerConfig(name="ddpm", guidance=2.0)
    images = sample(model32, PROCESS_40, SIX_LABELS, cfg, torch.Generator().manual_seed(4), "cpu")
    caller = torch.Generator().manual_seed(4)
    x_T = torch.randn(6, 1, 8, 8, generator=caller)
    noise = device_generator(caller, "cpu")
    assert noise.device == x_T.device
    torch.testing.assert_close(images, ddpm_sample(model32, PROCESS_40, x_T, SIX_LABELS, 2.0, noise))


# ---------------------------------------------------------------------- no host sync per step
class _HostTraffic(TorchDispatchMode):
    """Records every op that reads a tensor's value into Python (`.item()`, `float(t)`, `bool(t)`, a branch
    on a tensor) or that moves data between the CPU and the device (`.cpu()`, `.to(device)` of a CPU
    tensor). On a GPU each is a host sync (or a copy) per sampler step."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.events.append(f"value read ({func})")  # a meta tensor then raises: it has no value
        out = func(*args, **kwargs)
        devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        if {"cpu", "meta"} <= devices:
            self.events.append(f"host-device copy ({func})")
        return out


META = torch.device("meta")


def _on_meta(model32: UNet) -> tuple[UNet, torch.Tensor, torch.Tensor]:
    """The network, x_T (6,1,8,8) and labels on the `meta` device: shapes without data, so any value read
    raises, and any host copy shows as a CPU-meta op. It stands in for an accelerator."""
    net = UNet(model32.cfg).eval().to(META)
    return net, torch.randn(6, 1, 8, 8, device=META), SIX_LABELS.to(META)


SAMPLERS: dict[str, Callable] = {
    "ddpm": lambda m, p, x, y, g: ddpm_sample(m, p, x, y, 2.0, g),
    "ddim": lambda m, p, x, y, g: ddim_sample(m, p, x, y, 2.0, 5, g),
    "ddim-eta": lambda m, p, x, y, g: ddim_sample(m, p, x, y, 2.0, 5, g, eta=1.0),
    "dpm-solver++": lambda m, p, x, y, g: dpm_solver_sample(m, p, x, y, 2.0, 5),
    "dpm-solver++-unguided": lambda m, p, x, y, g: dpm_solver_sample(m, p, x, y, 1.0, 5, clip=False),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sampler_loops_make_no_host_sync(model32: UNet, name: str, prediction: str):
    """Every step runs on the device: no value read back, no schedule copied from the host."""
    net, x_T, labels = _on_meta(model32)
    process = GaussianDiffusion(ProcessConfig(timesteps=40, prediction=prediction))
    with _HostTraffic() as first:
        SAMPLERS[name](net, process, x_T, labels, torch.Generator())
    # the schedule moves to the device once per process (every table one copy), not per step
    assert len(first.events) == len(TABLES) and all("_to_copy" in e for e in first.events), first.events
    with _HostTraffic() as traffic:
        out = SAMPLERS[name](net, process, x_T, labels, torch.Generator())
    assert traffic.events == [] and out.shape == x_T.shape and out.device == META


def test_the_sync_check_catches_a_value_read_and_a_copy_per_step(model32: UNet, monkeypatch):
    """The check above fails if a loop reads a value (here `.item()` on the network output) or copies the
    schedule from the host every step (here a process whose `to` leaves the tables on the CPU)."""
    net, x_T, labels = _on_meta(model32)
    process = PROCESS_40.to(META)
    real = ddim_module.guided_output

    def syncing(*args):
        out = real(*args)
        out.abs().max().item()
        return out

    monkeypatch.setattr(ddim_module, "guided_output", syncing)
    with pytest.raises(RuntimeError, match="meta"), _HostTraffic() as traffic:
        ddim_sample(net, process, x_T, labels, 2.0, 5, torch.Generator())
    assert traffic.events and "value read" in traffic.events[0]
    monkeypatch.setattr(ddim_module, "guided_output", real)

    unmoved = GaussianDiffusion(ProcessConfig(timesteps=40))
    monkeypatch.setattr(unmoved, "to", lambda device: unmoved)
    with _HostTraffic() as traffic:
        ddim_sample(net, unmoved, x_T, labels, 2.0, 5, torch.Generator())
    assert sum("host-device copy" in e for e in traffic.events) >= 5  # at least one per step


@pytest.mark.parametrize("name", ["ddim", "dpm-solver++"])
def test_bf16_sampling_returns_float32_close_to_fp32(model32: UNet, name: str):
    def draw(precision: str) -> torch.Tensor:
        cfg = SamplerConfig(name=name, steps=5, guidance=2.0)
        generator = torch.Generator().manual_seed(0)
        return sample(model32, PROCESS_40, SIX_LABELS, cfg, generator, "cpu", precision=precision)

    full, half = draw("fp32"), draw("bf16")
    assert half.dtype == torch.float32 and not torch.equal(full, half)  # the network really ran in bf16
    assert (full - half).abs().max() < 0.1  # bf16 keeps ~3 significant digits of each network output


def test_forward_strip_runs_from_clean_to_noise():
    process = GaussianDiffusion(ProcessConfig(timesteps=1000))
    x0 = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    strip = forward_strip(process, x0, 6, torch.Generator().manual_seed(1))
    assert strip.shape == (18, 12, 12) and strip.dtype == np.uint8
    rows = strip.reshape(3, 6, 12, 12).astype(float)
    assert np.array_equal(rows[:, 0], to_uint8(x0).astype(float))  # t = 0 is the digit itself
    # correlation with the digit falls from 1 to ~0 along a row
    corr = [np.corrcoef(rows[:, j].ravel(), rows[:, 0].ravel())[0, 1] for j in range(6)]
    assert corr[0] == pytest.approx(1.0) and all(a > b for a, b in zip(corr, corr[1:4], strict=False))
    assert abs(corr[-1]) < 0.15
