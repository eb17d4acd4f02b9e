"""Sampling throughput of the eager U-Net against `torch.compile` of it (diffusion.model.compile.compiled).

    python -m benchmarks.compile_sampler --out benchmarks/results/compile-sampler.json
    python benchmarks/compile_sampler.py --batch 20 --batches 1 --out /tmp/c.json      # a smoke run

The shipped U-Net config (params.yaml's diffusion.unet and diffusion.process) with random weights (speed
does not depend on them), sampled as the shipped sampler does: DPM-Solver++ `--steps` 20, guidance
`--guidance` 1.5 (one network pass of 2B images per step), bf16 autocast, `--batch` 250 images per run.
Each side runs one untimed warm-up batch, then `--batches` timed ones (images/s over them). The compiled
side's warm-up is where compilation happens: its seconds are reported as `first_batch_seconds`, and
`compile_seconds` is that minus the compiled side's mean timed batch. `evals_per_s` counts images through
the network (2 per image and step with guidance): images/s at S steps is evals_per_s / (2 S), so a run with
fewer `--steps` (on a slow CPU) still gives the 20-step figure. `max_abs_diff` is the largest
|eager - compiled| of the same seed's images (bf16 rounding in a different kernel order).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: `benchmarks` is importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.config import ProcessConfig, SamplerConfig, UNetConfig  # noqa: E402
from diffusion.model.compile import compiled  # noqa: E402
from diffusion.model.process import GaussianDiffusion  # noqa: E402
from diffusion.model.samplers import sample  # noqa: E402
from diffusion.model.unet import UNet  # noqa: E402
from diffusion.precision import Precision  # noqa: E402

SEED = 1234


def cpu_model_name() -> str:
    """lscpu's "Model name" (the CPU), else platform.processor()."""
    try:
        out = subprocess.run(["lscpu"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_unet(params: Path, device: torch.device) -> tuple[UNet, GaussianDiffusion]:
    """The shipped U-Net config with seeded random weights (output layer too, so the output is not 0)."""
    section = yaml.safe_load(params.read_text())["diffusion"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNet(UNetConfig.model_validate(section["unet"]))
        nn.init.normal_(net.conv_out.weight, std=0.02)
    return net.to(device).eval(), GaussianDiffusion(ProcessConfig.model_validate(section["process"]))


def run_side(
    net: nn.Module,
    process: GaussianDiffusion,
    cfg: SamplerConfig,
    precision: Precision,
    labels: Tensor,
    batches: int,
    device: torch.device,
) -> tuple[dict[str, float | list[float]], Tensor]:
    """One warm-up batch, then `batches` timed ones: the row and the warm-up batch's images (on the CPU)."""
    evals = len(labels) * cfg.steps * (1 if cfg.guidance in (0.0, 1.0) else 2)

    def timed() -> tuple[float, Tensor]:
        synchronize(device)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(SEED)
        images = sample(net, process, labels, cfg, generator, device, precision=precision)
        synchronize(device)
        return time.perf_counter() - start, images.cpu()

    first, images = timed()
    seconds = [timed()[0] for _ in range(batches)]
    row = {
        "first_batch_seconds": first,
        "batch_seconds": seconds,
        "images_per_s": len(labels) * batches / sum(seconds),
        "evals_per_s": evals * batches / sum(seconds),
    }
    print(json.dumps(row), flush=True)
    return row, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--batch", type=int, default=250, help="images per run (2x that per network pass)")
    parser.add_argument("--batches", type=int, default=3, help="timed runs per side after one warm-up")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--note", default="", help="a remark kept in the JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    net, process = random_unet(args.params, device)
    cfg = SamplerConfig(name="dpm-solver++", steps=args.steps, guidance=args.guidance)
    labels = torch.arange(args.batch) % 10
    side = (process, cfg, args.precision, labels, args.batches, device)
    eager, eager_images = run_side(net, *side)
    fast, fast_images = run_side(compiled(net, args.mode), *side)
    fast["compile_seconds"] = fast["first_batch_seconds"] - statistics.mean(fast["batch_seconds"])
    doc = {
        "machine": machine(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "setting": {
            "device": str(device),
            "unet": yaml.safe_load(args.params.read_text())["diffusion"]["unet"],
            "sampler": {**cfg.model_dump(mode="json"), "precision": args.precision},
            "batch": args.batch,
            "batches": args.batches,
            "mode": args.mode,
        },
        "note": args.note,
        "eager": eager,
        "compiled": fast,
        "speedup": fast["images_per_s"] / eager["images_per_s"],
        "max_abs_diff": (eager_images - fast_images).abs().max().item(),
        "images_per_s_at_20_steps": {
            side: row["evals_per_s"] / (20 * (1 if cfg.guidance in (0.0, 1.0) else 2))
            for side, row in (("eager", eager), ("compiled", fast))
        },
    }
    print(
        json.dumps({k: doc[k] for k in ("speedup", "max_abs_diff", "images_per_s_at_20_steps")}), flush=True
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
