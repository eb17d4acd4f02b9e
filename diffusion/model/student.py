"""A distilled student on disk: one weights file per step count, its teacher's checksum beside them.

    save_student(out_dir, unet, process, distill, weights={16: ..., 8: ..., ...}, teacher_sha256=..., metrics=...)
    student, process = load_student(out_dir, steps=4, device="cpu")   # guidance w is an input of each call

A folder is `diffusion.checkpoint`'s format, kind "diffusion-student": `steps-<N>.safetensors` for every
step count N it was distilled for (N = teacher_steps is the guidance-distilled network, each smaller N a
progressive round) beside config.json, whose `config` holds the student's U-Net (`guidance_input: true`) and
process, the step counts, the guidance range it was trained on and the sha256 of the teacher's EMA weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.config import DistillConfig, ProcessConfig, SamplerConfig, UNetConfig
from diffusion.model.process import GaussianDiffusion
from diffusion.model.unet import UNet

KIND = "diffusion-student"


def student_steps(sampler: SamplerConfig) -> int | None:
    """The step count whose student the sampler runs (`distilled`), or None: the sampler runs the teacher."""
    return sampler.steps if sampler.name == "distilled" else None


def weights_name(steps: int) -> str:
    """The weights file of the `steps`-step student."""
    return f"steps-{steps}.safetensors"


def weights_file(folder: str | Path, steps: int | None) -> Path:
    """The weights a version drawn at `steps` (None: by the teacher's sampler) came from in `folder`: a
    student's `weights_name(steps)`, or a diffusion model's EMA weights."""
    return Path(folder) / (weights_name(steps) if steps is not None else "ema.safetensors")


def is_student(folder: str | Path) -> bool:
    """Whether `folder` is a distilled student's (`digits distill-diffusion`), not a diffusion model's."""
    try:
        read_checkpoint_config(folder, KIND)
    except CheckpointError:
        return False
    return True


def save_student(
    directory: Path,
    unet: UNetConfig,
    process: ProcessConfig,
    distill: DistillConfig,
    weights: dict[int, dict[str, Tensor]],
    teacher_sha256: str,
    metrics: dict[str, Any],
) -> None:
    """Write the student folder atomically: `weights` maps step counts to state dicts."""
    config = {
        "unet": unet.model_dump(mode="json"),
        "process": process.model_dump(mode="json"),
        "steps": sorted(weights, reverse=True),
        "guidance_range": list(distill.guidance_range),
        "teacher_sha256": teacher_sha256,
    }
    save_checkpoint(
        directory,
        kind=KIND,
        config=config,
        weights={weights_name(n).removesuffix(".safetensors"): w for n, w in weights.items()},
        meta={**metrics, "distill": distill.model_dump(mode="json")},
    )


def student_config(directory: str | Path) -> dict[str, Any]:
    """The student folder's `config` (unet, process, steps, guidance_range, teacher_sha256), kind checked."""
    doc = read_checkpoint_config(directory, KIND)
    config = doc["config"]
    missing = [k for k in ("unet", "process", "steps", "guidance_range", "teacher_sha256") if k not in config]
    if missing:
        raise CheckpointError(
            f"{Path(directory) / 'config.json'}: a student config lacks {', '.join(missing)}"
        )
    return config


def check_student(
    directory: str | Path, steps: int, guidance: float, teacher_sha256: str | None, where: str
) -> dict[str, Any]:
    """Refuse, in one line, a step count the student was not distilled for, a guidance outside the range it
    was trained on, or a teacher other than the one it was distilled from (`teacher_sha256`: the sha256 of
    the pinned teacher's ema.safetensors; None: not checked). `where`: the params section of the sampler."""
    config = student_config(directory)
    if steps not in config["steps"]:
        shown = ", ".join(map(str, config["steps"]))
        raise CheckpointError(
            f"{where}.steps ({steps}): the student in {directory} was distilled for {shown} steps only"
        )
    low, high = config["guidance_range"]
    if not low <= guidance <= high:
        raise CheckpointError(
            f"{where}.guidance ({guidance:g}) is outside [{low:g}, {high:g}], the range the student in"
            f" {directory} was trained on"
        )
    if teacher_sha256 is not None and config["teacher_sha256"] != teacher_sha256:
        raise CheckpointError(
            f"{Path(directory) / 'config.json'}: distilled from another teacher (sha256"
            f" {config['teacher_sha256'][:12]}...) than the pinned one ({teacher_sha256[:12]}...); rerun"
            " distill_diffusion"
        )
    return config


def load_student(
    directory: str | Path, steps: int, device: torch.device | str = "cpu"
) -> tuple[UNet, GaussianDiffusion]:
    """(the `steps`-step student in eval mode on `device`, its process) from a `save_student` folder."""
    config = student_config(directory)
    if steps not in config["steps"]:
        raise CheckpointError(f"{directory}: no {steps}-step student (it has {config['steps']})")
    model = UNet(UNetConfig.model_validate(config["unet"]))
    path = Path(directory) / weights_name(steps)
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the config ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), GaussianDiffusion(ProcessConfig.model_validate(config["process"]))
