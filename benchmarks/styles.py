"""Quality per style of a pipeline run on several sources: one table per (style) and two pictures.

    python benchmarks/styles.py --run <a clone where `dvc repro generate` ran with data.sources of several
        styles and generate.per_style> --out benchmarks/results/styles-cpu.json
        --grid benchmarks/results/styles-grid.png --interpolation benchmarks/results/styles-interpolation.png

Reads, all from the run: params.yaml, data/prepared/{train,val,test}.parquet, the version that
data/generated.json names, and the evaluator and diffusion checkpoints under data/models. Fits the style
judge on the real training split (`diffusion.quality.styles`), then writes per style: published rows,
style accuracy (style judge; its accuracy on the style's real test digits beside it) and every headline
metric as `evaluate` measures it per style (CAS at equal size with its 95 % interval over
`evaluate.cas.seeds`, coverage, DCR, the label audit's share, ...). The grid shows the first 8
published digits of every (style, digit), one row each; the interpolation shows digits between two styles
from one x_T (style embedding blended), one row per digit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import header, load_recipe, write_json
from diffusion.data.datasets import DigitsDataset, published_files, to_uint8
from diffusion.data.handoff import published_path
from diffusion.data.images import save_grid
from diffusion.judges.evaluator import load_evaluator
from diffusion.judges.training import in_batches
from diffusion.model.saved import load_diffusion
from diffusion.quality.measures import label_issues
from diffusion.quality.report_styles import style_grid, style_interpolation
from diffusion.quality.styles import PublishedAudit, Styled, fit_style_judge, style_quality
from diffusion.styles import STYLES

MIXES = [0.0, 0.25, 0.5, 0.75, 1.0]


def styled(paths: str | Path | list[str]) -> Styled:
    return Styled.of(DigitsDataset(paths))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--interpolation", type=Path, required=True)
    parser.add_argument("--between", nargs=2, default=["handwritten-mnist", "printed"], choices=STYLES)
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    params = load_recipe(args.run / "params.yaml", None)
    device = torch.device(params.hardware.device)
    prepared = args.run / "data" / "prepared"
    train, val, test = (styled(prepared / f"{s}.parquet") for s in ("train", "val", "test"))
    version = published_path(str(args.run / "data" / "generated.json"))  # relative to that file's folder
    published = styled(published_files(version))

    start = time.perf_counter()
    judge = fit_style_judge(train, val, params.evaluate.style_judge, device)
    judge_seconds = time.perf_counter() - start
    evaluator = load_evaluator(args.run / "data" / "models" / "evaluator", device)
    # the version's label audit, as `evaluate` makes it, and the gate's per-style rates from its manifest
    probs = in_batches(evaluator.probabilities, published.images, device, params.hardware.network_batch).cpu()
    flags = label_issues(published.labels, probs, params.evaluate.label_issue_method)
    manifest = json.loads((Path(version) / "manifest.json").read_text())
    audit = PublishedAudit(torch.from_numpy(flags), manifest["gate"].get("per_style", {}))
    report = style_quality(
        published,
        train,
        val,
        test,
        evaluator,
        judge,
        params.evaluate,
        audit,
        device,
        params.hardware.network_batch,
    )

    images, labels, styles = to_uint8(published.images), published.labels.numpy(), published.styles.numpy()
    grid = [style_grid(images, labels, styles, code, 8) for code in sorted(set(styles.tolist()))]
    save_grid(np.concatenate(grid), args.grid, ncols=8)

    model, process = load_diffusion(args.run / "data" / "models" / "diffusion", device)
    a, b = (STYLES.index(s) for s in args.between)
    pictures = style_interpolation(
        model, process, list(range(10)), a, b, list(MIXES), params.generate.sampler, params.generate.seed
    )
    save_grid(to_uint8(pictures), args.interpolation, ncols=len(MIXES), scale=3)

    settings = {
        "run": str(args.run),
        "version": version,
        "sources": [s.model_dump(mode="json") for s in params.data.sources],
        "per_style": params.generate.per_style,
        "cas": params.evaluate.cas.model_dump(mode="json"),
        "between": args.between,
        "mixes": MIXES,
    }
    doc = header(device, False, settings) | {
        "note": args.note,
        "style_judge_seconds": judge_seconds,
        "styles": report,
    }
    write_json(args.out, doc)
    for style, m in report.items():
        print(
            f"{style}: {m['rows']} rows, conditional accuracy {m['conditional_accuracy_published']:.4f},"
            f" style accuracy {m['style_accuracy']:.4f} (real {m['real_style_accuracy']:.4f}), CAS ratio {m['cas_ratio']:.4f}"
            f" at {m['cas_size']}"
        )


if __name__ == "__main__":
    main()
