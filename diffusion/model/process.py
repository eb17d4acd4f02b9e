"""The Gaussian diffusion process: noise schedules, q(x_t | x_0), parameterisation conversions, training loss.

Indexing: an array index t in [0, T) is step t + 1 of Ho et al. (2020), so `alphas_cumprod[t]` is their
alpha_bar_{t+1}; index T - 1 is the noisiest state x_T and index -1 stands for clean data (alpha_bar = 1).
This is the convention of diffusers' schedulers, which the sampler tests compare against.

The process owns every schedule-derived quantity, computed once in float64 on the CPU. `process.to(device)`
gives the same process with its tables on `device` (made once per device and cached), so the lookups of a
sampling or training step gather on the device and never copy the schedule from the host; every lookup
(`at`) also routes through that cache, so a process that was not moved pays the copy once, not per step.
Python-float coefficients (`alpha_bar`) come from a host list and never read a device tensor.
It never owns a network: the model is an argument wherever one is needed.
"""

from __future__ import annotations

import copy
import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion.config import ProcessConfig


class Denoiser(Protocol):
    """A conditional network: (x_t (B,C,H,W), t (B,) int64, labels (B,) or (B, 2) int64) -> (B,C,H,W).

    Its output is eps or v as the process's `prediction` says. Label `null_class` means "no label"; a
    two-condition network's labels are rows of (digit, style), and style `null_style` means "no style".
    """

    null_class: int
    null_style: int | None  # None: the network takes digits only
    image_shape: tuple[int, int, int]  # (C, H, W) of one sample

    def __call__(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor: ...


def null_labels(model: Denoiser, labels: Tensor) -> Tensor:
    """labels with every condition dropped: (B,) -> null_class; (B, 2) -> rows of (null_class, null_style)."""
    if labels.ndim == 1:
        return torch.full_like(labels, model.null_class)
    return torch.tensor([model.null_class, model.null_style], device=labels.device).expand_as(labels)


def condition_dropped(model: Denoiser, labels: Tensor, guide: str) -> Tensor:
    """(B, 2) rows of (digit, style) with the condition that `guide` names dropped: "style" -> rows of
    (digit, null_style), "digit" -> rows of (null_class, style). Raises ValueError for digits alone (B,),
    which hold no second condition to keep."""
    if labels.ndim != 2 or model.null_style is None:
        raise ValueError(f"guide {guide!r} needs a model of digit and style and (B, 2) labels")
    dropped = labels.clone()
    if guide == "style":
        dropped[:, 1] = model.null_style
    elif guide == "digit":
        dropped[:, 0] = model.null_class
    else:
        raise ValueError(f"guide {guide!r}: expected 'style' or 'digit' (joint guidance drops both)")
    return dropped


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Ho et al. (2020) sec. 4: betas rising linearly from beta_start to beta_end. float64 (T,)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021) eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2).

    beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t), clipped at `max_beta` so the last step stays finite.
    Returns float64 (T,).
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def make_betas(cfg: ProcessConfig) -> Tensor:
    """The schedule `cfg` names. float64 (T,)."""
    if cfg.schedule == "linear":
        return linear_betas(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return cosine_betas(cfg.timesteps)


# The (T,) tables a step gathers from; `to(device)` moves exactly these.
TABLES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_variance",
    "posterior_mean_coef_x0",
    "posterior_mean_coef_xt",
)


def table_dtype(device: torch.device) -> torch.dtype:
    """float64 for the schedule tables, except on MPS, which has no float64: float32 there.

    Lookups cast to the caller's dtype (float32 in use), so MPS loses nothing in sampling; only float64
    sampling (the tests' reference comparisons) needs the float64 tables.
    """
    return torch.float32 if device.type == "mps" else torch.float64


class GaussianDiffusion:
    """Schedule tables ((T,) float64, on `self.device`) and the maths of the forward process and its
    parameterisations. Built on the CPU; `to(device)` gives the copy on an accelerator."""

    def __init__(self, cfg: ProcessConfig):
        self.cfg = cfg
        self.num_timesteps = cfg.timesteps
        self.prediction = cfg.prediction
        self.betas = make_betas(cfg)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, variance): Ho et al. eqs. 6-7.
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef_x0 = self.betas * self.alphas_cumprod_prev.sqrt() / one_minus
        self.posterior_mean_coef_xt = self.alphas.sqrt() * (1.0 - self.alphas_cumprod_prev) / one_minus
        self.device = torch.device("cpu")
        self._alpha_bar = self.alphas_cumprod.tolist()  # host floats for the samplers' coefficients
        self._on: dict[torch.device, GaussianDiffusion] = {self.device: self}  # shared by all copies

    # ------------------------------------------------------------------ device
    def to(self, device: torch.device | str) -> GaussianDiffusion:
        """This process with its tables on `device` (`table_dtype`: float64, float32 on MPS).

        Made once per device (one host-to-device copy of each table) and cached; every copy shares the
        cache, so `process.to("cuda").to("cpu")` is the original. The float64 CPU tables stay the source.
        """
        device = torch.device(device)
        if device not in self._on:
            host, moved = self._on[torch.device("cpu")], copy.copy(self)
            for name in TABLES:
                setattr(moved, name, getattr(host, name).to(device, table_dtype(device)))
            moved.device = moved.betas.device  # "cuda" -> "cuda:0": cache both spellings
            self._on[device] = self._on.setdefault(moved.device, moved)
        return self._on[device]

    # ------------------------------------------------------------------ lookups
    def at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values (T,) at timesteps t (B,) int64, as (B, 1, 1, 1) in `like`'s dtype and device.

        Gathers on the device when `values` lives there (one of `self.to(like.device)`'s tables); any other
        (T,) tensor is copied there first.
        """
        gathered = values.to(like.device)[t.to(like.device)].to(like.dtype)
        return gathered.view(-1, *([1] * (like.ndim - 1)))

    def _at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """The table `name` (see TABLES) of this process on `like`'s device, at t: (B, 1, 1, 1)."""
        return self.at(getattr(self.to(like.device), name), t, like)

    def alpha_bar(self, t: int) -> float:
        """alpha_bar at index t as a Python float (float64, from a host list: no device read); t = -1 is
        clean data, alpha_bar = 1."""
        return 1.0 if t < 0 else self._alpha_bar[t]

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Ho et al. eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. x0, noise (B,C,H,W), t (B,)."""
        return (
            self._at("sqrt_alphas_cumprod", t, x0) * x0
            + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Ho et al. eqs. 6-7: mean (B,C,H,W) and variance (B,1,1,1) of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self._at("posterior_mean_coef_x0", t, x_t) * x0 + self._at("posterior_mean_coef_xt", t, x_t) * x_t
        )
        return mean, self._at("posterior_variance", t, x_t)

    # ------------------------------------------------------------------ parameterisations
    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Eq. 4 solved for x_0: (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar). All (B,C,H,W), t (B,)."""
        sqrt_ab = self._at("sqrt_alphas_cumprod", t, x_t)
        sqrt_one_minus_ab = self._at("sqrt_one_minus_alphas_cumprod", t, x_t)
        return (x_t - sqrt_one_minus_ab * eps) / sqrt_ab

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Eq. 4 solved for eps: (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar)."""
        sqrt_ab = self._at("sqrt_alphas_cumprod", t, x_t)
        sqrt_one_minus_ab = self._at("sqrt_one_minus_alphas_cumprod", t, x_t)
        return (x_t - sqrt_ab * x0) / sqrt_one_minus_ab

    def v_target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Salimans & Ho (2022) sec. 4: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0."""
        return (
            self._at("sqrt_alphas_cumprod", t, x0) * eps
            - self._at("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """eps = sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t (the rotation inverse to `v_target`)."""
        return (
            self._at("sqrt_alphas_cumprod", t, x_t) * v
            + self._at("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
        )

    def x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v: well conditioned even where alpha_bar -> 0."""
        return (
            self._at("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._at("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def eps_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's raw output (eps or v, per `prediction`) as eps. All (B,C,H,W), t (B,)."""
        return output if self.prediction == "eps" else self.eps_from_v(x_t, t, output)

    def x0_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's raw output (eps or v) as x_0, without passing v through eps (which divides by
        sqrt(alpha_bar) ~ 5e-5 at the end of the cosine schedule). All (B,C,H,W), t (B,)."""
        return (
            self.x0_from_eps(x_t, t, output) if self.prediction == "eps" else self.x0_from_v(x_t, t, output)
        )

    def clipped_x0_eps(self, output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x_0 clipped to [-1, 1], the eps re-derived from it): what a DDIM step with clipping combines
        (GLIDE, improved-diffusion), and what progressive distillation matches, step for step."""
        x0 = self.x0_from_output(output, x_t, t).clamp(-1.0, 1.0)
        return x0, self.eps_from_x0(x_t, t, x0)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        model: Denoiser,
        x0: Tensor,
        labels: Tensor,
        generator: torch.Generator,
        p_uncond: float = 0.0,
        min_snr_gamma: float | None = None,
    ) -> Tensor:
        """Ho et al. eq. 14 (L_simple): MSE between the network output and its target (eps, or v), a scalar;
        with `min_snr_gamma`, each image's MSE weighted by `min_snr_weights` (Hang et al. 2023), then averaged.

        x0 (B,C,H,W) in [-1, 1], labels (B,) or (B, 2) int64. Timesteps t ~ U[0, T), noise and the context mask
        are drawn from `generator` on its own device, then moved to x0's device (so a CPU generator reproduces
        across devices). With probability p_uncond a row's whole condition is dropped (`null_labels`): the
        unconditional half of classifier-free guidance (Ho & Salimans 2022). A (digit, style) row then also
        drops each condition alone with probability p_uncond, so the network learns p(x | digit) and
        p(x | style) beside p(x | digit, style) and p(x), and guidance may use any of them.
        """
        b, dev = x0.shape[0], generator.device
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=dev).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
        drop = (torch.rand(b, generator=generator, device=dev) < p_uncond).to(x0.device)
        if labels.ndim == 2:
            alone = (torch.rand(labels.shape, generator=generator, device=dev) < p_uncond).to(x0.device)
            drop = drop[:, None] | alone
        labels = torch.where(drop, null_labels(model, labels), labels)
        output = model(self.q_sample(x0, t, noise), t, labels)
        target = noise if self.prediction == "eps" else self.v_target(x0, noise, t)
        if min_snr_gamma is None:
            return F.mse_loss(output.float(), target)  # float32 even when the network ran under bf16 autocast
        per_image = F.mse_loss(output.float(), target, reduction="none").mean(dim=(1, 2, 3))
        return (self.min_snr_weights(t, min_snr_gamma, target) * per_image).mean()

    def min_snr_weights(self, t: Tensor, gamma: float, like: Tensor) -> Tensor:
        """Min-SNR-gamma loss weights (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
        Strategy", ICCV 2023, eq. 10 and sec. 3.4): (B,) in `like`'s dtype and device for timesteps t (B,).

        Weighting the x_0 error by min(SNR_t, gamma), SNR_t = alpha_bar_t / (1 - alpha_bar_t), stops the
        nearly clean timesteps from dominating the gradient. A squared eps error is a squared x_0 error
        times SNR_t and a v one times SNR_t + 1, so the weight on this process's own target is
        min(SNR_t, gamma) / SNR_t (eps: 1 wherever SNR_t <= gamma) or min(SNR_t, gamma) / (SNR_t + 1) (v:
        about SNR_t at the noisiest timesteps, so those weigh far less than in L_simple).
        """
        alpha_bar = self._at("alphas_cumprod", t, like).view(-1)
        snr = alpha_bar / (1.0 - alpha_bar)  # like's dtype: float32 in training, as the shipped model
        return snr.clamp(max=gamma) / (snr if self.prediction == "eps" else snr + 1.0)
