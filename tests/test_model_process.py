"""Noise schedules, the forward process q(x_t | x_0), conversions and the training loss."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.config import ProcessConfig
from diffusion.model.process import TABLES, GaussianDiffusion, cosine_betas, linear_betas, table_dtype


def test_linear_schedule_endpoints_and_golden_values():
    process = GaussianDiffusion(ProcessConfig(schedule="linear", timesteps=1000))
    assert process.betas.dtype == torch.float64
    assert process.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert process.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    abar = process.alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]) and abar[0] < 1 and abar[-1] > 0
    # Ho et al.'s schedule ends at alpha_bar_T ~ 4e-5; the middle value computed independently with numpy.
    assert abar[-1].item() == pytest.approx(4.035829765375676e-05, rel=1e-9)
    assert abar[499].item() == pytest.approx(0.07858724288177824, rel=1e-9)


def test_cosine_schedule_matches_the_formula():
    t_max, s = 1000, 0.008

    def f(t: float) -> float:  # Nichol & Dhariwal eq. 17, before normalisation by f(0)
        return math.cos((t / t_max + s) / (1 + s) * math.pi / 2) ** 2

    process = GaussianDiffusion(ProcessConfig(schedule="cosine", timesteps=t_max))
    abar = process.alphas_cumprod
    # the product of (1 - beta) telescopes to f(t + 1) / f(0) wherever beta is not clipped
    for t, golden in [(0, 0.999958715775178), (249, 0.8470121613269047), (499, 0.49384359044063775)]:
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
        assert abar[t].item() == pytest.approx(golden, rel=1e-12)
    assert abar[0] > 0.9999 and abar[-1] < 1e-8
    assert process.betas.max().item() == pytest.approx(0.999)  # clipped at the last step
    assert torch.all(abar[1:] < abar[:-1])
    assert cosine_betas(10).shape == linear_betas(10, 1e-4, 0.02).shape == (10,)


def test_posterior_coefficients_follow_eqs_6_7():
    process = GaussianDiffusion(ProcessConfig(schedule="linear", timesteps=100))
    b, a, ab = process.betas, process.alphas, process.alphas_cumprod
    for t in (1, 50, 99):
        assert process.alphas_cumprod_prev[t] == ab[t - 1]
        assert process.posterior_variance[t].item() == pytest.approx(
            (b[t] * (1 - ab[t - 1]) / (1 - ab[t])).item()
        )
        assert process.posterior_mean_coef_x0[t].item() == pytest.approx(
            (b[t] * ab[t - 1].sqrt() / (1 - ab[t])).item()
        )
        assert process.posterior_mean_coef_xt[t].item() == pytest.approx(
            (a[t].sqrt() * (1 - ab[t - 1]) / (1 - ab[t])).item()
        )
    assert process.posterior_variance[0] == 0  # the last reverse step is deterministic: q(x_0 | x_1, x_0)


def test_posterior_is_the_empirical_conditional():
    """Draw x_{t-1} ~ q(. | x_0), x_t ~ q(x_t | x_{t-1}); regressing x_{t-1} on x_t recovers eqs. 6-7."""
    process = GaussianDiffusion(ProcessConfig(schedule="cosine", timesteps=200))
    g = torch.Generator().manual_seed(0)
    t, n, x0 = 80, 400_000, 0.7
    abar_prev = process.alphas_cumprod[t - 1]
    x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    x_t = process.alphas[t].sqrt() * x_prev + process.betas[t].sqrt() * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    slope = torch.cov(torch.stack([x_t, x_prev]))[0, 1] / x_t.var()
    intercept = x_prev.mean() - slope * x_t.mean()
    residual = x_prev - (intercept + slope * x_t)
    assert slope.item() == pytest.approx(process.posterior_mean_coef_xt[t].item(), abs=5e-3)
    assert intercept.item() == pytest.approx(process.posterior_mean_coef_x0[t].item() * x0, abs=5e-3)
    assert residual.var().item() == pytest.approx(process.posterior_variance[t].item(), rel=1e-2)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_process_mean_and_variance(schedule: str):
    process = GaussianDiffusion(ProcessConfig(schedule=schedule, timesteps=1000))
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(1, 1, 4, 4, generator=g) * 2 - 1
    n = 100_000
    for t in (0, 300, 999):
        times = torch.full((n,), t)
        x_t = process.q_sample(x0.expand(n, -1, -1, -1), times, torch.randn(n, 1, 4, 4, generator=g))
        abar = process.alphas_cumprod[t].item()
        assert torch.allclose(x_t.mean(0), math.sqrt(abar) * x0[0], atol=0.015)
        assert torch.allclose(x_t.var(0), torch.full_like(x0[0], 1 - abar), rtol=0.03, atol=1e-4)


def test_conversions_invert_each_other():
    process = GaussianDiffusion(ProcessConfig(timesteps=1000, prediction="v"))
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(6, 1, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 100, 500, 900, 998])
    x_t = process.q_sample(x0, t, eps)
    torch.testing.assert_close(process.x0_from_eps(x_t, t, eps), x0)
    torch.testing.assert_close(process.eps_from_x0(x_t, t, x0), eps)
    v = process.v_target(x0, eps, t)
    torch.testing.assert_close(process.eps_from_v(x_t, t, v), eps)
    torch.testing.assert_close(process.x0_from_v(x_t, t, v), x0)
    torch.testing.assert_close(process.eps_from_output(v, x_t, t), eps)
    torch.testing.assert_close(process.x0_from_output(v, x_t, t), x0)
    eps_process = GaussianDiffusion(ProcessConfig(timesteps=1000, prediction="eps"))
    torch.testing.assert_close(eps_process.x0_from_output(eps, x_t, t), x0)
    # schedule arrays are float64; `at` casts to the caller's dtype
    assert process.at(process.betas, t, x0.float()).dtype == torch.float32


def test_to_device_moves_the_tables_once_and_keeps_float64():
    process = GaussianDiffusion(ProcessConfig(timesteps=100))
    assert process.to("cpu") is process and process.device == torch.device("cpu")
    meta = process.to("meta")  # stands in for an accelerator: a device other than the CPU
    assert meta is process.to(torch.device("meta")) and meta.to("cpu") is process  # cached, one per device
    for name in TABLES:
        table = getattr(meta, name)
        assert table.device.type == "meta" and table.dtype == torch.float64 and table.shape == (100,)
        assert getattr(process, name).device.type == "cpu"  # the float64 host tables stay the source
    assert meta.device.type == "meta" and meta.num_timesteps == 100 and meta.prediction == process.prediction
    assert table_dtype(torch.device("mps")) == torch.float32  # MPS has no float64
    assert table_dtype(torch.device("cuda")) == torch.float64


def test_alpha_bar_is_a_host_float_and_lookups_gather_on_the_device():
    process = GaussianDiffusion(ProcessConfig(timesteps=100))
    meta = process.to("meta")
    for t in (0, 37, 99):
        assert isinstance(meta.alpha_bar(t), float) and meta.alpha_bar(t) == process.alphas_cumprod[t].item()
    assert meta.alpha_bar(-1) == 1.0
    x = torch.zeros(3, 1, 4, 4, device="meta")
    t = torch.tensor([0, 5, 99], device="meta")
    out = process.q_sample(x, t, x)  # an unmoved process looks up through its cached device copy
    assert out.device.type == "meta" and out.dtype == torch.float32


class _Recorder(torch.nn.Module):
    """Predicts zeros and remembers the last labels and timesteps it saw."""

    null_class = 10
    null_style = None
    image_shape = (1, 4, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.t, self.labels = t, labels
        return torch.zeros_like(x)


@pytest.mark.parametrize("p_uncond, expected", [(0.0, 0.0), (1.0, 1.0), (0.3, 0.3)])
def test_loss_masks_labels_to_the_null_class(p_uncond: float, expected: float):
    process = GaussianDiffusion(ProcessConfig(timesteps=50, prediction="eps"))
    model = _Recorder()
    labels = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(0))
    x0 = torch.zeros(4000, 1, 4, 4)
    loss = process.loss(model, x0, labels, torch.Generator().manual_seed(3), p_uncond=p_uncond)
    masked = model.labels == 10
    assert masked.float().mean().item() == pytest.approx(expected, abs=0.03)
    assert torch.equal(model.labels[~masked], labels[~masked])
    assert loss.item() == pytest.approx(1.0, abs=0.02)  # zero prediction: E[eps^2] = 1
    assert model.t.min() >= 0 and model.t.max() < 50


def test_loss_target_is_v_for_v_prediction():
    """A model that outputs the true target has zero loss: eps for eps-prediction, v for v-prediction."""
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1

    class Oracle(_Recorder):
        def __init__(self, process: GaussianDiffusion):
            super().__init__()
            self.process = process

        def forward(self, x, t, labels):  # recover eps from x_t and the known x0
            eps = self.process.eps_from_x0(x, t, x0)
            return eps if self.process.prediction == "eps" else self.process.v_target(x0, eps, t)

    for prediction in ("eps", "v"):
        process = GaussianDiffusion(ProcessConfig(timesteps=50, prediction=prediction))
        loss = process.loss(
            Oracle(process), x0, torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(0)
        )
        assert loss.item() < 1e-10


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_loss_weighs_the_x0_error_by_min_snr_gamma(prediction: str):
    """Hang et al. 2023: the weighted loss of an output whose x_0 is off by delta is min(SNR_t, gamma) x the
    mean squared delta, for either target; without gamma it is L_simple (SNR_t, or SNR_t + 1, x that)."""
    process = GaussianDiffusion(ProcessConfig(timesteps=100, prediction=prediction))
    x0 = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    delta = torch.linspace(-0.3, 0.3, 64).view(64, 1, 1, 1).expand_as(x0)

    class OffByDelta(_Recorder):
        def forward(self, x, t, labels):  # the target for x_0 + delta, given x_t
            super().forward(x, t, labels)
            eps = process.eps_from_x0(x, t, x0 + delta)
            return eps if prediction == "eps" else process.v_target(x0 + delta, eps, t)

    model = OffByDelta()
    labels = torch.zeros(64, dtype=torch.long)
    weighted = process.loss(model, x0, labels, torch.Generator().manual_seed(0), min_snr_gamma=5.0)
    alpha_bar = process.alphas_cumprod[model.t]
    snr = alpha_bar / (1 - alpha_bar)
    per_image = delta.pow(2).mean(dim=(1, 2, 3)).double()
    assert weighted.item() == pytest.approx((snr.clamp(max=5.0) * per_image).mean().item(), rel=1e-4)
    assert (snr < 5).any() and (snr > 5).any()  # both sides of the clamp were drawn

    model = OffByDelta()
    plain = process.loss(model, x0, labels, torch.Generator().manual_seed(0))
    alpha_bar = process.alphas_cumprod[model.t]
    snr = alpha_bar / (1 - alpha_bar)
    factor = snr if prediction == "eps" else snr + 1
    assert plain.item() == pytest.approx((factor * per_image).mean().item(), rel=1e-4)
