"""Our DPM-Solver++ against diffusers' DPMSolverMultistepScheduler driven by a generic pipeline loop, in one run.

    python -m benchmarks.vs_diffusers --out benchmarks/results/vs-diffusers-cpu.json
    python -m benchmarks.vs_diffusers --device cuda --out benchmarks/results/vs-diffusers-gpu.json
    python benchmarks/vs_diffusers.py --batch 20 --repeats 1 --out /tmp/d.json      # a smoke run

Both sides run the same trained network (data/models/diffusion, EMA weights) from the same x_T and labels
for `--steps` steps at guidance `--guidance`: one network pass of 2B images per step on each side (diffusers'
pipelines concatenate the conditional and null-class halves too), so the same number of evaluations.
Ours is `diffusion.model.samplers.sample`; theirs is the loop of diffusers' class-conditional DiTPipeline
around the scheduler configured as tests/test_model_samplers.py does (our betas and float64 alphas_cumprod,
v-prediction, DPM-Solver++(2M), trailing spacing, x0 clipped to [-1, 1] via thresholding at 1.0).
For fp32 and bf16 (both sides under the same torch.autocast) a row holds each side's images/s (the best of
`--repeats` timed runs after one warm-up, ours and theirs interleaved), the ratio ours / diffusers, and the
largest and mean |ours - diffusers| of the final images (they agree to ~1e-5 at fp32); bf16 rows add each
side's largest |bf16 - fp32|. Under bf16 the generic loop also keeps its latents in the network's dtype
(scheduler.step casts prev_sample to the output's), while ours keeps the solver's state in float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import diffusers
import torch
from diffusers import DPMSolverMultistepScheduler
from torch import Tensor

if __package__ in (None, ""):  # run as a script: `benchmarks` is importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.samplers import machine, synchronize  # noqa: E402
from diffusion.config import SamplerConfig  # noqa: E402
from diffusion.model.process import GaussianDiffusion  # noqa: E402
from diffusion.model.samplers import sample  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from diffusion.model.unet import UNet  # noqa: E402
from diffusion.precision import Precision, autocast  # noqa: E402
from diffusion.quality.samples import balanced_labels  # noqa: E402

SEED = 1234
PREDICTION_TYPE = {"eps": "epsilon", "v": "v_prediction"}  # diffusers' names


def diffusers_scheduler(process: GaussianDiffusion) -> DPMSolverMultistepScheduler:
    """diffusers' DPM-Solver++(2M) matching our process, as in tests/test_model_samplers.py."""
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=process.num_timesteps,
        trained_betas=process.betas.numpy(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        thresholding=True,  # dynamic thresholding capped at 1.0 is plain clipping of x0 to [-1, 1]
        sample_max_value=1.0,
        prediction_type=PREDICTION_TYPE[process.prediction],
    )
    scheduler.alphas_cumprod = process.alphas_cumprod.clone()  # float64 schedule (diffusers keeps float32)
    return scheduler


def x_T(model: UNet, n: int) -> Tensor:
    """The starting noise (n, C, H, W) that `sample` draws from a CPU generator seeded SEED."""
    return torch.randn((n, *model.image_shape), generator=torch.Generator().manual_seed(SEED))


@torch.no_grad()
def diffusers_loop(
    model: UNet,
    scheduler: DPMSolverMultistepScheduler,
    labels: Tensor,
    guidance: float,
    steps: int,
    device: torch.device,
) -> Tensor:
    """The generic loop of diffusers' DiTPipeline: labels (B,) -> x_0 (B, C, H, W) on `device`.

    Per step: torch.cat([latents] * 2) with the labels and the null class, one network pass, chunk(2),
    uncond + w (cond - uncond), scheduler.step(...).prev_sample. w <= 1 takes the conditional pass alone.
    """
    scheduler.set_timesteps(steps, device=device)
    latents = x_T(model, len(labels)).to(device)
    labels = labels.to(device)
    guided = guidance > 1.0
    class_input = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if guided else latents
        output = model(model_input, t.expand(model_input.shape[0]), class_input)
        if guided:
            cond, uncond = output.chunk(2)
            output = uncond + guidance * (cond - uncond)
        latents = scheduler.step(output, t, latents).prev_sample
    return latents


def timed(run: Callable[[], Tensor], device: torch.device) -> tuple[float, Tensor]:
    """(seconds, result) of run(), GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    out = run()
    synchronize(device)
    return time.perf_counter() - start, out


def compare(
    model: UNet,
    process: GaussianDiffusion,
    labels: Tensor,
    guidance: float,
    steps: int,
    precision: Precision,
    repeats: int,
    device: torch.device,
) -> tuple[dict[str, float], Tensor, Tensor]:
    """One row (images/s of each side, ratio, differences) and both sides' final images, on the CPU."""
    cfg = SamplerConfig(name="dpm-solver++", steps=steps, guidance=guidance)
    scheduler = diffusers_scheduler(process)

    def ours() -> Tensor:
        generator = torch.Generator().manual_seed(SEED)
        return sample(model, process, labels, cfg, generator, device, precision=precision)

    def theirs() -> Tensor:
        with autocast(device, precision):
            return diffusers_loop(model, scheduler, labels, guidance, steps, device)

    ours(), theirs()  # warm-up: kernel selection, allocator, oneDNN primitives
    best = {"ours": float("inf"), "diffusers": float("inf")}
    final: dict[str, Tensor] = {}
    for _ in range(repeats):
        for side, run in (("ours", ours), ("diffusers", theirs)):
            seconds, images = timed(run, device)
            best[side], final[side] = min(best[side], seconds), images.float().cpu()
    a, b = final["ours"], final["diffusers"]
    row = {
        "precision": precision,
        "ours_images_per_s": len(labels) / best["ours"],
        "diffusers_images_per_s": len(labels) / best["diffusers"],
        "ratio": best["diffusers"] / best["ours"],
        "max_abs_diff": (a - b).abs().max().item(),
        "mean_abs_diff": (a - b).abs().mean().item(),
    }
    return row, a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("data/models/diffusion"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=500, help="images per run (2x that per network pass)")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side after one warm-up")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    args = parser.parse_args()
    if args.guidance < 1.0:
        parser.error("--guidance must be >= 1: below 1 the two sides take different passes")
    device = torch.device(args.device)
    model, process = load_diffusion(args.model, device)
    labels = balanced_labels(args.batch)
    rows, fp32 = [], None
    for precision in sorted(args.precision, key=["fp32", "bf16"].index):
        row, ours, theirs = compare(
            model, process, labels, args.guidance, args.steps, precision, args.repeats, device
        )
        if precision == "fp32":
            fp32 = (ours, theirs)
        elif fp32 is not None:
            row["ours_max_abs_diff_vs_fp32"] = (ours - fp32[0]).abs().max().item()
            row["diffusers_max_abs_diff_vs_fp32"] = (theirs - fp32[1]).abs().max().item()
        rows.append(row)
        print(json.dumps(row), flush=True)
    doc = {
        "device": machine(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setting": {
            "batch": args.batch,
            "guidance": args.guidance,
            "steps": args.steps,
            "repeats": args.repeats,
        },
        "evals_per_image": args.steps * (2 if args.guidance > 1.0 else 1),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
