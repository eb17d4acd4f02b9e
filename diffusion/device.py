"""Device strings from params: `resolve_device` checks that torch knows one and that it exists here.

Imports nothing of ours but `diffusion.errors`, so the config may call it while validating.
"""

from __future__ import annotations

import torch

from diffusion.errors import DigitsError

ACCELERATORS = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}  # type -> its name in messages
CHOICES = "cpu, cuda, cuda:N, mps or xpu"


class DeviceError(DigitsError):
    """A device string that torch does not know, or a device this machine does not have."""


def device_count(kind: str) -> int:
    """How many devices of accelerator type `kind` torch sees here (0 if none)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    if kind == "xpu":
        return torch.xpu.device_count() if torch.xpu.is_available() else 0
    return 0


def _named(key: str) -> str:
    """The message's prefix naming the params key ("" when the caller names it, e.g. a field validator)."""
    return f"{key}: " if key else ""


def resolve_device(name: str, key: str) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:N", "mps", "xpu", ...) as a torch.device that exists on this machine.

    Raises DeviceError with one line naming `key` (the params key the string came from) when torch cannot
    parse `name`, when it is no device to compute on, or when this machine lacks it, e.g.
    "hardware.device: 'cuda' is not available on this machine (torch sees no CUDA device); use cpu".
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{_named(key)}{name!r} is not a device torch knows (use {CHOICES})") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise DeviceError(f"{_named(key)}{name!r} does not exist (torch sees one CPU device); use cpu")
        return device
    if device.type not in ACCELERATORS:
        raise DeviceError(f"{_named(key)}{name!r} is not a device to compute on (use {CHOICES})")
    label, n = ACCELERATORS[device.type], device_count(device.type)
    if n == 0:
        raise DeviceError(
            f"{_named(key)}{name!r} is not available on this machine (torch sees no {label} device); use cpu"
        )
    if device.index is not None and device.index >= n:
        seen = f"{device.type}:0" if n == 1 else f"{device.type}:0 to {device.type}:{n - 1}"
        raise DeviceError(
            f"{_named(key)}{name!r} does not exist here (torch sees {n} {label} device{'s' * (n > 1)}: {seen})"
        )
    return device
