"""A generation run from start to publish, as library functions the Prefect flow orchestrates.

    spec = prepare_run(cfg, hardware, model_dir, classifier_dir, train_data)   # once per run
    ... make_task(spec.job(task)) for the tasks plan_round gives, round after round ...
    version = publish_run(spec, blocks, logical_date, quality, ...)   # trim, gate, card, manifest, publish

Everything that could fail on bad input (device, checkpoints, CLIP, training digits, output root, sampler
steps, task runner) fails in `prepare_run`, before anything is staged, with one line naming the file or
field (`diffusion.generate.inputs.check_run_inputs`). It loads the judges into this process's worker cache
(`diffusion.generate.workers`), which is how CLIP is checked, so the tasks of an in-process run use the
very same networks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from diffusion.checkpoint import write_json_atomic
from diffusion.config import GenerateConfig, HardwareConfig, QualityConfig
from diffusion.data.card import dataset_card
from diffusion.data.shards import PublishedVersion, list_versions, publish_version
from diffusion.data.staged import accepted_rows, concat_staged, in_seeded_order, with_created_at
from diffusion.generate import staging, workers
from diffusion.generate.inputs import check_run_inputs
from diffusion.generate.plan import ClassProgress, GenerationError, TaskKey, run_key
from diffusion.generate.task import BlockOutcome, TaskJob, TaskOutcome
from diffusion.precision import Precision
from diffusion.quality.expectations import GateError, GateSpec, validate_rows
from diffusion.styles import STYLES, cell_digit, cell_name, cell_style

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
    """A checked run: its configs, inputs and their checksums, the precision it runs in, its key."""

    cfg: GenerateConfig
    hardware: HardwareConfig
    model_dir: str
    classifier_dir: str
    train_data: str
    checksums: dict[str, str]  # model, classifier, clip, train
    precision: Precision  # hardware.precision resolved for the device
    key: str
    trained_styles: tuple[str, ...]  # the styles the diffusion model was trained on (its config.json)
    # where the training digits came from (prepare's sources.json beside the split; None: not recorded)
    training_sources: list[dict[str, Any]] | None

    @property
    def run_id(self) -> str:
        return self.key[:12]

    @property
    def staging(self) -> Path:
        return Path(self.cfg.staging_dir) / self.run_id

    @property
    def task_blocks(self) -> int:
        return self.cfg.task_size // self.cfg.seed_block

    def job(self, task: TaskKey) -> TaskJob:
        c, h = self.cfg, self.hardware
        return TaskJob(
            task=task,
            run_id=self.run_id,
            staging=str(self.staging),
            model_dir=self.model_dir,
            classifier_dir=self.classifier_dir,
            clip=c.clip,
            sampler=c.sampler,
            filter=c.filter,
            seed_block=c.seed_block,
            best_of_n=c.best_of_n,
            seed=c.seed,
            checksums=self.checksums,
            device=h.device,
            precision=self.precision,
            network_batch=h.network_batch,
            compile=h.compile,
        )


def prepare_run(
    cfg: GenerateConfig,
    hardware: HardwareConfig,
    model_dir: str,
    classifier_dir: str,
    train_data: str,
    student_dir: str | None = None,
) -> RunSpec:
    """Check every input before any work (`check_run_inputs`: the networks loaded into this worker); fix the
    run key; create the staging folder with run.json. Raises a DigitsError (one line naming the file or
    field) on bad input, with nothing staged."""
    inputs = check_run_inputs(cfg, hardware, model_dir, classifier_dir, train_data, student_dir)
    precision = hardware.resolved_precision()
    key = run_key(cfg, inputs.device.type, precision, inputs.checksums, hardware.compile)
    spec = RunSpec(
        cfg,
        hardware,
        inputs.model_dir,
        str(classifier_dir),
        str(train_data),
        inputs.checksums,
        precision,
        key,
        inputs.trained,
        inputs.training_sources,
    )
    spec.staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        spec.staging / "run.json",
        {"key": spec.key, "params": cfg.model_dump(mode="json"), "precision": precision, **inputs.checksums},
    )
    return spec


def tally(spec: RunSpec, blocks: list[BlockOutcome]) -> dict[int, ClassProgress]:
    """Per-class progress from the staged blocks so far (requested from the config)."""
    progress = {c: ClassProgress(requested=n) for c, n in spec.cfg.counts().items()}
    for o in blocks:
        p = progress[o.key.cell]
        p.blocks, p.sampled, p.accepted = p.blocks + 1, p.sampled + o.sampled, p.accepted + o.accepted
    return progress


def published_run(spec: RunSpec, quality: QualityConfig) -> PublishedVersion | None:
    """The version this run would publish, if a run published it before: the same run key (the same
    digits), counts, shards, gate and training sources (a run killed after publishing, before grading, or
    the same params run again), newest first; None when there is none. A rerun takes it (and grades it)
    instead of sampling and publishing the same files a second time under another date. (The run key alone leaves
    counts out, so that a run asking for more digits reuses the staged blocks of one that asked for fewer.)"""
    gate = quality.model_dump(mode="json")
    for version in reversed(list_versions(spec.cfg.output_root, spec.cfg.name, broken=[])):
        m = version.manifest
        same_digits = m.get("run_key") == spec.key and _requested(m) == spec.cfg.counts()
        same_files = m.get("params", {}).get("shard_rows") == spec.cfg.shard_rows and m.get("quality") == gate
        same_card = m.get("training_sources") == spec.training_sources  # the card names the sources
        if same_digits and same_files and same_card:
            staging.discard(spec.staging)  # a run killed between publishing and discarding its staging
            return dataclasses.replace(version, reused=True)
    return None


def _requested(manifest: dict[str, Any]) -> dict[int, int] | None:
    """Per class (`counts` keys), the digits a version's manifest says its run asked for; None when its
    manifest does not say (written by other code)."""
    counts = manifest.get("counts")
    try:
        return {int(c): int(n["requested"]) for c, n in counts.items()}  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def published_progress(version: PublishedVersion) -> dict[int, ClassProgress]:
    """Per-class progress as the version's manifest recorded it (`publish_run`), keyed as `tally`'s."""
    return {
        int(c): ClassProgress(n["requested"], n.get("blocks", 0), n.get("sampled", 0), n.get("accepted", 0))
        for c, n in version.manifest["counts"].items()
    }


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
    blocks: list[BlockOutcome],
    logical_date: datetime,
    quality: QualityConfig,
    model_revision: str | None = None,
) -> PublishedVersion:
    """Trim the staged rows to exact counts, gate both splits (Great Expectations), publish the version with
    its Data Docs in `data_docs/`, then discard the run's staging folder.

    Raises GateError (one line naming the split, the failed expectations and the Data Docs) and publishes
    nothing when the gate fails; the staging folder then stays for a rerun.
    """
    logical_date = logical_date.astimezone(UTC).replace(microsecond=0)
    staged = concat_staged([o.path for o in sorted(blocks, key=lambda o: o.key)])
    counts = spec.cfg.counts()
    unfiltered = with_created_at(staged, logical_date)
    try:
        train = accepted_rows(unfiltered, counts)
    except ValueError as err:  # the staged shards hold fewer accepted rows than their outcomes counted
        raise GenerationError(
            f"{spec.staging}: {err}; the staged shards changed: delete the folder, run again"
        ) from None
    train, unfiltered = in_seeded_order(train, spec.key), in_seeded_order(unfiltered, spec.key)

    version = version_name(spec, logical_date)
    device = torch.device(spec.hardware.device)
    pixels = workers.train_pixels(spec.train_data, spec.checksums["train"], device)
    docs = spec.staging / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)
    gate = validate_rows(
        train, GateSpec.from_config(counts, spec.cfg.filter, quality), pixels, docs, unfiltered
    )
    if not gate.success:
        raise GateError(f"{gate.summary()} (Data Docs: {gate.docs_index})")

    progress = tally(spec, blocks)
    manifest: dict[str, Any] = {
        "name": spec.cfg.name,
        "version": version,
        "created_at": logical_date.isoformat(),
        "run_id": spec.run_id,
        "run_key": spec.key,
        "params": spec.cfg.model_dump(mode="json"),
        "hardware": {**spec.hardware.model_dump(mode="json"), "precision": spec.precision},
        "quality": quality.model_dump(mode="json"),
        "counts": {  # per class: a (digit, style) cell keyed 10 x style code + digit (diffusion.styles.cell)
            str(c): {
                "digit": cell_digit(c),
                "style": STYLES[cell_style(c)],
                "requested": p.requested,
                "sampled": p.sampled,
                "accepted": p.accepted,
                "blocks": p.blocks,
                "acceptance_rate": p.acceptance_rate,
            }
            for c, p in progress.items()
        },
        "model": {
            "path": spec.model_dir,
            "sha256": spec.checksums["model"],
            "git_revision": model_revision,
            "styles": list(spec.trained_styles),
        },
        "training_sources": spec.training_sources,
        "judges": {"classifier_sha256": spec.checksums["classifier"], "clip": spec.checksums["clip"]},
        "gate": {
            "memorization_rate": gate.memorization_rate,
            "duplicate_rate": gate.duplicate_rate,
            "copy_distance": quality.copy_distance,
            **gate.statistics,
            **({"per_style": gate.per_style} if gate.per_style else {}),
        },
        "git_revision": git_revision(),
        "packages": _packages(),
    }
    card = dataset_card(manifest, {"train": train, "unfiltered": unfiltered})
    published = publish_version(
        spec.cfg.output_root,
        spec.cfg.name,
        version,
        {"train": train, "unfiltered": unfiltered},
        spec.cfg.shard_rows,
        card,
        manifest,
        {f"data_docs/{p.relative_to(docs)}": p.read_bytes() for p in sorted(docs.rglob("*")) if p.is_file()},
    )
    staging.discard(spec.staging)
    return published


def run_metrics(
    spec: RunSpec, tasks: list[TaskOutcome], seconds: float, progress: dict[int, ClassProgress] | None = None
) -> dict[str, Any]:
    """The run's headline numbers (DVC metrics) and where the tasks' time went (shares of task time).
    `progress`: per class, when not the tasks' (`published_progress` of a version published before: then
    this run sampled nothing, and its rate is NaN, null in the metrics file)."""
    blocks = [b for t in tasks for b in t.blocks]
    sampled_here = progress is None
    progress = tally(spec, blocks) if progress is None else progress
    requested = sum(p.requested for p in progress.values())
    sampled = sum(p.sampled for p in progress.values())
    spent: dict[str, float] = {}
    for t in tasks:
        for part, s in t.seconds.items():
            spent[part] = spent.get(part, 0.0) + s
    total = sum(spent.values())
    return {
        "requested": requested,
        "accepted": sum(min(p.accepted, p.requested) for p in progress.values()),
        "sampled": sampled,
        "acceptance_rate": sum(p.accepted for p in progress.values()) / max(sampled, 1),
        "tasks": len(tasks),
        "blocks": len(blocks),
        "reused_blocks": sum(b.reused for b in blocks),
        "seconds": seconds,
        "images_per_second": requested / max(seconds, 1e-9) if sampled_here else float("nan"),
        "task_seconds": {part: round(s, 3) for part, s in spent.items()},
        "task_share": {part: round(s / total, 4) for part, s in spent.items()} if total else {},
    }


def summary_line(version: PublishedVersion, metrics: dict[str, Any]) -> str:
    """'published <path>: N digits, acceptance rate r, x digits/s' (or 'already published ...', the rate of
    a version published by an earlier run not being this run's): the CLI's line and the run's artifact."""
    rate = metrics["images_per_second"]
    speed = f"{rate:.1f} digits/s" if math.isfinite(rate) else "sampled by the run that published it"
    return (
        f"{'already published' if version.reused else 'published'} {version.path}: {metrics['accepted']}"
        f" digits, acceptance rate {metrics['acceptance_rate']:.3f}, {speed}"
    )


def class_rows(
    spec: RunSpec, blocks: list[BlockOutcome], progress: dict[int, ClassProgress] | None = None
) -> list[dict[str, Any]]:
    """One row per class: requested, accepted (capped at the request), sampled, blocks, acceptance rate;
    from `progress` when given (as `run_metrics`)."""
    return [
        {
            "class": c,
            "requested": p.requested,
            "accepted": min(p.accepted, p.requested),
            "sampled": p.sampled,
            "blocks": p.blocks,
            "acceptance_rate": round(p.acceptance_rate, 4),
        }
        for c, p in (tally(spec, blocks) if progress is None else progress).items()
    ]


def named_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`class_rows` as people read them (artifacts, the DVC plot): "7" for a handwritten-mnist digit,
    "printed/7" for a digit of another style."""
    return [{**row, "class": cell_name(row["class"])} for row in rows]
