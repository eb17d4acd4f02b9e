"""Samplers of the reverse process; `sample` draws x_T and runs the one `SamplerConfig` names."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion.config import SamplerConfig
from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.samplers.ddim import ddim_sample
from diffusion.model.samplers.ddpm import ddpm_sample
from diffusion.model.samplers.dpm_solver import dpm_solver_sample
from diffusion.model.samplers.guidance import guided_output
from diffusion.precision import autocast

__all__ = ["ddim_sample", "ddpm_sample", "dpm_solver_sample", "guided_output", "sample"]


@torch.no_grad()
def sample(
    model: Denoiser,
    process: GaussianDiffusion,
    labels: Tensor,
    cfg: SamplerConfig,
    generator: torch.Generator,
    device: torch.device | str,
    batch_size: int | None = None,
) -> Tensor:
    """Generate one image per label: labels (N,) int64 -> x_0 float32 (N, C, H, W) in [-1, 1] on `device`.

    All N starting points x_T are drawn first from `generator` (on the generator's device), so the
    deterministic samplers (ddim with eta = 0, dpm-solver++) give the same images for any `batch_size`;
    the network sees at most `batch_size` images (2x that with guidance) at once, in `cfg.precision`.
    """
    n = labels.shape[0]
    x_T = torch.randn((n, *model.image_shape), generator=generator, device=generator.device).to(device)
    labels = labels.to(device)
    size = batch_size or max(n, 1)
    out = []
    for x_chunk, y_chunk in zip(x_T.split(size), labels.split(size), strict=True):
        with autocast(device, cfg.precision):
            out.append(_run(model, process, x_chunk, y_chunk, cfg, generator))
    return torch.cat(out) if out else x_T


def _run(
    model: Denoiser,
    process: GaussianDiffusion,
    x_chunk: Tensor,
    y_chunk: Tensor,
    cfg: SamplerConfig,
    generator: torch.Generator,
) -> Tensor:
    """The sampler `cfg.name` on one chunk: x_T (B,C,H,W), labels (B,) -> x_0 (B,C,H,W)."""
    if cfg.name == "ddpm":
        return ddpm_sample(model, process, x_chunk, y_chunk, cfg.guidance, generator)
    if cfg.name == "ddim":
        return ddim_sample(model, process, x_chunk, y_chunk, cfg.guidance, cfg.steps, generator, eta=cfg.eta)
    if cfg.name == "dpm-solver++":
        return dpm_solver_sample(model, process, x_chunk, y_chunk, cfg.guidance, cfg.steps)
    raise ValueError(f"unknown sampler {cfg.name!r}")
