"""resolve_device: device strings torch knows and this machine has, else one line naming the params key."""

from __future__ import annotations

import pytest
import torch

from diffusion.device import DeviceError, resolve_device
from diffusion.errors import DigitsError


def test_the_cpu_resolves():
    assert resolve_device("cpu", "hardware.device") == torch.device("cpu")
    assert resolve_device("cpu:0", "hardware.device") == torch.device("cpu:0")


@pytest.mark.parametrize(
    "name, message",
    [
        ("tpu", "hardware.device: 'tpu' is not a device torch knows (use cpu, cuda, cuda:N, mps or xpu)"),
        ("", "hardware.device: '' is not a device torch knows"),
        ("cuda:x", "hardware.device: 'cuda:x' is not a device torch knows"),
        ("CUDA", "hardware.device: 'CUDA' is not a device torch knows"),
        ("meta", "hardware.device: 'meta' is not a device to compute on"),
        ("cpu:1", "hardware.device: 'cpu:1' does not exist (torch sees one CPU device); use cpu"),
    ],
)
def test_unknown_devices_fail_with_one_line(name: str, message: str):
    with pytest.raises(DeviceError) as err:
        resolve_device(name, "hardware.device")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert isinstance(err.value, DigitsError)


def _no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)


@pytest.mark.parametrize(
    "name, label",
    [("cuda", "CUDA"), ("cuda:3", "CUDA"), ("mps", "MPS"), ("xpu", "XPU"), ("xpu:1", "XPU")],
)
def test_a_missing_accelerator_fails_with_one_line(monkeypatch: pytest.MonkeyPatch, name: str, label: str):
    _no_accelerators(monkeypatch)
    with pytest.raises(DeviceError) as err:
        resolve_device(name, "hardware.device")
    assert str(err.value) == (
        f"hardware.device: {name!r} is not available on this machine (torch sees no {label} device); use cpu"
    )


def test_cuda_devices_resolve_up_to_the_count(monkeypatch: pytest.MonkeyPatch):
    """Two CUDA devices (simulated: the counts are what resolve_device asks torch for)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", "hardware.device") == torch.device("cuda")
    assert resolve_device("cuda:1", "hardware.device") == torch.device("cuda", 1)
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda:3", "hardware.device")
    assert str(err.value) == (
        "hardware.device: 'cuda:3' does not exist here (torch sees 2 CUDA devices: cuda:0 to cuda:1)"
    )


def test_mps_is_one_device(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps", "hardware.device") == torch.device("mps")
    with pytest.raises(DeviceError, match=r"'mps:1' does not exist here \(torch sees 1 MPS device: mps:0\)"):
        resolve_device("mps:1", "hardware.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_this_machine_without_monkeypatching():
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        resolve_device("cuda", "hardware.device")
