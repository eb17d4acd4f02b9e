"""Optional `torch.compile` of the sampling network.

    model = compiled(model, mode)      # mode None: the eager model itself; else one of torch.compile's modes

Compilation is lazy: the first call of each input shape compiles (seconds to minutes), later calls run the
compiled graph. Sampling sees one shape per batch size (2B with guidance), plus the last, smaller chunk.
Imports nothing of ours but `diffusion.errors`, so the config may validate a mode with it.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion.errors import DigitsError


class CompileModeError(DigitsError):
    """A torch.compile mode that this torch does not have."""


def compile_modes() -> list[str]:
    """torch.compile's modes as this torch lists them ("default", "reduce-overhead", "max-autotune", ...)."""
    import torch._inductor  # the list lives in inductor; importing it is cheap next to compiling

    return list(torch._inductor.list_mode_options())


def check_compile_mode(mode: str, key: str = "compile") -> str:
    """`mode` if torch.compile knows it; otherwise CompileModeError, one line naming `key` and the mode."""
    modes = compile_modes()
    if mode not in modes:
        named = f"{key}: " if key else ""
        raise CompileModeError(f"{named}{mode!r} is not a torch.compile mode (one of {', '.join(modes)})")
    return mode


def compiled(model: nn.Module, mode: str | None, key: str = "compile") -> nn.Module:
    """`model` itself when `mode` is None (eager), else `torch.compile(model, mode=mode)`.

    The compiled module shares the weights and forwards attribute reads (`null_class`, `null_style`,
    `image_shape`) to `model`, so it is a Denoiser wherever the eager one is. "reduce-overhead" and "max-autotune" use CUDA
    graphs on a GPU; on the CPU they compile as the default mode does.
    """
    if mode is None:
        return model
    return torch.compile(model, mode=check_compile_mode(mode, key))
