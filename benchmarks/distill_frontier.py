"""Quality against network evaluations per digit: the teacher's DPM-Solver++ beside the distilled students.

    python benchmarks/distill_frontier.py --teacher data/models/diffusion --student data/models/distilled \
        --evaluator data/models/evaluator --prepared data/prepared --count 2000 --seeds 0 1 2
    python benchmarks/distill_frontier.py --smoke --out /tmp/frontier.json     # tiny models, a minute

For each sampler (default: teacher DPM-Solver++ at 10 and 20 steps, the student at every step count it has, all at
generate.sampler.guidance), `--count` class-balanced digits are drawn raw (no filter: every sampler on equal
footing) from seed blocks as generation draws them (`sample_blocks`, hardware.network_batch, precision), and
judged by the independent evaluator and the CAS recipe of params.yaml's `evaluate` section:
- evaluations per digit (guidance doubles the teacher's, not the student's) and sampler-only digits/s;
- evaluator accuracy (the digit asked for), Fréchet distance in evaluator features (mean over classes,
  against real training digits), coverage (PRDC against real test digits);
- CAS: LeNet-5 to convergence on the digits, tested on real test digits, with the real baseline of the same
  size, mean and 95% t-interval over --seeds (`diffusion.quality.cas.cas`, no augmentation arm).
Writes JSON (machine, date, command, every figure) and a PNG of CAS ratio against evaluations per digit, and
prints the markdown table RESULTS.md takes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from benchmarks.common import SMOKE_CAS, header, load_recipe, new_figure, save_png, write_json  # noqa: E402
from benchmarks.samplers import synchronize  # noqa: E402
from diffusion.checkpoint import file_sha256  # noqa: E402
from diffusion.config import HardwareConfig, SamplerConfig  # noqa: E402
from diffusion.data.datasets import DigitsDataset  # noqa: E402
from diffusion.errors import DigitsError  # noqa: E402
from diffusion.judges.evaluator import load_evaluator  # noqa: E402
from diffusion.judges.training import in_batches  # noqa: E402
from diffusion.model.samplers import sample_blocks  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from diffusion.model.student import check_student, load_student, student_config  # noqa: E402
from diffusion.quality.cas import Digits, balanced_indices, cas  # noqa: E402
from diffusion.quality.evaluate import conditional_accuracy, frechet_per_class  # noqa: E402
from diffusion.quality.measures import prdc_with_reference  # noqa: E402
from diffusion.quality.samples import balanced_labels  # noqa: E402

BLOCK = 10  # digits of one class per seed block, as generate.seed_block


def evaluations_per_digit(sampler: SamplerConfig) -> int:
    """Network evaluations per digit: a student's steps; the teacher's, doubled by guidance other than 0, 1."""
    if sampler.name == "distilled":
        return sampler.steps
    return sampler.steps * (1 if sampler.guidance in (0.0, 1.0) else 2)


def draw(
    model, process, sampler: SamplerConfig, count: int, hardware: HardwareConfig
) -> tuple[Digits, float]:
    """`count` digits, class-balanced, in seed blocks of BLOCK (seeded by class and block); digits/s."""
    device = torch.device(hardware.device)
    labels = balanced_labels(count).sort().values
    generators = [torch.Generator().manual_seed(7919 * i) for i in range(count // BLOCK)]
    synchronize(device)
    start = time.perf_counter()
    images = sample_blocks(
        model,
        process,
        labels,
        sampler,
        generators,
        device,
        hardware.resolved_precision(),
        hardware.network_batch,
    )
    synchronize(device)
    return Digits(images.float().cpu(), labels), count / (time.perf_counter() - start)


def judge(
    digits: Digits, evaluator, real: dict[str, DigitsDataset], cfg, device: torch.device
) -> dict[str, Any]:
    """Evaluator accuracy, Fréchet distance, coverage and CAS of one set of digits."""
    feats = {
        name: in_batches(evaluator.features, d.images, device, 500).cpu()
        for name, d in [("synthetic", digits), ("train", real["train"]), ("test", real["test"])]
    }
    frechet = frechet_per_class(feats["synthetic"], digits.labels, feats["train"], real["train"].labels)
    size = min(len(digits.labels), len(real["train"].labels))  # PRDC compares sets of one size
    reference = balanced_indices(real["train"].labels, size, torch.Generator().manual_seed(0))
    coverage = prdc_with_reference(feats["synthetic"], feats["train"][reference], feats["test"], cfg.prdc_k)
    scores = cas(digits, real["train"], real["val"], real["test"], cfg.cas, device, gain=False)
    return {
        "evaluator_accuracy": conditional_accuracy(evaluator, digits.images, digits.labels),
        "frechet_distance": sum(frechet.values()) / len(frechet),
        "coverage": coverage.get("coverage"),
        "coverage_ratio": coverage.get("coverage_ratio"),
        "cas": {"means": scores.means, "intervals": {k: list(v) for k, v in scores.intervals.items()}},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = load_recipe(
        args.params, args.device, {"evaluate": {"cas": {"seeds": args.seeds}}} if args.seeds else None
    )
    device = torch.device(params.hardware.device)
    guidance = args.guidance if args.guidance is not None else params.generate.sampler.guidance
    student_steps = args.student_steps or student_config(args.student)["steps"]
    teacher_sha256 = file_sha256(Path(args.teacher) / "ema.safetensors")
    # before any loading, the checks `digits generate` makes: steps, guidance range, this teacher's student
    for n in student_steps:
        check_student(args.student, n, guidance, teacher_sha256, "--student-steps / --guidance")
    prepared = Path(args.prepared)
    real = {split: DigitsDataset(prepared / f"{split}.parquet") for split in ("train", "val", "test")}
    evaluator = load_evaluator(args.evaluator, device).eval()
    teacher, process = load_diffusion(args.teacher, device)
    rows = []
    samplers = [SamplerConfig(name="dpm-solver++", steps=n, guidance=guidance) for n in args.teacher_steps]
    samplers += [SamplerConfig(name="distilled", steps=n, guidance=guidance) for n in student_steps]
    for sampler in samplers:
        model = (
            teacher if sampler.name != "distilled" else load_student(args.student, sampler.steps, device)[0]
        )
        digits, rate = draw(model, process, sampler, args.count, params.hardware)  # sample_blocks: no_grad
        quality = judge(digits, evaluator, real, params.evaluate, device)
        row = {
            "sampler": sampler.model_dump(mode="json"),
            "evaluations_per_digit": evaluations_per_digit(sampler),
            "digits_per_s": rate,
            **quality,
        }
        rows.append(row)
        cas_ratio = row["cas"]["means"].get("cas_ratio")
        print(
            f"{sampler.name} {sampler.steps}: {row['evaluations_per_digit']} evaluations/digit, {rate:.1f} digits/s, "
            f"evaluator {row['evaluator_accuracy']:.4f}, CAS ratio {cas_ratio:.3f}",
            flush=True,
        )
    return {
        **header(
            device,
            args.smoke,
            {"count": args.count, "guidance": guidance, "seeds": list(params.evaluate.cas.seeds)},
        ),
        "rows": rows,
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    for name, marker in (("dpm-solver++", "o"), ("distilled", "s")):
        rows = [r for r in doc["rows"] if r["sampler"]["name"] == name]
        if not rows:
            continue
        x = [r["evaluations_per_digit"] for r in rows]
        y = [r["cas"]["means"]["cas_ratio"] for r in rows]
        low = [
            y_i - r["cas"]["intervals"].get("cas_ratio", [y_i, y_i])[0]
            for y_i, r in zip(y, rows, strict=True)
        ]
        high = [
            r["cas"]["intervals"].get("cas_ratio", [y_i, y_i])[1] - y_i
            for y_i, r in zip(y, rows, strict=True)
        ]
        label = "teacher, DPM-Solver++" if name == "dpm-solver++" else "distilled student"
        ax.errorbar(x, y, yerr=[low, high], marker=marker, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("network evaluations per digit")
    ax.set_ylabel("CAS ratio (synthetic / real)")
    ax.legend()
    save_png(fig, path)


def table(doc: dict[str, Any]) -> str:
    lines = [
        "| sampler | evaluations/digit | digits/s | evaluator accuracy | CAS ratio (95%) | Fréchet | coverage |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in doc["rows"]:
        means, intervals = r["cas"]["means"], r["cas"]["intervals"]
        ratio = means.get("cas_ratio")
        low, high = intervals.get("cas_ratio", [None, None])
        shown = f"{ratio:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{ratio:.3f}"
        lines.append(
            f"| {r['sampler']['name']} {r['sampler']['steps']} | {r['evaluations_per_digit']} | {r['digits_per_s']:.1f} "
            f"| {r['evaluator_accuracy']:.4f} | {shown} | {r['frechet_distance']:.3f} | {r['coverage']:.3f} |"
        )
    return "\n".join(lines)


def smoke(args: argparse.Namespace, work: Path) -> None:
    """Tiny random models, a student distilled for a few steps, rendered digits: every part runs."""
    from tests.generate_fixtures import distill_tiny_student, write_tiny_models

    paths = write_tiny_models(work / "models")
    distill_tiny_student(paths, work / "student", work / "resume")
    args.teacher, args.student, args.evaluator = paths["model"], str(work / "student"), paths["evaluator"]
    args.prepared, args.count, args.seeds = str(Path(paths["train"]).parent), 40, [0]
    args.teacher_steps, args.student_steps = [2], args.student_steps or [2, 1]
    if args.guidance is None:
        args.guidance = 1.5  # guided: the teacher's evaluations double, the students' do not
    args.params = work / "params.yaml"
    args.params.write_text(
        "evaluate:\n  cas: " + str({**SMOKE_CAS, "seeds": [0]}).replace("'", "") + "\n"
        "hardware:\n  precision: fp32\n  network_batch: 16\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--teacher", default="data/models/diffusion")
    parser.add_argument("--student", default="data/models/distilled")
    parser.add_argument("--evaluator", default="data/models/evaluator")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--count", type=int, default=2000, help="digits per sampler (a multiple of 100)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="CAS seeds (default: params')")
    parser.add_argument("--guidance", type=float, default=None, help="default: generate.sampler.guidance")
    parser.add_argument("--teacher-steps", type=int, nargs="+", default=[10, 20])
    parser.add_argument(
        "--student-steps", type=int, nargs="+", default=None, help="default: every step count the student has"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/distill-frontier.json")
    parser.add_argument("--smoke", action="store_true", help="tiny random models and rendered digits")
    args = parser.parse_args()
    if args.count % 100:
        raise SystemExit("--count: a multiple of 100 (ten classes in seed blocks of 10)")
    with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:
        if args.smoke:
            smoke(args, Path(tmp))
        try:
            doc = run(args)
        except DigitsError as err:  # a student or checkpoint that does not fit: one line, exit 2
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    write_json(args.out, doc)
    plot(doc, args.out.with_suffix(".png"))
    print(table(doc))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
