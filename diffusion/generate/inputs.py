"""A generation run's inputs, checked before any work: device, checkpoints, student, CLIP, training digits,
output folders and task runner, each failure one line naming the file or field.

    inputs = check_run_inputs(cfg, hardware, model_dir, classifier_dir, train_data)   # loads the networks

`prepare_run` (diffusion/generate/run.py) calls it before it stages anything; `digits serve` calls it at
start-up, so that a scheduled deployment never starts on inputs its first slot would fail on.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from diffusion.checkpoint import CheckpointError, check_output, file_sha256, read_checkpoint_config
from diffusion.config import GenerateConfig, HardwareConfig
from diffusion.config.generate import TaskRunnerConfig
from diffusion.data.prepare import read_sources
from diffusion.data.shards import check_writable
from diffusion.device import resolve_device
from diffusion.errors import DataError
from diffusion.generate import workers
from diffusion.generate.plan import GenerationError
from diffusion.judges.clip import WEIGHTS_FILE
from diffusion.model.saved import trained_styles
from diffusion.model.student import check_student, student_steps, weights_name
from diffusion.styles import STYLES, cell_digit, cell_name, cell_style

SCHEDULER_TIMEOUT = 5.0  # seconds to wait for a Dask scheduler to accept a connection
DASK_PORT = 8786  # a scheduler address without a port means Dask's default


@dataclass(frozen=True)
class CheckedInputs:
    """What `check_run_inputs` found: the device, the folder the digits come from (the student's with the
    `distilled` sampler), the checksums of every input, the styles the model was trained on, the
    student's steps (None: the teacher samples), and the sources of the training digits (`prepare`'s
    sources.json beside them; None for a split `prepare` did not write)."""

    device: torch.device
    model_dir: str
    checksums: dict[str, str]
    trained: tuple[str, ...]
    steps: int | None
    training_sources: list[dict[str, Any]] | None


def check_run_inputs(
    cfg: GenerateConfig,
    hardware: HardwareConfig,
    model_dir: str,
    classifier_dir: str,
    train_data: str,
    student_dir: str | None = None,
) -> CheckedInputs:
    """Check every input of a run before any work and load the networks and training digits into this
    worker (which proves they load): a DigitsError (one line naming the file or field) otherwise. Stages
    nothing (the output folders are probed for writing, as `check_writable` does): `digits serve` calls it
    at start-up, so a bad input fails there, not at the first slot.

    With the `distilled` sampler the digits come from `student_dir` (`digits distill-diffusion`): it must
    hold a student for the sampler's steps and guidance, distilled from the teacher `model_dir` (checksum).
    """
    device = resolve_device(hardware.device, "hardware.device")
    diffusion = read_checkpoint_config(model_dir, "diffusion")
    read_checkpoint_config(classifier_dir, "classifier")
    checksums = {
        "model": _weights(model_dir, "ema.safetensors"),
        "classifier": _weights(classifier_dir, "model.safetensors"),
    }
    trained = _check_styles(cfg, diffusion, model_dir)
    if cfg.sampler.guide != "all" and not diffusion["config"].get("unet", {}).get("num_styles"):
        raise GenerationError(
            f"generate.sampler.guide is {cfg.sampler.guide}, but the model {model_dir} takes digits only"
            f" (trained on {', '.join(trained)}): it has no second condition to leave unguided; use guide: all"
        )
    steps = student_steps(cfg.sampler)
    if steps is not None:
        if not student_dir:
            raise GenerationError(
                "generate.sampler.name is distilled: pass the student's folder (--student), which"
                " `digits distill-diffusion` writes"
            )
        check_student(student_dir, steps, cfg.sampler.guidance, checksums["model"], "generate.sampler")
        checksums["teacher"], checksums["model"] = (
            checksums["model"],
            _weights(student_dir, weights_name(steps)),
        )
        model_dir = student_dir
    timesteps = diffusion["config"].get("process", {}).get("timesteps", 1000)
    if cfg.sampler.steps > timesteps:
        raise GenerationError(
            f"generate.sampler.steps ({cfg.sampler.steps}) must be <= the model's {timesteps} timesteps"
        )
    if not Path(train_data).is_file():
        raise DataError(f"{train_data}: training digits not found (the gate's memorisation check needs them)")
    checksums["train"] = file_sha256(train_data)
    training_sources = read_sources(train_data)
    weights = Path(cfg.clip.pretrained or "")
    weights = weights / WEIGHTS_FILE if weights.is_dir() else weights
    checksums["clip"] = (
        file_sha256(weights) if weights.is_file() else f"{cfg.clip.model}:{cfg.clip.pretrained}"
    )
    check_writable(cfg.output_root, cfg.name)
    check_output(cfg.staging_dir, "generate.staging_dir", folder=True)
    check_task_runner(cfg.task_runner)
    # Unreadable weights, an unknown CLIP or broken training digits fail here, before any sampling; the
    # tasks (and the gate) of an in-process run reuse what this loads.
    workers.diffusion_model(model_dir, checksums["model"], device, hardware.compile, steps)
    workers.scorer(cfg.clip, checksums["clip"], classifier_dir, checksums["classifier"], device)
    workers.train_pixels(train_data, checksums["train"], device)
    return CheckedInputs(device, str(model_dir), checksums, trained, steps, training_sources)


def check_task_runner(cfg: TaskRunnerConfig) -> None:
    """An existing Dask scheduler (`address`, tcp:// or tls://) must accept a connection: GenerationError
    naming generate.task_runner.address otherwise, instead of Dask's own 30 s wait and traceback."""
    if cfg.kind != "dask" or not cfg.address:
        return
    try:
        where = urlsplit(cfg.address if "://" in cfg.address else f"tcp://{cfg.address}")
        if where.scheme not in ("tcp", "tls") or not where.hostname:
            return  # another transport (inproc, ucx): Dask checks it
        port = DASK_PORT if where.port is None else where.port
    except ValueError:  # a port that is no number or over 65535, a broken IPv6 host
        raise GenerationError(
            f"generate.task_runner.address: {cfg.address!r} has no valid port; give tcp://host:port"
        ) from None
    try:
        with socket.create_connection((where.hostname, port), timeout=SCHEDULER_TIMEOUT):
            pass
    except OSError as err:
        raise GenerationError(
            f"generate.task_runner.address: no Dask scheduler answers at {cfg.address} ({err}); start one"
            " (`dask scheduler`) or use kind: dask without an address for a local cluster"
        ) from None


def _weights(directory: str, name: str) -> str:
    """The checksum of a checkpoint folder's weights file."""
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    return file_sha256(path)


def _check_styles(cfg: GenerateConfig, diffusion: dict[str, Any], model_dir: str) -> tuple[str, ...]:
    """The styles the diffusion model (its config document) was trained on; a GenerationError when the
    request asks for a (digit, style) cell of another style, which the model would draw as noise."""
    trained = tuple(trained_styles(diffusion))
    unseen = [c for c in cfg.counts() if STYLES[cell_style(c)] not in trained]
    if unseen:
        asked = (
            f"generate.per_style asks for {cell_name(unseen[0])}"
            if cfg.per_style is not None
            else f"generate.per_class asks for {STYLES[0]} digits (the digit {cell_digit(unseen[0])} first)"
        )
        raise GenerationError(
            f"{asked}, but the model {model_dir} was trained on {', '.join(trained)} only:"
            " ask for its styles, or train it on data.sources with that style"
        )
    return trained
