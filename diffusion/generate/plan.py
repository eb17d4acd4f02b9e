"""How a generation run is cut into work: seed blocks, tasks, rounds, run keys and the attempt cap.

Three sizes, three meanings:
- a **seed block** (class c, index j) is `generate.seed_block` images of class c drawn from one generator
  seeded by `block_seed(seed, c, j)`; it alone decides the images, and it is the unit that is staged
  (`c<c>-j<j>.parquet`), reused after a crash and counted. A class is a cell of the request, a (digit,
  style) pair keyed 10 x style code + digit (`diffusion.styles.cell`): handwritten-mnist's are the digits;
- a **task** is up to `generate.task_size / seed_block` blocks that one Prefect task makes together (a
  round's blocks in (class, block) order, so a top-up of a few blocks of many classes is one task);
- the **network batch** (`hardware.network_batch`) is how many images one forward pass holds.
Task size, network batch, worker count and runner decide only how the work is spread, never a byte.

Rounds decide which blocks exist: after each round, a class still short gets as many new blocks as its
observed acceptance rate says it lacks, up to the attempt cap. The published rows are the first accepted
rows of each class in (block, index) order, so the same params and model give the same rows whatever the
runner or the crashes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from diffusion.config import GenerateConfig
from diffusion.data.schema import DIGITS_SCHEMA
from diffusion.errors import DigitsError
from diffusion.styles import cell_name


class GenerationError(DigitsError):
    """A generation run cannot finish: a class cannot reach its count, a checkpoint is unusable. One line."""


@dataclass(frozen=True, order=True)
class WorkKey:
    """One seed block: block `block` of class `cell` (10 x style code + digit)."""

    cell: int
    block: int

    @property
    def name(self) -> str:
        """The staged shard's stem, e.g. 'c3-j00012'."""
        return f"c{self.cell}-j{self.block:05d}"


@dataclass(frozen=True)
class TaskKey:
    """One task's work: seed blocks, in (class, block) order."""

    blocks: tuple[WorkKey, ...]

    @property
    def name(self) -> str:
        """e.g. 'c3-j00004-c5-j00001-4b' (first and last block, and how many)."""
        return f"{self.blocks[0].name}-{self.blocks[-1].name}-{len(self.blocks)}b"


def block_seed(seed: int, cell: int, block: int) -> int:
    """A 63-bit generator seed for block `block` of class `cell`: a hash, so nearby keys give unrelated streams."""
    digest = hashlib.sha256(f"digits-generate/{seed}/{cell}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def run_key(
    cfg: GenerateConfig,
    device_type: str,
    precision: str,
    checksums: dict[str, str],
    compile_mode: str | None = None,
) -> str:
    """A hash of everything that decides a staged block's bytes: sampling, seed block, scoring, filter, seed,
    the device type, precision and compile mode the networks run in (a compiled network may round
    differently), the checksums of the model and judges, and the schema the blocks are staged in.

    Counts, naming, sharding, task size, network batch and the runner are left out: they only decide which
    blocks are made and how, so a run asking for more digits reuses the blocks of one asking for fewer.
    """
    what = {
        "sampler": cfg.sampler.model_dump(mode="json"),
        "seed_block": cfg.seed_block,
        "best_of_n": cfg.best_of_n,
        "filter": cfg.filter.model_dump(mode="json"),
        "clip": cfg.clip.model_dump(mode="json"),
        "seed": cfg.seed,
        "device": device_type,
        "precision": precision,
        "compile": compile_mode,
        "checksums": checksums,
        "schema": DIGITS_SCHEMA.to_string(),  # staged blocks of another schema are not reused
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


@dataclass
class ClassProgress:
    """What one class has so far: blocks made, images sampled and accepted, and what it asked for."""

    requested: int
    blocks: int = 0
    sampled: int = 0
    accepted: int = 0

    @property
    def short(self) -> int:
        return max(self.requested - self.accepted, 0)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.sampled if self.sampled else 0.0


MIN_RATE = 0.02  # a class accepting fewer than 2% of its images is planned as if it accepted 2%


def max_blocks(requested: int, seed_block: int, max_attempts: float) -> int:
    """The attempt cap in whole blocks: at most max_attempts x requested images, at least one block."""
    return max(1, math.ceil(max_attempts * requested / seed_block))


def plan_round(
    progress: dict[int, ClassProgress], seed_block: int, task_blocks: int, max_attempts: float
) -> list[TaskKey]:
    """The next round's tasks for every class still short (none when all are done).

    A class asks for the blocks it lacks: the first round assumes every image is accepted, later ones
    divide the shortfall by the class's observed acceptance rate. The round's blocks, in (class, block)
    order, are cut into tasks of at most `task_blocks`. Raises GenerationError naming a class that is short
    with no blocks left.
    """
    wanted: list[WorkKey] = []
    for cell, p in sorted(progress.items()):
        if not p.short:
            continue
        cap = max_blocks(p.requested, seed_block, max_attempts)
        if p.blocks >= cap:
            raise GenerationError(
                f"class {cell_name(cell)}: {p.accepted} of {p.requested} accepted after {p.sampled} samples "
                f"(acceptance rate {p.acceptance_rate:.1%}); the cap of generate.max_attempts = {max_attempts:g} "
                f"x {p.requested} is spent: relax generate.filter or raise the cap"
            )
        rate = max(p.acceptance_rate, MIN_RATE) if p.sampled else 1.0
        more = range(p.blocks, min(p.blocks + math.ceil(p.short / (rate * seed_block)), cap))
        wanted += [WorkKey(cell, j) for j in more]
    return [TaskKey(tuple(wanted[i : i + task_blocks])) for i in range(0, len(wanted), task_blocks)]
