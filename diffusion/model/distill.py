"""Distil the guided teacher into few-step students: guidance distillation, then progressive halving rounds.

    result = distill(teacher, process, cfg, train, teacher_sha256, out_dir, resume_dir, device, precision)
    student, process = load_student(out_dir, steps=4)                 # diffusion.model.student

Stage `teacher_steps` (Meng et al. 2023, "On Distillation of Guided Diffusion Models", stage one): a copy of
the EMA teacher with a guidance input learns, at every timestep, the teacher's classifier-free-guided output
for w ~ U[guidance_range]: one network pass where guidance takes two. It samples with DDIM at any steps; it is
kept as the `teacher_steps`-step student.
Stage N, for N = teacher_steps / 2, ..., min_steps (Salimans & Ho 2022, "Progressive Distillation", Alg. 2):
a copy of the 2N-step student learns to take in one DDIM step (eta = 0) the two steps its teacher takes, on
the N-step grid (`trailing_timesteps`, whose grids nest).

Losses (for the v-predicting U-Net of this project):
- guidance stage: MSE(v_student(x_t, t, c, w), v_u + w (v_c - v_u)), the guided output in v (affine in v,
  so combining v equals combining eps: `samplers.guidance`);
- round N: max(alpha_t^2 / sigma_t^2, 1) |x0_student - x0_target|^2, the "truncated SNR" weighting of
  Salimans & Ho (sec. 4), where x0_target = (x'' - (sigma''/sigma_t) x_t) / (alpha'' - (sigma''/sigma_t)
  alpha_t) is the x_0 whose one DDIM step from x_t lands where the teacher's two steps land (x'', t''), and
  alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar). At the last step t'' is clean data and x0_target = x''.
The teachers' DDIM steps clip x_0 to [-1, 1], as the samplers do.

All randomness (batches, timesteps, noise, w, the guidance embedding's initial weights) comes from cfg.seed;
the state goes to `resume_dir` every checkpoint_every steps and at each stage's end, so a killed run resumed
ends with the same weights. Losses are read back only every log_every steps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.config import DistillConfig
from diffusion.data.labelled import Labelled
from diffusion.model.process import GaussianDiffusion
from diffusion.model.resume import fingerprint, flatten_optimizer, unflatten_optimizer
from diffusion.model.samplers.guidance import guided_output
from diffusion.model.samplers.spacing import trailing_timesteps
from diffusion.model.student import save_student
from diffusion.model.train import conditioned, sum_dtype
from diffusion.model.unet import UNet
from diffusion.precision import Precision, autocast

STATE_KIND = "diffusion-distill-state"
log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    metrics: dict[str, Any]  # steps (all stages), seconds, loss_<N>: each stage's last logged loss
    history: list[
        dict[str, float]
    ]  # rows {stage (its steps), step (over all stages), loss, lr}, per log_every


@dataclass
class DistillState:
    """Where a run stands: the stage (index into cfg.student_steps()), its step, the finished students."""

    student: UNet
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    stage: int = 0
    step: int = 0
    done: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # steps -> finished weights
    history: list[dict[str, float]] = field(default_factory=list)
    window_sum: float = 0.0
    window_count: int = 0
    seconds: float = 0.0


def stage_steps(cfg: DistillConfig, stage: int) -> int:
    """Optimiser steps of stage `stage` (0: guidance distillation, then the halving rounds)."""
    return cfg.guidance_steps if stage == 0 else cfg.round_steps


def lr_at(cfg: DistillConfig, stage: int, step: int) -> float:
    """cfg.lr decaying linearly to 0 over each stage."""
    return cfg.lr * (1.0 - step / stage_steps(cfg, stage))


# --------------------------------------------------------------------------- the teachers
def _ddim_step(
    student: UNet, process: GaussianDiffusion, x: Tensor, t: Tensor, labels: Tensor, w: Tensor, alpha, sigma
) -> Tensor:
    """One DDIM step (eta = 0, x_0 clipped) of a guidance-input network from x at t to the state whose
    sqrt(alpha_bar), sqrt(1 - alpha_bar) are `alpha`, `sigma` ((B,1,1,1) each)."""
    x0, eps = process.clipped_x0_eps(student(x, t, labels, w).to(x.dtype), x, t)
    return alpha * x0 + sigma * eps


class Grid:
    """A round's timesteps on the device: the N-step grid, its 2N-step midpoints, and per point i the
    sqrt(alpha_bar), sqrt(1 - alpha_bar) of points i and i + 1 (N: clean data, alpha_bar = 1)."""

    def __init__(self, process: GaussianDiffusion, steps: int, device: torch.device):
        coarse = trailing_timesteps(process.num_timesteps, steps)
        fine = trailing_timesteps(process.num_timesteps, 2 * steps)
        assert fine[::2] == coarse, "the 2N-step grid must contain the N-step grid"
        bars = torch.tensor([process.alpha_bar(t) for t in coarse] + [1.0], dtype=torch.float64)
        mid_bars = torch.tensor([process.alpha_bar(t) for t in fine[1::2]], dtype=torch.float64)
        self.t = torch.tensor(coarse, dtype=torch.long, device=device)
        self.mid = torch.tensor(fine[1::2], dtype=torch.long, device=device)
        self.alpha, self.sigma = (bars.sqrt().float().to(device), (1.0 - bars).sqrt().float().to(device))
        self.mid_alpha = mid_bars.sqrt().float().to(device)
        self.mid_sigma = (1.0 - mid_bars).sqrt().float().to(device)


# --------------------------------------------------------------------------- one step
def _per_image(values: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1), to scale images."""
    return values.view(-1, 1, 1, 1)


def _batch(state: DistillState, data: Labelled, cfg: DistillConfig, device: torch.device):
    g = state.generator
    idx = torch.randint(0, data.labels.shape[0], (cfg.batch_size,), generator=g)
    low, high = cfg.guidance_range
    w = low + (high - low) * torch.rand(cfg.batch_size, generator=g)
    noise = torch.randn((cfg.batch_size, *data.images.shape[1:]), generator=g)
    return data.images[idx].to(device), data.labels[idx].to(device), w.to(device), noise.to(device)


def guidance_loss(
    student: UNet, teacher: UNet, process: GaussianDiffusion, batch, generator: torch.Generator
) -> Tensor:
    """Stage one: the student's v against the guided teacher's, at t ~ U[0, T)."""
    x0, labels, w, noise = batch
    t = torch.randint(0, process.num_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    x_t = process.q_sample(x0, t, noise)
    with torch.no_grad():
        target = guided_output(teacher, x_t, t, labels, w)  # the guided v for a (B,) w, one pass of 2B
    return F.mse_loss(student(x_t, t, labels, w).float(), target.float())


def round_loss(
    student: UNet, teacher: UNet, process: GaussianDiffusion, grid: Grid, batch, generator: torch.Generator
) -> Tensor:
    """A halving round: the student's x_0 against the x_0 that lands one DDIM step where two teacher steps do."""
    x0, labels, w, noise = batch
    i = torch.randint(0, grid.t.shape[0], (x0.shape[0],), generator=generator).to(x0.device)
    t, mid = grid.t[i], grid.mid[i]
    view = _per_image
    alpha_t, sigma_t = view(grid.alpha[i]), view(grid.sigma[i])
    alpha_n, sigma_n = view(grid.alpha[i + 1]), view(grid.sigma[i + 1])
    x_t = process.q_sample(x0, t, noise)
    with torch.no_grad():
        x_mid = _ddim_step(
            teacher, process, x_t, t, labels, w, view(grid.mid_alpha[i]), view(grid.mid_sigma[i])
        )
        x_next = _ddim_step(teacher, process, x_mid, mid, labels, w, alpha_n, sigma_n)
        ratio = sigma_n / sigma_t
        target = (x_next - ratio * x_t) / (alpha_n - ratio * alpha_t)
    predicted = process.x0_from_output(student(x_t, t, labels, w).float(), x_t, t)
    weight = (alpha_t**2 / sigma_t**2).clamp(min=1.0)
    return (weight * (predicted - target.float()) ** 2).mean()


# --------------------------------------------------------------------------- the run
def distill(
    teacher: UNet,
    process: GaussianDiffusion,
    cfg: DistillConfig,
    data: Labelled,
    teacher_sha256: str,
    out_dir: Path,
    resume_dir: Path,
    device: torch.device | str = "cpu",
    precision: Precision = "fp32",
    progress: bool = True,
) -> DistillResult:
    """Run (or resume) every stage on `device`, then write the student folder `out_dir` (`save_student`).

    teacher: the EMA teacher (eval mode); data: training digits (images (N,1,H,W) in [-1, 1], labels (N,),
    and for a two-condition teacher `styles` (N,): its student then learns (digit, style) rows, drawn
    uniformly).
    """
    device = torch.device(device)
    process = process.to(device)
    teacher = teacher.to(device).eval().requires_grad_(False)
    data = conditioned(data, teacher.null_style is not None)  # a two-condition teacher: (digit, style) rows
    student_cfg = teacher.cfg.model_copy(update={"guidance_input": True})
    config = {  # what decides the weights: checkpoint_every and log_every never restart a run
        "distill": cfg.model_dump(mode="json", exclude={"checkpoint_every", "log_every"}),
        "unet": student_cfg.model_dump(mode="json"),
        "teacher_sha256": teacher_sha256,
        "precision": precision,
        "data_sha256": fingerprint(data.images, data.labels),  # other training digits: a fresh start
    }
    state = DistillState(
        _new_student(student_cfg, cfg.seed, device), None, torch.Generator().manual_seed(cfg.seed)
    )  # type: ignore[arg-type]
    steps_list = cfg.student_steps()
    total = cfg.guidance_steps + cfg.round_steps * (len(steps_list) - 1)
    # The global CPU RNG (dropout's) is seeded here and saved and restored with the state; the caller's is kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        _load_state(Path(resume_dir), config, state, device)
        done_before = sum(stage_steps(cfg, s) for s in range(state.stage)) + state.step
        with tqdm(total=total, initial=done_before, disable=not progress, desc="distill", unit="step") as bar:
            while state.stage < len(steps_list):
                if state.step == 0:  # a stage starts (a state saved mid-stage resumes its own optimiser)
                    _start_stage(state, teacher, cfg, student_cfg, steps_list, device)
                source = _teacher_of(state, teacher, student_cfg, steps_list, device)
                _run_stage(
                    state, source, process, cfg, data, steps_list, config, Path(resume_dir), precision, bar
                )
    metrics = {
        "steps": total,
        "seconds": state.seconds,
        **{f"loss_{row['stage']}": row["loss"] for row in _last_rows(state.history)},
    }
    save_student(Path(out_dir), student_cfg, process.cfg, cfg, state.done, teacher_sha256, metrics)
    return DistillResult(metrics, list(state.history))


def _new_student(student_cfg, seed: int, device: torch.device) -> UNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(student_cfg).to(device)


def _start_stage(
    state: DistillState, teacher: UNet, cfg: DistillConfig, student_cfg, steps_list, device
) -> None:
    """The stage's student: the teacher plus a fresh guidance input (stage 0), else the finished student of
    the stage before; a new optimiser."""
    student = _new_student(student_cfg, cfg.seed + state.stage, device)
    if state.stage == 0:
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("guidance_mlp.") for k in missing), (missing, unexpected)
    else:
        student.load_state_dict(state.done[steps_list[state.stage - 1]])
    state.student = student
    state.optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)


def _teacher_of(state: DistillState, teacher: UNet, student_cfg, steps_list, device) -> UNet:
    if state.stage == 0:
        return teacher
    previous = _new_student(student_cfg, 0, device)  # in fork_rng: dropout's global stream untouched
    previous.load_state_dict(state.done[steps_list[state.stage - 1]])
    return previous.eval().requires_grad_(False)


def _run_stage(state, source, process, cfg, data, steps_list, config, resume_dir, precision, bar) -> None:
    """The current stage from state.step to its end, `source` its teacher; the finished student joins
    state.done and the state is saved at step 0 of the next stage."""
    steps = steps_list[state.stage]
    device = next(state.student.parameters()).device
    grid = None if state.stage == 0 else Grid(process, steps, device)
    window = torch.tensor(state.window_sum, dtype=sum_dtype(device), device=device)
    end, mark = stage_steps(cfg, state.stage), time.perf_counter()
    state.student.train()
    while state.step < end:
        for group in state.optimizer.param_groups:
            group["lr"] = lr_at(cfg, state.stage, state.step)
        batch = _batch(state, data, cfg, device)
        with autocast(device, precision):
            if grid is None:
                loss = guidance_loss(state.student, source, process, batch, state.generator)
            else:
                loss = round_loss(state.student, source, process, grid, batch, state.generator)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.student.parameters(), cfg.grad_clip)
        state.optimizer.step()
        state.step += 1
        window, state.window_count = window + loss.detach().to(window.dtype), state.window_count + 1
        if state.step % cfg.log_every == 0 or state.step == end:
            mean = window.item() / state.window_count  # the host sync, once per log_every steps
            lr = lr_at(cfg, state.stage, state.step - 1)
            done = sum(stage_steps(cfg, k) for k in range(state.stage)) + state.step  # over all stages
            state.history.append({"stage": steps, "step": done, "loss": mean, "lr": lr})
            window, state.window_count = torch.zeros_like(window), 0
            bar.set_postfix(stage=steps, loss=f"{mean:.4f}")
        bar.update()
        if state.step == end:
            state.done[steps] = {k: v.detach().clone() for k, v in state.student.state_dict().items()}
            state.stage, state.step = state.stage + 1, 0
        if state.step % cfg.checkpoint_every == 0:  # also at each stage's end (step 0 of the next)
            now = time.perf_counter()
            state.seconds, mark = state.seconds + now - mark, now
            state.window_sum = window.item()
            _save_state(resume_dir, config, state)
            if state.step == 0:
                return


def _last_rows(history: list[dict[str, float]]) -> list[dict[str, float]]:
    last: dict[float, dict[str, float]] = {}
    for row in history:
        last[row["stage"]] = row
    return list(last.values())


# --------------------------------------------------------------------------- resume state
def _save_state(directory: Path, config: dict[str, Any], state: DistillState) -> None:
    """The whole state, atomically; at a stage's end the optimiser is that of the next (not yet made)."""
    opt_tensors, opt_meta = flatten_optimizer(state.optimizer.state_dict()) if state.step else ({}, None)
    weights = {
        "student": state.student.state_dict(),
        "optimizer": opt_tensors,
        "rng": {"generator": state.generator.get_state(), "torch_cpu": torch.get_rng_state()},
        **{f"done-{n}": w for n, w in state.done.items()},
    }
    meta = {
        "stage": state.stage,
        "step": state.step,
        "done": sorted(state.done),
        "history": state.history,
        "window_sum": state.window_sum,
        "window_count": state.window_count,
        "seconds": state.seconds,
        "optimizer": opt_meta,
    }
    save_checkpoint(directory, kind=STATE_KIND, config=config, weights=weights, meta=meta)


def _load_state(directory: Path, config: dict[str, Any], state: DistillState, device: torch.device) -> bool:
    """Restore `state` from a state of the same config in `directory`; False (fresh start) otherwise."""
    if not (directory / "config.json").is_file():
        return False
    try:
        doc = read_checkpoint_config(directory, STATE_KIND)
        if doc["config"] != config:
            log.warning("%s: saved state has other settings or another teacher, starting fresh", directory)
            return False
        meta = doc["meta"]
        files = {
            name: load_weights(directory / f"{name}.safetensors", device)
            for name in ["student", "optimizer", *(f"done-{n}" for n in meta["done"])]
        }
        rng = load_weights(directory / "rng.safetensors")
    except CheckpointError as err:
        log.warning("cannot resume, starting fresh: %s", err)
        return False
    state.student.load_state_dict(files["student"])
    state.done = {n: files[f"done-{n}"] for n in meta["done"]}
    state.generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch_cpu"])
    state.stage, state.step = meta["stage"], meta["step"]
    # rows in the order distillation writes them (the meta JSON has sorted keys): the loss plot's columns
    state.history = [
        {k: row[k] for k in ("stage", "step", "loss", "lr") if k in row} for row in meta["history"]
    ]
    state.window_sum, state.window_count, state.seconds = (
        meta["window_sum"],
        meta["window_count"],
        meta["seconds"],
    )
    if meta["optimizer"] is not None:
        state.optimizer = torch.optim.AdamW(state.student.parameters(), lr=0.0, weight_decay=0.0)
        state.optimizer.load_state_dict(unflatten_optimizer(files["optimizer"], meta["optimizer"]))
    return True
