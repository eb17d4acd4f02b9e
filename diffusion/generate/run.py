"""A generation run from start to publish, as library functions the Prefect flow orchestrates.

    spec = prepare_run(cfg, hardware, model_dir, classifier_dir, train_data)   # once per run
    ... make_task(spec.job(task)) for the tasks plan_round gives, round after round ...
    version = publish_run(spec, blocks, logical_date, quality, ...)   # trim, gate, card, manifest, publish

Everything that could fail on bad input (device, checkpoints, CLIP, training digits, output root, sampler
steps) fails in `prepare_run`, before any sampling, with one line naming the file or field. It loads the
judges into this process's worker cache (`diffusion.generate.workers`), which is how CLIP is checked, so
the tasks of an in-process run use the very same networks.
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

import torch

from diffusion.checkpoint import CheckpointError, check_output, read_checkpoint_config, write_json_atomic
from diffusion.config import GenerateConfig, HardwareConfig, QualityConfig
from diffusion.data.card import dataset_card
from diffusion.data.shards import (
    PublishedVersion,
    accepted_rows,
    check_writable,
    concat_staged,
    publish_version,
    with_created_at,
)
from diffusion.device import resolve_device
from diffusion.errors import DataError
from diffusion.generate import staging, workers
from diffusion.generate.plan import ClassProgress, GenerationError, TaskKey, run_key
from diffusion.generate.task import BlockOutcome, TaskJob, TaskOutcome, file_sha256
from diffusion.judges.clip import WEIGHTS_FILE
from diffusion.model.saved import trained_styles
from diffusion.model.student import check_student, student_steps, weights_name
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


def _weights(directory: str, name: str) -> str:
    """The checksum of a checkpoint folder's weights file."""
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    return file_sha256(path)


def _check_styles(cfg: GenerateConfig, diffusion: dict[str, Any], model_dir: str) -> tuple[str, ...]:
    """The styles the diffusion model (its config document) was trained on; a GenerationError when the
    request asks for a (digit, style) cell of another style, which the model would draw as noise."""
    trained = tuple(trained_styles(diffusion))
    unseen = [c for c in cfg.counts() if STYLES[cell_style(c)] not in trained]
    if unseen:
        asked = (
            f"generate.per_style asks for {cell_name(unseen[0])}"
            if cfg.per_style is not None
            else f"generate.per_class ({STYLES[0]}) asks for {cell_digit(unseen[0])}"
        )
        raise GenerationError(
            f"{asked}, but the model {model_dir} was trained on {', '.join(trained)} only:"
            " ask for its styles, or train it on data.sources with that style"
        )
    return trained


def prepare_run(
    cfg: GenerateConfig,
    hardware: HardwareConfig,
    model_dir: str,
    classifier_dir: str,
    train_data: str,
    student_dir: str | None = None,
) -> RunSpec:
    """Check every input before any work; load the judges into this worker; fix the run key; create the
    staging folder with run.json. Raises a DigitsError (one line naming the file or field) on bad input.

    With the `distilled` sampler the digits come from `student_dir` (`digits distill-diffusion`): it must
    hold a student for the sampler's steps and guidance, distilled from the teacher `model_dir` (checksum).
    """
    device = resolve_device(hardware.device, "hardware.device")
    diffusion = read_checkpoint_config(model_dir, "diffusion")
    read_checkpoint_config(classifier_dir, "classifier")
    checksums = {
        "model": _weights(model_dir, "ema.safetensors"),
        "classifier": _weights(classifier_dir, "model.safetensors"),
    }
    trained = _check_styles(cfg, diffusion, model_dir)
    if cfg.sampler.guide == "style" and not diffusion["config"].get("unet", {}).get("num_styles"):
        raise GenerationError(
            f"generate.sampler.guide is style, but the model {model_dir} takes digits only (trained on"
            f" {', '.join(trained)}): it has no style to guide; use guide: all"
        )
    steps = student_steps(cfg.sampler)
    if steps is not None:
        if not student_dir:
            raise GenerationError(
                "generate.sampler.name is distilled: pass the student's folder (--student), which"
                " `digits distill-diffusion` writes"
            )
        check_student(student_dir, steps, cfg.sampler.guidance, checksums["model"], "generate.sampler")
        checksums["teacher"], checksums["model"] = (
            checksums["model"],
            _weights(student_dir, weights_name(steps)),
        )
        model_dir = student_dir
    timesteps = diffusion["config"].get("process", {}).get("timesteps", 1000)
    if cfg.sampler.steps > timesteps:
        raise GenerationError(
            f"generate.sampler.steps ({cfg.sampler.steps}) must be <= the model's {timesteps} timesteps"
        )
    if not Path(train_data).is_file():
        raise DataError(f"{train_data}: training digits not found (the gate's memorisation check needs them)")
    checksums["train"] = file_sha256(train_data)
    weights = Path(cfg.clip.pretrained or "")
    weights = weights / WEIGHTS_FILE if weights.is_dir() else weights
    checksums["clip"] = (
        file_sha256(weights) if weights.is_file() else f"{cfg.clip.model}:{cfg.clip.pretrained}"
    )
    check_writable(cfg.output_root, cfg.name)
    check_output(cfg.staging_dir, "generate.staging_dir", folder=True)
    # Unreadable weights, an unknown CLIP or broken training digits fail here, before any sampling; the
    # tasks (and the gate) of an in-process run reuse what this loads.
    workers.diffusion_model(model_dir, checksums["model"], device, hardware.compile, steps)
    workers.scorer(cfg.clip, checksums["clip"], classifier_dir, checksums["classifier"], device)
    workers.train_pixels(train_data, checksums["train"], device)
    precision = hardware.resolved_precision()
    key = run_key(cfg, device.type, precision, checksums, hardware.compile)
    spec = RunSpec(
        cfg,
        hardware,
        str(model_dir),
        str(classifier_dir),
        str(train_data),
        checksums,
        precision,
        key,
        trained,
    )
    spec.staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        spec.staging / "run.json",
        {"key": spec.key, "params": cfg.model_dump(mode="json"), "precision": precision, **checksums},
    )
    return spec


def tally(spec: RunSpec, blocks: list[BlockOutcome]) -> dict[int, ClassProgress]:
    """Per-class progress from the staged blocks so far (requested from the config)."""
    progress = {c: ClassProgress(requested=n) for c, n in spec.cfg.counts().items()}
    for o in blocks:
        p = progress[o.key.cell]
        p.blocks, p.sampled, p.accepted = p.blocks + 1, p.sampled + o.sampled, p.accepted + o.accepted
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
        "judges": {"classifier_sha256": spec.checksums["classifier"], "clip": spec.checksums["clip"]},
        "gate": {
            "memorization_rate": gate.memorization_rate,
            "duplicate_rate": gate.duplicate_rate,
            "copy_distance": quality.copy_distance,
            **gate.statistics,
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


def run_metrics(spec: RunSpec, tasks: list[TaskOutcome], seconds: float) -> dict[str, Any]:
    """The run's headline numbers (DVC metrics) and where the tasks' time went (shares of task time)."""
    blocks = [b for t in tasks for b in t.blocks]
    progress = tally(spec, blocks)
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
        "images_per_second": requested / max(seconds, 1e-9),
        "task_seconds": {part: round(s, 3) for part, s in spent.items()},
        "task_share": {part: round(s / total, 4) for part, s in spent.items()} if total else {},
    }


def class_rows(spec: RunSpec, blocks: list[BlockOutcome]) -> list[dict[str, Any]]:
    """One row per class: requested, accepted (capped at the request), sampled, blocks, acceptance rate."""
    return [
        {
            "class": c,
            "requested": p.requested,
            "accepted": min(p.accepted, p.requested),
            "sampled": p.sampled,
            "blocks": p.blocks,
            "acceptance_rate": round(p.acceptance_rate, 4),
        }
        for c, p in tally(spec, blocks).items()
    ]


def named_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`class_rows` as people read them (artifacts, the DVC plot): "7" for a handwritten-mnist digit,
    "printed/7" for a digit of another style."""
    return [{**row, "class": cell_name(row["class"])} for row in rows]
