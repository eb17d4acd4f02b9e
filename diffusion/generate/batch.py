"""One task's work: sample a batch of one digit, score it with both judges, filter it, stage it as a shard.

    outcome = make_batch(job)   # job: paths, configs and the work key; outcome: the shard path and counts

A batch whose shard is already staged (an earlier, interrupted run with the same run key) is read back,
not made again. Everything a job needs travels as paths and config values, so it runs the same in a
Prefect thread, a Dask worker process or a plain loop.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch

from diffusion.config import ClipChoice, FilterConfig, SamplerConfig
from diffusion.data.datasets import to_uint8
from diffusion.data.schema import digits_table
from diffusion.data.shards import read_shard, write_shard
from diffusion.generate.plan import WorkKey, batch_seed
from diffusion.judges.classifier import load_classifier
from diffusion.judges.clip import load_clip
from diffusion.judges.scoring import Scorer, Scores, best_of_n, keep_mask
from diffusion.model.samplers import sample
from diffusion.model.train import load_diffusion


@dataclass(frozen=True)
class BatchJob:
    """Everything one (class, batch) task needs; shards go to `<staging>/<key.name>.parquet`."""

    key: WorkKey
    run_id: str
    staging: str
    model_dir: str
    classifier_dir: str
    clip: ClipChoice
    sampler: SamplerConfig
    filter: FilterConfig
    batch_size: int
    best_of_n: int
    seed: int
    model_sha256: str
    device: str

    @property
    def path(self) -> Path:
        return Path(self.staging) / f"{self.key.name}.parquet"


@dataclass(frozen=True)
class BatchOutcome:
    """A staged batch: its key and shard, images sampled and accepted, and where the time went (seconds:
    load, sample, score, encode, write; all zero when the shard was reused)."""

    key: WorkKey
    path: str
    sampled: int
    accepted: int
    reused: bool
    seconds: dict[str, float] = field(default_factory=dict)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _outcome(job: BatchJob, table: pa.Table, reused: bool, seconds: dict[str, float]) -> BatchOutcome:
    accepted = pc.sum(table.column("accepted")).as_py() or 0
    return BatchOutcome(job.key, str(job.path), table.num_rows, accepted, reused, seconds)


def make_batch(job: BatchJob) -> BatchOutcome:
    """Stage batch `job.key` (reusing its shard when one is already staged) and return what it holds."""
    staged = read_shard(job.path)
    if staged is not None:
        return _outcome(job, staged, reused=True, seconds={})

    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name], clock = now - clock, now

    device = torch.device(job.device)
    model, process = load_diffusion(job.model_dir, device)
    scorer = Scorer(
        load_clip(job.clip.model, job.clip.pretrained, device), load_classifier(job.classifier_dir, device)
    )
    lap("load")

    seed = batch_seed(job.seed, job.key.digit, job.key.batch)
    n = job.batch_size * job.best_of_n
    labels = torch.full((n,), job.key.digit, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    images = sample(model, process, labels, job.sampler, generator, device)  # (n, 1, 28, 28)
    lap("sample")

    labels = labels[: job.batch_size].to(scorer.device)
    if job.best_of_n > 1:
        best = best_of_n(scorer, images.view(job.batch_size, job.best_of_n, *images.shape[1:]), labels)
        images, scores = best.images, best.scores
    else:
        scores = scorer(images, labels)
    f = job.filter
    keep = keep_mask(
        scores, labels, f.min_clip_score, f.min_clip_margin, f.min_classifier_prob, f.require_pred_match
    )
    lap("score")

    table = _table(job, to_uint8(images), scores, keep, seed)
    lap("encode")
    write_shard(table, job.path)
    lap("write")
    return _outcome(job, table, reused=False, seconds=seconds)


def _table(job: BatchJob, images, scores: Scores, keep: torch.Tensor, seed: int) -> pa.Table:
    """The staged rows: ids from the run and work key, provenance, scores and the filter's verdict."""
    n = images.shape[0]
    cpu = {
        name: getattr(scores, name).cpu().numpy() for name in ("clip_score", "clip_margin", "classifier_prob")
    }
    return digits_table(
        [f"{job.run_id}-{job.key.name}-{i:04d}" for i in range(n)],
        images,
        torch.full((n,), job.key.digit).numpy(),
        "synthetic",
        sampler=job.sampler.name,
        steps=job.sampler.steps,
        guidance=job.sampler.guidance,
        seed=seed,
        model_sha256=job.model_sha256,
        run_id=job.run_id,
        classifier_pred=scores.classifier_pred.cpu().numpy(),
        accepted=keep.cpu().numpy(),
        **cpu,
    )
