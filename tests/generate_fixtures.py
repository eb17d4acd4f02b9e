"""Tiny real models and data for the generation tests: a random-weight U-Net, classifier and domain CLIP.

The weights are random but every component is the real one (the same checkpoint folders, loaders,
samplers, judges and Parquet schema as a full run), so the flow's mechanics are tested in seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from diffusion.checkpoint import save_checkpoint
from diffusion.config import (
    ClassifierConfig,
    ClipConfig,
    DiffusionConfig,
    EvaluatorConfig,
    GenerateConfig,
    HardwareConfig,
    QualityConfig,
)
from diffusion.data.schema import digits_table
from diffusion.judges.classifier import ARCHITECTURE, DigitClassifier
from diffusion.judges.clip import _create_domain_model, save_clip
from diffusion.judges.evaluator import DigitEvaluator, save_evaluator
from diffusion.model.saved import new_model, save_diffusion
from tests.judges_fixtures import render_digits

TINY_DIFFUSION = DiffusionConfig.model_validate(
    {"unet": {"base_channels": 8, "channel_mults": [1, 2], "attention": False}, "sampler": {"steps": 2}}
)
# A random-weight ViT CLIP: the flow tests' thresholds (min_clip_score -9.4) are set on its scores.
TINY_CLIP = ClipConfig(
    model="gen-test-clip",
    vision="vit",
    image_size=28,
    width=32,
    layers=1,
    text_width=32,
    text_layers=1,
    embed_dim=16,
)
TINY_CLASSIFIER = ClassifierConfig(channels=(8, 16), hidden=32)
TINY_EVALUATOR = EvaluatorConfig(widths=(4, 8, 8))


def write_tiny_models(root: Path) -> dict[str, str]:
    """Write the four checkpoint folders (diffusion, classifier, CLIP, evaluator) and small real-looking
    train, val and test splits; return their paths."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = new_model(TINY_DIFFUSION, torch.device("cpu"))
        save_diffusion(root / "diffusion", TINY_DIFFUSION, unet.state_dict(), unet.state_dict(), {"steps": 0})
        classifier = DigitClassifier.from_config(TINY_CLASSIFIER)
        arch = TINY_CLASSIFIER.model_dump(mode="json")
        save_checkpoint(
            root / "classifier",
            "classifier",
            {k: arch[k] for k in ARCHITECTURE},
            {"model": classifier.state_dict()},
        )
        save_clip(root / "clip", TINY_CLIP, _create_domain_model(TINY_CLIP, torch.device("cpu")).model)
        evaluator = DigitEvaluator.from_config(TINY_EVALUATOR)
        save_evaluator(root / "evaluator", TINY_EVALUATOR, evaluator, {})
    for seed, split, n in ((0, "train", 60), (1, "val", 40), (2, "test", 40)):
        images, labels = render_digits(n, seed=seed)
        pq.write_table(
            digits_table([f"{split}-{i}" for i in range(n)], images, labels, "rendered"),
            root / f"{split}.parquet",
        )
    return {
        "model": str(root / "diffusion"),
        "classifier": str(root / "classifier"),
        "clip": str(root / "clip"),
        "evaluator": str(root / "evaluator"),
        **{split: str(root / f"{split}.parquet") for split in ("train", "val", "test")},
    }


def distill_tiny_student(paths: dict[str, str], folder: Path, resume: Path, teacher_steps: int = 8) -> str:
    """A few optimiser steps of distillation of the tiny teacher (`write_tiny_models`) into students for
    `teacher_steps`, its halves and 1 step at w in [1, 3], written to `folder`; its path."""
    from diffusion.checkpoint import file_sha256
    from diffusion.config import DistillConfig
    from diffusion.data.datasets import DigitsDataset
    from diffusion.model.distill import distill
    from diffusion.model.saved import load_diffusion

    teacher, process = load_diffusion(paths["model"])
    cfg = DistillConfig(
        teacher_steps=teacher_steps,
        min_steps=1,
        guidance_range=(1.0, 3.0),
        guidance_steps=2,
        round_steps=2,
        batch_size=4,
        log_every=1,
    )
    sha = file_sha256(Path(paths["model"]) / "ema.safetensors")
    distill(teacher, process, cfg, DigitsDataset(paths["train"]), sha, folder, resume, progress=False)
    return str(folder)


def tiny_generate(paths: dict[str, str], root: Path, **over: object) -> GenerateConfig:
    """A generation config for the tiny models: a few small seed blocks, publishing under `root`."""
    raw = {
        "name": "tiny-digits",
        "per_class": 3,
        "sampler": {"name": "dpm-solver++", "steps": 2, "guidance": 1.0},
        "seed_block": 4,
        "task_size": 8,
        "filter": {"require_pred_match": False, "min_clip_margin": None, "min_classifier_prob": 0.05},
        "clip": {"model": TINY_CLIP.model, "pretrained": paths["clip"]},
        "shard_rows": 7,
        "output_root": str(root / "published"),
        "staging_dir": str(root / "staging"),
        "max_attempts": 20,
    }
    return GenerateConfig.model_validate({**raw, **over})


DATE = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
LOOSE = QualityConfig(copy_distance=0.01, max_memorization=1.0)  # random weights draw noise, never copies


def run_generate(
    cfg: GenerateConfig, models: dict[str, str], quality: QualityConfig = LOOSE, **kw: Any
) -> Any:
    """The generation flow on the tiny models, on cfg's task runner, in fp32 unless `hardware` is given."""
    from flows.generate import generate_dataset

    return generate_dataset(
        cfg=cfg,
        hardware=kw.pop("hardware", HardwareConfig(precision="fp32")),
        model=models["model"],
        classifier=models["classifier"],
        train_data=models["train"],
        quality=quality,
        logical_date=kw.pop("logical_date", DATE),
        **kw,
    )
