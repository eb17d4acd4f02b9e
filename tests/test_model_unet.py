"""The conditional U-Net: shapes, conditioning on time and label, the null class, size of the default."""

from __future__ import annotations

import pytest
import torch

from diffusion.config import UNetConfig
from diffusion.model.unet import UNet, timestep_embedding


def _randomised(cfg: UNetConfig) -> UNet:
    """A U-Net whose zero-initialised output conv is made random, so its output is not identically 0."""
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    return model


def test_default_config_is_cpu_sized():
    n = sum(p.numel() for p in UNet(UNetConfig()).parameters())
    assert 0.3e6 <= n <= 1.5e6


@pytest.mark.parametrize(
    "cfg",
    [
        UNetConfig(),  # 28 -> 14 -> 7 with attention
        UNetConfig(
            image_size=16, base_channels=8, channel_mults=(1, 2), num_res_blocks=2, attention=False, groups=4
        ),
        UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 1, 2, 2), groups=8),
    ],
)
def test_shapes_are_kept(cfg: UNetConfig):
    model = _randomised(cfg)
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    out = model(x, torch.tensor([0, 10, 999]), torch.tensor([0, 5, cfg.num_classes]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert model.image_shape == (cfg.in_channels, cfg.image_size, cfg.image_size)
    assert model.null_class == cfg.num_classes


def test_output_depends_on_label_and_time_and_null_class_works():
    model = _randomised(UNetConfig())
    x = torch.randn(1, 1, 28, 28).expand(3, -1, -1, -1)
    with torch.no_grad():
        out = model(x, torch.tensor([500, 500, 500]), torch.tensor([3, 7, 10]))  # 10 = null class
        later = model(x[:1], torch.tensor([900]), torch.tensor([3]))
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert not torch.allclose(out[0], out[2], atol=1e-4)
    assert not torch.allclose(out[0], later[0], atol=1e-4)
    with pytest.raises(IndexError):
        model(x[:1], torch.tensor([500]), torch.tensor([11]))


def test_starts_as_the_zero_predictor_and_gradients_reach_the_label_embedding():
    model = UNet(UNetConfig(image_size=16, base_channels=8, channel_mults=(1, 2), groups=4))
    x = torch.randn(2, 1, 16, 16)
    out = model(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert torch.count_nonzero(out) == 0
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    model(x, torch.tensor([1, 2]), torch.tensor([0, 1])).square().mean().backward()
    grad = model.label_emb.weight.grad
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() == 0


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 33)
    assert emb.shape == (3, 33)
    assert torch.allclose(emb[0, :16], torch.ones(16)) and torch.allclose(emb[0, 16:32], torch.zeros(16))
    assert emb[:, 32].abs().sum() == 0  # odd dims are zero-padded
