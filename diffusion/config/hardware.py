"""The `hardware` section: where and how every network runs."""

from __future__ import annotations

from pydantic import (
    Field,
    field_validator,
)

from diffusion.config.base import Section
from diffusion.precision import Precision, PrecisionChoice, resolve_precision


class HardwareConfig(Section):
    """Where and how the networks run, for every stage that runs one (diffusion/device.py, precision.py).

    `device`, `precision` and `compile` may change float rounding, so they enter a generation run's key;
    the network batch never changes a byte on the same device, precision and compile mode.
    """

    device: str = "cpu"  # cpu | cuda | cuda:N | mps; one that torch does not see here is an error
    precision: PrecisionChoice = (
        "auto"  # of the diffusion network; auto = bf16 where the device has bf16 units
    )
    network_batch: int = Field(250, ge=1)  # images per forward pass of the U-Net and of the evaluation
    compile: str | None = None  # a torch.compile mode for the sampling network ("default", ...); null: eager

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        from diffusion.device import resolve_device

        resolve_device(value, "")  # the error names hardware.device through pydantic's location
        return value

    @field_validator("compile")
    @classmethod
    def _compile_mode_known(cls, value: str | None) -> str | None:
        if value is not None:
            from diffusion.model.compile import check_compile_mode

            check_compile_mode(value, "")
        return value

    def resolved_precision(self) -> Precision:
        """The precision the diffusion network runs in here: `auto` resolved for `device`."""
        return resolve_precision(self.precision, self.device)
