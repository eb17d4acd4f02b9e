"""How the digits were drawn: the samplers' step callback, and the seeded trajectory grid on a tiny random
U-Net (the one tests/generate_fixtures.py saves)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.config import ProcessConfig, SamplerConfig
from diffusion.model.process import GaussianDiffusion
from diffusion.model.samplers import ddim_sample, ddpm_sample, dpm_solver_sample
from diffusion.model.saved import new_model
from diffusion.quality.trajectory import (
    chosen_steps,
    draw_trajectory,
    save_trajectory_grid,
    trajectory_grid,
    visited_timesteps,
)
from tests.generate_fixtures import TINY_DIFFUSION

PROCESS = GaussianDiffusion(ProcessConfig(timesteps=40))
SAMPLERS = {
    "ddpm": (lambda m, x, y, g, **kw: ddpm_sample(m, PROCESS, x, y, 2.0, g, **kw), 40),
    "ddim": (lambda m, x, y, g, **kw: ddim_sample(m, PROCESS, x, y, 2.0, 6, g, **kw), 6),
    "ddim-eta": (lambda m, x, y, g, **kw: ddim_sample(m, PROCESS, x, y, 2.0, 6, g, eta=1.0, **kw), 6),
    "dpm-solver++": (lambda m, x, y, g, **kw: dpm_solver_sample(m, PROCESS, x, y, 2.0, 6, **kw), 6),
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return new_model(TINY_DIFFUSION, "cpu").eval()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_callback_sees_every_step_and_changes_nothing(model, name: str) -> None:
    run, steps = SAMPLERS[name]
    x_T = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 4, 9])
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    plain = run(model, x_T, labels, torch.Generator().manual_seed(2))
    watched = run(
        model,
        x_T,
        labels,
        torch.Generator().manual_seed(2),
        callback=lambda i, x, x0: seen.append((i, x, x0)),
    )
    assert torch.equal(plain, watched)  # the same noise draws, the same result
    assert [i for i, _, _ in seen] == list(range(steps))
    assert torch.equal(seen[0][1], x_T)  # the first step's input is x_T
    assert all(x.shape == x0.shape == x_T.shape for _, x, x0 in seen)
    assert all(x0.abs().max() <= 1.0 for _, _, x0 in seen)  # the clipped prediction the sampler uses
    torch.testing.assert_close(seen[-1][2], watched, atol=1e-5, rtol=0)  # the last prediction is the result


def test_chosen_and_visited_steps() -> None:
    assert (
        chosen_steps(10, 5) == [0, 2, 4, 7, 9] and chosen_steps(2, 5) == [0, 1] and chosen_steps(1, 5) == [0]
    )
    assert visited_timesteps(SamplerConfig(name="ddim", steps=4), 1000) == [999, 749, 499, 249]
    assert visited_timesteps(SamplerConfig(name="ddpm", steps=4), 40) == list(range(39, -1, -1))
    with pytest.raises(ValueError):
        chosen_steps(0, 5)


@pytest.mark.parametrize(
    "cfg",
    [SamplerConfig(name="ddim", steps=8, guidance=3.0, eta=1.0), SamplerConfig(name="dpm-solver++", steps=3)],
    ids=["ddim-eta", "dpm-solver++"],
)
def test_the_trajectory_grid_has_its_shape_and_is_seeded(model, cfg: SamplerConfig, tmp_path) -> None:
    process = GaussianDiffusion(TINY_DIFFUSION.process)
    traj = draw_trajectory(model, process, cfg, seed=5, columns=5)
    k = min(5, cfg.steps)
    assert (
        traj.total == cfg.steps
        and len(traj.steps) == k
        and traj.steps[0] == 0
        and traj.steps[-1] == cfg.steps - 1
    )
    assert traj.timesteps == [visited_timesteps(cfg, 1000)[i] for i in traj.steps]
    assert traj.x_t.shape == traj.x0.shape == (k, 10, 28, 28) and traj.x_t.dtype == np.uint8
    assert np.array_equal(traj.x0[-1], traj.final)  # the last step's prediction is what the sampler returned
    image = trajectory_grid(traj)
    assert image.shape == (10 * 30 + 2, 2 * k * 30 + 2)  # a row per class, (x_t, x0) per recorded step
    cell = image[2 + 3 * 30 : 2 + 3 * 30 + 28, 2 + 30 : 2 + 30 + 28]  # class 3, x0 of the first recorded step
    assert np.array_equal(cell, traj.x0[0, 3])
    again = draw_trajectory(model, process, cfg, seed=5, columns=5)
    assert np.array_equal(trajectory_grid(again), image)  # the same seed, the same pixels
    other = draw_trajectory(model, process, cfg, seed=6, columns=5)
    assert not np.array_equal(other.x_t[0], traj.x_t[0])  # another seed, another x_T
    save_trajectory_grid(traj, tmp_path / "t.png", scale=2)
    from PIL import Image

    with Image.open(tmp_path / "t.png") as img:
        assert img.size == (image.shape[1] * 2, image.shape[0] * 2) and img.mode == "L"


def test_more_sampler_steps_than_timesteps_is_an_error(model) -> None:
    with pytest.raises(ValueError, match="timesteps"):
        draw_trajectory(model, PROCESS, SamplerConfig(name="ddim", steps=50))
