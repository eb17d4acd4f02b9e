"""Full-size diffusion training and a sampler benchmark on a GPU, as one prepared run.

Trains the classifier judge and the full-size U-Net (the GPU setting documented in the README) on
the prepared splits, then judges 1,000 guided samples with each sampler and times it. Writes
`results.json` and the loss curve into --out.

    python -m benchmarks.gpu_full_size --prepared data/prepared --out benchmarks/out --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: `benchmarks` is importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.samplers import sweep  # noqa: E402
from diffusion.config import load_params  # noqa: E402
from diffusion.data.datasets import DigitsDataset  # noqa: E402
from diffusion.judges.classifier import load_classifier, save_classifier, train_classifier  # noqa: E402
from diffusion.model.saved import load_diffusion  # noqa: E402
from diffusion.model.train import train_diffusion  # noqa: E402
from diffusion.precision import resolve_precision  # noqa: E402

# The full-size setting: the same keys as `dvc exp run -S diffusion.unet.base_channels=64 ...` in the README.
GPU_UNET = {"base_channels": 64, "channel_mults": (1, 2, 2), "num_res_blocks": 2}
GPU_TRAIN = {
    "batch_size": 256,
    "lr": 1e-3,
    "warmup_steps": 500,
    "ema_decay": 0.9995,
    "checkpoint_every": 2000,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--out", type=Path, required=True, help="results.json, loss.csv")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu-full-size"), help="checkpoints")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default=None, help="default: hardware.precision"
    )
    ap.add_argument("--train-seconds", type=float, default=300.0, help="budget that sets the step count")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    params = load_params("params.yaml")
    precision = resolve_precision(args.precision or params.hardware.precision, device)  # diffusion training
    train, val, test = (DigitsDataset(args.prepared / f"{s}.parquet") for s in ("train", "val", "test"))
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }

    def save() -> None:  # after every phase, so a run cut short still reports what it measured
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    start = time.perf_counter()
    ccfg = params.classifier
    clf = train_classifier(ccfg, train, val, test, progress=False, device=device)
    save_classifier(args.work / "classifier", ccfg, clf.model, clf.metrics)
    results["classifier"] = {**clf.metrics, "seconds": time.perf_counter() - start}
    print("classifier", results["classifier"]["test_accuracy"], flush=True)
    save()

    # Preflight: 100 steps give the step rate; the step count then fills the training budget.
    base = params.diffusion
    unet = base.unet.model_copy(update=GPU_UNET)
    probe = base.train.model_copy(update={**GPU_TRAIN, "steps": 100})
    cfg = base.model_copy(update={"unet": unet, "train": probe})
    on = {"progress": False, "device": device, "precision": precision}
    t0 = time.perf_counter()
    train_diffusion(cfg, train, val, args.work / "probe", args.work / "probe-resume", **on)
    rate = 100 / (time.perf_counter() - t0)
    steps = int(max(1000, min(30000, args.train_seconds * rate)) // 1000 * 1000)
    full = base.train.model_copy(update={**GPU_TRAIN, "steps": steps})
    cfg = base.model_copy(update={"unet": unet, "train": full})
    t0 = time.perf_counter()
    res = train_diffusion(cfg, train, val, args.work / "diffusion", args.work / "resume", **on)
    results["diffusion"] = {
        **res.metrics,
        "seconds": time.perf_counter() - t0,
        "overrides": {"unet": GPU_UNET, "train": {**GPU_TRAIN, "steps": steps}},
        "hardware": {"device": str(device), "precision": precision},
    }
    rows = ["step,train_loss,lr"] + [f"{r['step']},{r['train_loss']},{r['lr']}" for r in res.history]
    (args.out / "loss.csv").write_text("\n".join(rows) + "\n")
    print("diffusion", results["diffusion"], flush=True)
    save()

    model, process = load_diffusion(args.work / "diffusion", device)
    judge = load_classifier(args.work / "classifier", device)
    results["samplers"] = sweep(model, process, judge, device, n=1000, ddpm_n=1000, batch_size=1000)
    save()


if __name__ == "__main__":
    main()
