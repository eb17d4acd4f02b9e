"""Sampler speed against quality on the default model: DDPM 1000; DDIM 100, 50, 20; DPM-Solver++ 20, 10; w = 1, 2, 3.

    python -m benchmarks.samplers --out benchmarks/results/samplers-cpu.json
    python benchmarks/samplers.py --n 20 --ddpm-n 10 --seeds 0 --out /tmp/s.json     # a smoke run

Every setting draws `--n` class-balanced samples (DDPM `--ddpm-n`: it walks all 1,000 steps) from one fixed
seed, in `--precision`, `--batch-size` images per network pass (2x that with guidance). A row records:
  evals_per_image      network evaluations per image, counted by a forward hook on the U-Net: steps at
                       w = 1, 2 x steps otherwise (one batched pass of 2B images); DDPM's steps are T
  seconds, images_per_s  sampling only, after one warm-up pass per batch shape
  evaluator_accuracy   the independent evaluator's accuracy on the digits, each labelled as requested
  frechet_distance     Frechet distance of the evaluator's features, samples against the real test split;
  frechet_real_floor   the same for as many real training digits: the distance grows as a set shrinks, so
                       compare a row with its floor, not with rows of another size
  cas_ratio, cas_accuracy  CAS trained to convergence (params' `evaluate.cas` recipe, as
                       benchmarks/guidance_sweep.py): mean and 95% t-interval half-width over --seeds; null
                       below --cas-min images (100 digits do not train a classifier)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: `benchmarks` is importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.guidance_sweep import interval  # noqa: E402
from diffusion.config import CasConfig, SamplerConfig, load_params  # noqa: E402
from diffusion.data.datasets import DigitsDataset  # noqa: E402
from diffusion.data.labelled import Labelled  # noqa: E402
from diffusion.judges.evaluator import load_evaluator  # noqa: E402
from diffusion.judges.training import JudgeNet, in_batches  # noqa: E402
from diffusion.model.process import GaussianDiffusion  # noqa: E402
from diffusion.model.samplers import sample  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from diffusion.model.unet import UNet  # noqa: E402
from diffusion.precision import Precision  # noqa: E402
from diffusion.quality.cas import Digits, balanced_subset, cas  # noqa: E402
from diffusion.quality.evaluate import conditional_accuracy, frechet_distance  # noqa: E402
from diffusion.quality.samples import balanced_labels  # noqa: E402

SETTINGS: list[tuple[str, int]] = [
    ("ddpm", 1000),
    ("ddim", 100),
    ("ddim", 50),
    ("ddim", 20),
    ("dpm-solver++", 20),
    ("dpm-solver++", 10),
]
GUIDANCE: list[float] = [1.0, 2.0, 3.0]
SEED = 1234  # of x_T (and DDPM's noise): every row starts from the same draws


@dataclass(frozen=True)
class Grading:
    """The real splits and CAS recipe (its seeds included) that grade samples beyond the judge's accuracy;
    val: CAS's early stopping."""

    train: Labelled
    val: Labelled
    test: Labelled
    cas: CasConfig
    cas_min: int = 500


def machine(device: torch.device) -> str:
    """The CUDA device's name, or the CPU's (platform.processor(), else /proc/cpuinfo's model name)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if platform.processor():
        return platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def counting(model: nn.Module) -> Iterator[list[int]]:
    """Counts, in the one-item list it yields, the images that go through `model`'s forward in the block."""
    count = [0]
    handle = model.register_forward_pre_hook(lambda _m, args: count.__setitem__(0, count[0] + len(args[0])))
    try:
        yield count
    finally:
        handle.remove()


def features(judge: JudgeNet, images: Tensor, device: torch.device) -> Tensor:
    """The judge's penultimate features (N, F) of images (N, 1, 28, 28), on the CPU."""
    return in_batches(judge.features, images, device, 1000).cpu()


def grade(
    judge: JudgeNet, digits: Digits, grading: Grading, test_feats: Tensor, device: torch.device
) -> dict[str, float | list[float | None] | None]:
    """Frechet distance to the real test split, its real floor at this size, and CAS over the seeds."""
    real = balanced_subset(grading.train, len(digits), torch.Generator().manual_seed(0))
    row: dict[str, float | list[float | None] | None] = {
        "frechet_distance": frechet_distance(features(judge, digits.images, device), test_feats),
        "frechet_real_floor": frechet_distance(features(judge, real.images, device), test_feats),
        "cas_accuracy": None,
        "cas_ratio": None,
    }
    if len(digits) >= grading.cas_min:
        runs = cas(digits, grading.train, grading.val, grading.test, grading.cas, device, gain=False).runs
        row["cas_accuracy"] = interval([r["cas_accuracy"] for r in runs])
        row["cas_ratio"] = interval([r["cas_ratio"] for r in runs])
    return row


def sweep(
    model: UNet,
    process: GaussianDiffusion,
    judge: JudgeNet,
    device: torch.device,
    n: int,
    ddpm_n: int,
    batch_size: int,
    *,
    judge_name: str = "judge",
    precision: Precision = "fp32",
    settings: Sequence[tuple[str, int]] = SETTINGS,
    guidance: Sequence[float] = GUIDANCE,
    grading: Grading | None = None,
) -> list[dict]:
    """One row per (sampler, steps) x guidance; `{judge_name}_accuracy` is the judge's. Without `grading`
    the Frechet and CAS columns are left out (benchmarks/gpu_full_size.py judges with its classifier)."""
    for w in {1.0 if g in (0.0, 1.0) else 2.0 for g in guidance}:  # warm up each batch shape: B and 2B
        warm = SamplerConfig(name="ddim", steps=2, guidance=w)
        labels = balanced_labels(min(n, batch_size))
        sample(model, process, labels, warm, torch.Generator().manual_seed(0), device, precision=precision)
    test_feats = features(judge, grading.test.images, device) if grading else None
    rows = []
    for name, steps in settings:
        count = ddpm_n if name == "ddpm" else n
        for w in guidance:
            cfg = SamplerConfig(name=name, steps=steps, guidance=w)
            labels = balanced_labels(count)
            with counting(model) as evaluated:
                synchronize(device)
                start = time.perf_counter()
                generator = torch.Generator().manual_seed(SEED)
                images = sample(model, process, labels, cfg, generator, device, batch_size, precision)
                synchronize(device)
                seconds = time.perf_counter() - start
            digits = Digits(images.float().cpu(), labels)
            row = {
                "sampler": name,
                "steps": process.num_timesteps if name == "ddpm" else steps,
                "guidance": w,
                "precision": precision,
                "images": count,
                "evals_per_image": evaluated[0] / count,
                "seconds": seconds,
                "images_per_s": count / seconds,
                f"{judge_name}_accuracy": conditional_accuracy(judge, digits.images, digits.labels),
            }
            if grading is not None and test_feats is not None:
                row |= grade(judge, digits, grading, test_feats, device)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def setting(text: str) -> tuple[str, int]:
    """'ddim:50' -> ('ddim', 50); 'ddpm' -> ('ddpm', 1000): DDPM walks all T steps whatever it is given."""
    name, _, steps = text.partition(":")
    if name not in {s for s, _ in SETTINGS} or not (steps.isdigit() or name == "ddpm"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ddpm, ddim:STEPS or dpm-solver++:STEPS")
    return name, int(steps or 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("data/models"), help="diffusion/ and evaluator/")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=1000, help="images per setting")
    parser.add_argument("--ddpm-n", type=int, default=100, help="images per DDPM setting (1,000 steps each)")
    parser.add_argument(
        "--batch-size", type=int, default=250, help="images per network pass (x2 with guidance)"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="CAS training seeds")
    parser.add_argument("--cas-min", type=int, default=500, help="fewer images: no CAS (null)")
    parser.add_argument(
        "--samplers",
        type=setting,
        nargs="+",
        default=SETTINGS,
        help="a subset, e.g. ddpm ddim:50 dpm-solver++:10",
    )
    parser.add_argument("--guidance", type=float, nargs="+", default=GUIDANCE)
    args = parser.parse_args()
    params = load_params()
    device = torch.device(args.device)
    model, process = load_diffusion(args.models / "diffusion", device)
    evaluator = load_evaluator(args.models / "evaluator", device)
    grading = Grading(
        train=DigitsDataset(args.prepared / "train.parquet"),
        val=DigitsDataset(args.prepared / "val.parquet"),
        test=DigitsDataset(args.prepared / "test.parquet"),
        cas=params.evaluate.cas.model_copy(update={"seeds": tuple(args.seeds)}),
        cas_min=args.cas_min,
    )
    print(f"DDPM rows draw {args.ddpm_n} images (all {process.num_timesteps} steps), the others {args.n}")
    rows = sweep(
        model,
        process,
        evaluator,
        device,
        args.n,
        args.ddpm_n,
        args.batch_size,
        judge_name="evaluator",
        precision=args.precision,
        settings=args.samplers,
        guidance=args.guidance,
        grading=grading,
    )
    doc = {
        "machine": machine(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "note": f"DDPM rows draw {args.ddpm_n} images, the others {args.n}; seed {SEED}",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
