"""A generation run from start to publish, as library functions the Prefect flow orchestrates.

    spec = prepare_run(cfg, model_dir, classifier_dir)       # checks inputs, fixes the run key and staging
    ... make_batch(spec.job(key)) for the keys plan_round gives, round after round ...
    version = publish_run(spec, outcomes, logical_date, ...) # trim, gate, card, manifest, atomic publish

Everything that could fail on bad input (checkpoints, CLIP, output root, sampler steps) fails in
`prepare_run`, before any sampling, with one line naming the file or field.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from diffusion.checkpoint import CheckpointError, read_checkpoint_config, write_json_atomic
from diffusion.config import GenerateConfig, QualityConfig
from diffusion.data.card import dataset_card
from diffusion.data.datasets import load_arrays
from diffusion.data.shards import (
    PublishedVersion,
    accepted_rows,
    check_writable,
    publish_version,
    read_shard,
    with_created_at,
)
from diffusion.generate.batch import BatchJob, BatchOutcome, file_sha256
from diffusion.generate.plan import ClassProgress, GenerationError, WorkKey, run_key
from diffusion.judges.clip import WEIGHTS_FILE, load_clip
from diffusion.quality.expectations import GateError, GateSpec, validate_rows

PACKAGES = (
    "digits-diffusion",
    "torch",
    "open_clip_torch",
    "prefect",
    "great_expectations",
    "pyarrow",
    "numpy",
)


@dataclass(frozen=True)
class RunSpec:
    """A checked run: its config, inputs and their checksums, its key and staging folder."""

    cfg: GenerateConfig
    model_dir: str
    classifier_dir: str
    checksums: dict[str, str]
    key: str

    @property
    def run_id(self) -> str:
        return self.key[:12]

    @property
    def staging(self) -> Path:
        return Path(self.cfg.staging_dir) / self.run_id

    def job(self, key: WorkKey) -> BatchJob:
        c = self.cfg
        return BatchJob(
            key=key,
            run_id=self.run_id,
            staging=str(self.staging),
            model_dir=self.model_dir,
            classifier_dir=self.classifier_dir,
            clip=c.clip,
            sampler=c.sampler,
            filter=c.filter,
            batch_size=c.batch_size,
            best_of_n=c.best_of_n,
            seed=c.seed,
            model_sha256=self.checksums["model"],
            device=c.device,
        )


def _weights(directory: str, name: str, kind: str) -> str:
    """The checksum of a checkpoint's weights file, after checking the folder is a `kind` checkpoint."""
    read_checkpoint_config(directory, kind)
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    return file_sha256(path)


def prepare_run(cfg: GenerateConfig, model_dir: str, classifier_dir: str) -> RunSpec:
    """Check every input before any work; fix the run key; create the staging folder with run.json."""
    checksums = {
        "model": _weights(model_dir, "ema.safetensors", "diffusion"),
        "classifier": _weights(classifier_dir, "model.safetensors", "classifier"),
    }
    timesteps = (
        read_checkpoint_config(model_dir, "diffusion")["config"].get("process", {}).get("timesteps", 1000)
    )
    if cfg.sampler.steps > timesteps:
        raise GenerationError(
            f"generate.sampler.steps ({cfg.sampler.steps}) must be <= the model's {timesteps} timesteps"
        )
    load_clip(cfg.clip.model, cfg.clip.pretrained, "cpu")  # an unknown CLIP or missing weights fail here
    weights = Path(cfg.clip.pretrained or "")
    weights = weights / WEIGHTS_FILE if weights.is_dir() else weights
    checksums["clip"] = (
        file_sha256(weights) if weights.is_file() else f"{cfg.clip.model}:{cfg.clip.pretrained}"
    )
    check_writable(cfg.output_root, cfg.name)
    spec = RunSpec(cfg, str(model_dir), str(classifier_dir), checksums, run_key(cfg, checksums))
    spec.staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        spec.staging / "run.json", {"key": spec.key, "params": cfg.model_dump(mode="json"), **checksums}
    )
    return spec


def tally(spec: RunSpec, outcomes: list[BatchOutcome]) -> dict[int, ClassProgress]:
    """Per-class progress from the outcomes so far (requested from the config)."""
    progress = {c: ClassProgress(requested=n) for c, n in spec.cfg.counts().items()}
    for o in outcomes:
        p = progress[o.key.digit]
        p.batches, p.sampled, p.accepted = p.batches + 1, p.sampled + o.sampled, p.accepted + o.accepted
    return progress


def version_name(spec: RunSpec, logical_date: datetime) -> str:
    """'<logical date>-<hash of the run key, counts and sharding>', e.g. '20261126-030000-1f2e3d4c'."""
    what = json.dumps([spec.key, spec.cfg.counts(), spec.cfg.shard_rows], sort_keys=True)
    return f"{logical_date:%Y%m%d-%H%M%S}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


def git_revision(repo: str | Path = ".") -> str | None:
    """The commit checked out in `repo`, or None outside a git repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _packages() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def publish_run(
    spec: RunSpec,
    outcomes: list[BatchOutcome],
    logical_date: datetime,
    quality: QualityConfig,
    train_data: str,
    model_revision: str | None = None,
) -> PublishedVersion:
    """Trim the staged rows to exact counts, gate them (Great Expectations), publish the version with its
    Data Docs in `data_docs/`.

    Raises GateError (one line naming the failed expectations and the Data Docs) and publishes nothing
    when the gate fails.
    """
    logical_date = logical_date.astimezone(UTC).replace(microsecond=0)
    ordered = sorted(outcomes, key=lambda o: o.key)
    staged = []
    for o in ordered:
        table = read_shard(o.path)
        if table is None:
            raise GenerationError(f"{o.path}: staged shard vanished or is unreadable; run again to remake it")
        staged.append(table)
    counts = spec.cfg.counts()
    train = with_created_at(accepted_rows(staged, counts), logical_date)
    unfiltered = with_created_at(pa.concat_tables(staged).combine_chunks(), logical_date)

    version = version_name(spec, logical_date)
    train_images, _ = load_arrays(train_data)
    docs = spec.staging / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)
    gate = validate_rows(train, GateSpec.from_config(counts, spec.cfg.filter, quality), train_images, docs)
    if not gate.success:
        raise GateError(f"{gate.summary()} (Data Docs: {gate.docs_index})")

    progress = tally(spec, outcomes)
    manifest: dict[str, Any] = {
        "name": spec.cfg.name,
        "version": version,
        "created_at": logical_date.isoformat(),
        "run_id": spec.run_id,
        "run_key": spec.key,
        "params": spec.cfg.model_dump(mode="json"),
        "quality": quality.model_dump(mode="json"),
        "counts": {
            str(c): {
                "requested": p.requested,
                "sampled": p.sampled,
                "accepted": p.accepted,
                "batches": p.batches,
                "acceptance_rate": p.acceptance_rate,
            }
            for c, p in progress.items()
        },
        "model": {"path": spec.model_dir, "sha256": spec.checksums["model"], "git_revision": model_revision},
        "judges": {"classifier_sha256": spec.checksums["classifier"], "clip": spec.checksums["clip"]},
        "gate": {
            "memorization_rate": gate.memorization_rate,
            "duplicate_rate": gate.duplicate_rate,
            **gate.statistics,
        },
        "git_revision": git_revision(),
        "packages": _packages(),
    }
    card = dataset_card(manifest, {"train": train.num_rows, "unfiltered": unfiltered.num_rows})
    return publish_version(
        spec.cfg.output_root,
        spec.cfg.name,
        version,
        {"train": train, "unfiltered": unfiltered},
        spec.cfg.shard_rows,
        card,
        manifest,
        {f"data_docs/{p.relative_to(docs)}": p.read_bytes() for p in sorted(docs.rglob("*")) if p.is_file()},
    )


def run_metrics(spec: RunSpec, outcomes: list[BatchOutcome], seconds: float) -> dict[str, Any]:
    """The run's headline numbers (DVC metrics) and where the batches' time went (shares of task time)."""
    progress = tally(spec, outcomes)
    requested = sum(p.requested for p in progress.values())
    sampled = sum(p.sampled for p in progress.values())
    spent: dict[str, float] = {}
    for o in outcomes:
        for part, s in o.seconds.items():
            spent[part] = spent.get(part, 0.0) + s
    total = sum(spent.values())
    return {
        "requested": requested,
        "accepted": sum(min(p.accepted, p.requested) for p in progress.values()),
        "sampled": sampled,
        "acceptance_rate": sum(p.accepted for p in progress.values()) / max(sampled, 1),
        "batches": len(outcomes),
        "reused_batches": sum(o.reused for o in outcomes),
        "seconds": seconds,
        "images_per_second": requested / max(seconds, 1e-9),
        "task_seconds": {part: round(s, 3) for part, s in spent.items()},
        "task_share": {part: round(s / total, 4) for part, s in spent.items()} if total else {},
    }


def class_rows(spec: RunSpec, outcomes: list[BatchOutcome]) -> list[dict[str, Any]]:
    """One row per class: requested, accepted (capped at the request), sampled, batches, acceptance rate."""
    return [
        {
            "class": c,
            "requested": p.requested,
            "accepted": min(p.accepted, p.requested),
            "sampled": p.sampled,
            "batches": p.batches,
            "acceptance_rate": round(p.acceptance_rate, 4),
        }
        for c, p in tally(spec, outcomes).items()
    ]
