"""Samplers of the reverse process; `sample_blocks` (and `sample`, one block) draws x_T and runs the one
`SamplerConfig` names."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffusion.config import SamplerConfig
from diffusion.model.process import Denoiser, GaussianDiffusion, condition_dropped
from diffusion.model.samplers.batching import Generators, NetworkBatches, StepCallback
from diffusion.model.samplers.ddim import ddim_sample
from diffusion.model.samplers.ddpm import ddpm_sample
from diffusion.model.samplers.distilled import distilled_sample
from diffusion.model.samplers.dpm_solver import dpm_solver_sample
from diffusion.model.samplers.guidance import guided_output
from diffusion.precision import Precision, autocast

__all__ = [
    "StepCallback",
    "ddim_sample",
    "ddpm_sample",
    "device_generator",
    "distilled_sample",
    "dpm_solver_sample",
    "guided_output",
    "sample",
    "sample_blocks",
]


def device_generator(generator: torch.Generator, device: torch.device | str) -> torch.Generator:
    """A new generator on `device`, seeded by one 63-bit draw from `generator` (which advances by it)."""
    seed = int(torch.randint(2**63 - 1, (), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def sample_blocks(
    model: Denoiser,
    process: GaussianDiffusion,
    labels: Tensor,
    cfg: SamplerConfig,
    generators: Sequence[torch.Generator],
    device: torch.device | str,
    precision: Precision = "fp32",
    network_batch: int | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Generate one image per label, the batch made of seed blocks: labels (N,) int64 (or (N, 2) rows of
    (digit, style) for a two-condition model), N = k x rows for k
    generators -> x_0 float32 (N, C, H, W) in [-1, 1] on `device`.

    Block i (rows i*rows ... (i+1)*rows - 1) takes its starting points x_T from `generators[i]` on that
    generator's own device (pass CPU generators: the same x_T on any device), moved to `device` once; its
    per-step noise (ddpm, ddim with eta > 0) comes from a generator on `device` seeded by one draw from
    `generators[i]` after x_T (`device_generator`; a CUDA noise stream is not the CPU's). So an image depends
    on its block alone, never on the other blocks in the batch. All N images step together; the network sees
    at most `network_batch` images per forward pass (`NetworkBatches`; 2N rows per step with guidance), in
    `precision`. The schedule lives on `device` (`process.to`), and the loops read no tensor back to the host.
    `callback(i, x_t, x0)`: see each step's input and x_0 prediction (the samplers' argument; None: no cost).
    """
    device = torch.device(device)
    n, k = labels.shape[0], len(generators)
    if k == 0 or n % k:
        raise ValueError(f"{n} labels cannot be cut into {k} equal seed blocks")
    shape = (n // k, *model.image_shape)
    x_T = torch.cat([torch.randn(shape, generator=g, device=g.device) for g in generators]).to(device)
    noise = [device_generator(g, device) for g in generators]
    net = NetworkBatches(model, network_batch) if network_batch else model
    with autocast(device, precision):
        return _run(net, process.to(device), x_T, labels.to(device), cfg, noise, callback)


def sample(
    model: Denoiser,
    process: GaussianDiffusion,
    labels: Tensor,
    cfg: SamplerConfig,
    generator: torch.Generator,
    device: torch.device | str,
    batch_size: int | None = None,
    precision: Precision = "fp32",
    callback: StepCallback | None = None,
) -> Tensor:
    """Generate one image per label from one generator: labels (N,) int64 -> x_0 float32 (N, C, H, W) in
    [-1, 1] on `device`; `sample_blocks` with a single block (`batch_size`: the network batch).

    All N starting points x_T are drawn first from `generator` (pass a CPU generator: the same x_T on any
    device), and every step's noise is one draw for all N, so every sampler gives the same images for any
    `batch_size` and, for the deterministic ones (ddim with eta = 0, dpm-solver++), up to floating point on
    any device.
    """
    return sample_blocks(model, process, labels, cfg, [generator], device, precision, batch_size, callback)


def _run(
    model: Denoiser,
    process: GaussianDiffusion,
    x_chunk: Tensor,
    y_chunk: Tensor,
    cfg: SamplerConfig,
    noise: Generators,
    callback: StepCallback | None = None,
) -> Tensor:
    """The sampler `cfg.name`: x_T (B,C,H,W), labels (B,) -> x_0 (B,C,H,W); noise generators on their device.
    `cfg.guide` "style" or "digit" guides along that condition alone (`guided_output`): it needs (B, 2)
    labels of a model of digit and style (else ValueError), and the config keeps it from students."""
    # once, not per step: the unguided half's labels
    unguided = condition_dropped(model, y_chunk, cfg.guide) if cfg.guide != "all" else None
    if cfg.name == "ddpm":
        return ddpm_sample(
            model, process, x_chunk, y_chunk, cfg.guidance, noise, callback=callback, unguided=unguided
        )
    if cfg.name == "ddim":
        return ddim_sample(
            model, process, x_chunk, y_chunk, cfg.guidance, cfg.steps, noise, eta=cfg.eta, callback=callback,
            unguided=unguided,
        )  # fmt: skip
    if cfg.name == "dpm-solver++":
        return dpm_solver_sample(
            model, process, x_chunk, y_chunk, cfg.guidance, cfg.steps, callback=callback, unguided=unguided
        )
    if cfg.name == "distilled":  # `model` is a student (diffusion.model.student.load_student)
        return distilled_sample(model, process, x_chunk, y_chunk, cfg.guidance, cfg.steps, callback=callback)
    raise ValueError(f"unknown sampler {cfg.name!r}")
