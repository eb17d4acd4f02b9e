"""compiled(): eager when no mode, torch.compile's own modes otherwise, one-line errors for others."""

from __future__ import annotations

import pytest
import torch

from diffusion.config import UNetConfig
from diffusion.errors import DigitsError
from diffusion.model.compile import CompileModeError, check_compile_mode, compile_modes, compiled
from diffusion.model.unet import UNet


def _net() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), groups=4)).eval()


def test_modes_are_torch_compiles_own():
    modes = compile_modes()
    assert {"default", "reduce-overhead", "max-autotune"} <= set(modes)
    assert all(check_compile_mode(m) == m for m in modes)


@pytest.mark.parametrize("mode", ["fast", "Default", "", "inductor"])
def test_an_unknown_mode_fails_with_one_line_naming_it(mode: str):
    with pytest.raises(CompileModeError) as err:
        compiled(_net(), mode, key="hardware.compile")
    message = str(err.value)
    assert message.startswith(f"hardware.compile: {mode!r} is not a torch.compile mode (one of default, ")
    assert "\n" not in message and isinstance(err.value, DigitsError)


def test_no_mode_is_the_eager_model_itself():
    net = _net()
    assert compiled(net, None) is net


def test_a_compiled_model_is_a_denoiser_sharing_the_weights():
    """Lazy: wrapping does not compile (no call here); attributes and weights are the eager model's."""
    net = _net()
    wrapped = compiled(net, "default")
    assert wrapped is not net and wrapped.null_class == net.null_class and wrapped.image_shape == (1, 8, 8)
    assert wrapped.conv_out.weight is net.conv_out.weight
