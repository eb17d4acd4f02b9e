"""One task's work: sample its seed blocks, score them with both judges, filter, stage a shard per block.

    outcome = make_task(job)   # job: the run's inputs and one TaskKey; outcome: one BlockOutcome per block

A block whose shard is already staged (an earlier, interrupted run with the same run key) is read back, not
made again. The blocks still to make are sampled together: each block's starting points x_T come from its
own CPU generator (`block_seed`), so the same images on any device and whatever else shares the task;
the network sees `network_batch` images per forward pass. The models come from the worker's cache
(`diffusion.generate.workers`), loaded once per process. Everything a job needs travels as paths and config
values, so it runs the same in a Prefect thread, a Dask worker process or a plain loop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch

from diffusion.config import ClipChoice, FilterConfig, SamplerConfig
from diffusion.data.datasets import to_uint8
from diffusion.data.schema import digits_table
from diffusion.data.staged import read_shard, write_shard
from diffusion.generate import workers
from diffusion.generate.plan import TaskKey, WorkKey, block_seed
from diffusion.judges.scoring import Scores, best_of_n, keep_mask
from diffusion.model.samplers import sample_blocks
from diffusion.model.student import student_steps
from diffusion.precision import Precision
from diffusion.styles import cell_digit, cell_style


@dataclass(frozen=True)
class TaskJob:
    """Everything one task needs; block shards go to `<staging>/<key.name>.parquet`."""

    task: TaskKey
    run_id: str
    staging: str
    model_dir: str
    classifier_dir: str
    clip: ClipChoice
    sampler: SamplerConfig
    filter: FilterConfig
    seed_block: int
    best_of_n: int
    seed: int
    checksums: dict[str, str]
    device: str
    precision: Precision
    network_batch: int
    compile: str | None = None

    def path(self, key: WorkKey) -> Path:
        return Path(self.staging) / f"{key.name}.parquet"


@dataclass(frozen=True)
class BlockOutcome:
    """A staged seed block: its key and shard, images sampled and accepted, whether it was reused."""

    key: WorkKey
    path: str
    sampled: int
    accepted: int
    reused: bool


@dataclass(frozen=True)
class TaskOutcome:
    """A finished task: its blocks, where its time went (seconds: load, sample, score, encode, write) and
    which process made it (`worker`, with `loaded`: the model kinds this task had to load there)."""

    task: TaskKey
    blocks: tuple[BlockOutcome, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    loaded: tuple[str, ...] = ()


def _block(job: TaskJob, key: WorkKey, table: pa.Table, reused: bool) -> BlockOutcome:
    accepted = pc.sum(table.column("accepted")).as_py() or 0
    return BlockOutcome(key, str(job.path(key)), table.num_rows, accepted, reused)


def make_task(job: TaskJob) -> TaskOutcome:
    """Stage every block of `job.task` (reusing the blocks already staged) and return what they hold."""
    done = {key: read_shard(job.path(key)) for key in job.task.blocks}
    todo = [key for key, table in done.items() if table is None]
    outcomes = {key: _block(job, key, table, reused=True) for key, table in done.items() if table is not None}
    seconds: dict[str, float] = {}
    with workers.counting_loads() as loaded:
        if todo:
            for key, table in _make_blocks(job, todo, seconds).items():
                outcomes[key] = _block(job, key, table, reused=False)
    return TaskOutcome(
        job.task,
        tuple(outcomes[key] for key in job.task.blocks),
        seconds,
        worker=f"{os.uname().nodename}:{os.getpid()}",
        loaded=tuple(loaded),
    )


def _make_blocks(job: TaskJob, keys: list[WorkKey], seconds: dict[str, float]) -> dict[WorkKey, pa.Table]:
    """Sample, score, filter, encode and stage the blocks `keys` together; their tables."""
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name], clock = seconds.get(name, 0.0) + now - clock, now

    device = torch.device(job.device)
    model, process = workers.diffusion_model(
        job.model_dir, job.checksums["model"], device, job.compile, student_steps(job.sampler)
    )
    scorer = workers.scorer(
        job.clip, job.checksums["clip"], job.classifier_dir, job.checksums["classifier"], device
    )
    lap("load")

    per_block = job.seed_block * job.best_of_n
    seeds = [block_seed(job.seed, key.cell, key.block) for key in keys]
    generators = [torch.Generator().manual_seed(s) for s in seeds]  # on the CPU: the same x_T on any device
    digits = torch.tensor([cell_digit(key.cell) for key in keys], dtype=torch.int64)
    labels = digits.repeat_interleave(per_block)
    if model.null_style is not None:  # a two-condition model: rows of (digit, style)
        styles = torch.tensor([cell_style(key.cell) for key in keys], dtype=torch.int64)
        labels = torch.stack([labels, styles.repeat_interleave(per_block)], dim=1)
    images = sample_blocks(
        model, process, labels, job.sampler, generators, device, job.precision, job.network_batch
    )  # (blocks * per_block, 1, 28, 28)
    lap("sample")

    wanted = digits.repeat_interleave(job.seed_block).to(device)
    if job.best_of_n > 1:
        best = best_of_n(scorer, images.view(len(wanted), job.best_of_n, *images.shape[1:]), wanted)
        images, scores = best.images, best.scores
    else:
        scores = scorer(images, wanted)
    f = job.filter
    keep = keep_mask(
        scores, wanted, f.min_clip_score, f.min_clip_margin, f.min_classifier_prob, f.require_pred_match
    )
    pixels, keep, scores = to_uint8(images), keep.cpu(), scores.to("cpu")
    lap("score")

    tables = {}
    for i, (key, seed) in enumerate(zip(keys, seeds, strict=True)):
        rows = slice(i * job.seed_block, (i + 1) * job.seed_block)
        tables[key] = _table(job, key, pixels[rows], scores.select(rows), keep[rows], seed)
    lap("encode")
    for key, table in tables.items():
        write_shard(table, job.path(key))
    lap("write")
    return tables


def _table(job: TaskJob, key: WorkKey, pixels, scores: Scores, keep: torch.Tensor, seed: int) -> pa.Table:
    """A block's staged rows: ids from the run and block, provenance, scores and the filter's verdict."""
    n = pixels.shape[0]
    return digits_table(
        [f"{job.run_id}-{key.name}-{i:04d}" for i in range(n)],
        pixels,
        torch.full((n,), cell_digit(key.cell)).numpy(),
        "synthetic",
        style=cell_style(key.cell),
        sampler=job.sampler.name,
        steps=job.sampler.steps,
        guidance=job.sampler.guidance,
        seed=seed,
        model_sha256=job.checksums["model"],
        run_id=job.run_id,
        clip_score=scores.clip_score.numpy(),
        clip_margin=scores.clip_margin.numpy(),
        classifier_prob=scores.classifier_prob.numpy(),
        classifier_pred=scores.classifier_pred.numpy(),
        accepted=keep.numpy(),
    )
