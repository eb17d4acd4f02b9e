"""Sampler benchmark: judged accuracy and speed of each sampler on a trained checkpoint.

    python benchmarks/samplers.py --model data/models/diffusion --classifier data/models/classifier \
        --out benchmarks/results/samplers-cpu.json --n 1000 --ddpm-n 100

Each sampler draws class-balanced guided samples from the same seed; the classifier judges them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffusion.config import SamplerConfig
from diffusion.judges.classifier import DigitClassifier, load_classifier
from diffusion.model.process import Denoiser, GaussianDiffusion
from diffusion.model.train import load_diffusion
from diffusion.quality.samples import judge_guided_samples

SAMPLERS = [
    SamplerConfig(name="ddpm", steps=1000, guidance=3.0),
    SamplerConfig(name="ddim", steps=50, guidance=3.0),
    SamplerConfig(name="dpm-solver++", steps=20, guidance=3.0),
    SamplerConfig(name="dpm-solver++", steps=10, guidance=3.0),
    SamplerConfig(name="dpm-solver++", steps=20, guidance=2.0),
    SamplerConfig(name="dpm-solver++", steps=20, guidance=1.0),
]


def sweep(
    model: Denoiser,
    process: GaussianDiffusion,
    judge: DigitClassifier,
    device: torch.device,
    n: int,
    ddpm_n: int,
    batch_size: int,
) -> list[dict]:
    """One row per sampler: its settings, sample_judge_accuracy, seconds and images per second."""
    rows = []
    for sampler in SAMPLERS:
        count = ddpm_n if sampler.name == "ddpm" else n
        judged = judge_guided_samples(model, process, judge, sampler, count, 1234, device, batch_size)
        rows.append(
            {
                **sampler.model_dump(),
                "images": count,
                "sample_judge_accuracy": judged.accuracy,
                "seconds": judged.seconds,
                "images_per_second": count / judged.seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("data/models/diffusion"))
    ap.add_argument("--classifier", type=Path, default=Path("data/models/classifier"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ddpm-n", type=int, default=100, help="DDPM walks all T steps: fewer images")
    ap.add_argument("--batch-size", type=int, default=250)
    args = ap.parse_args()
    device = torch.device(args.device)
    model, process = load_diffusion(args.model, device)
    judge = load_classifier(args.classifier, device)
    rows = sweep(model, process, judge, device, args.n, args.ddpm_n, args.batch_size)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    doc = {
        "machine": machine,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
