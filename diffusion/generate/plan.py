"""How a generation run is cut into work: run keys, per-batch seeds, rounds, and the deterministic trim.

A run is a set of batches. Batch (class c, index b) always draws `batch_size` images of digit c from a
generator seeded by `batch_seed(seed, c, b)`, so its content depends only on the run's sampling params,
never on which round, worker or attempt made it. Rounds only decide which batches exist: after each
round, classes still short get as many new batches as their observed acceptance rate says they need,
up to the attempt cap. The published rows are the first accepted rows of each class in (batch, index)
order, so the same params and model give the same rows whatever the runner or the crashes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from diffusion.config import GenerateConfig
from diffusion.errors import DigitsError


class GenerationError(DigitsError):
    """A generation run cannot finish: a class cannot reach its count, a checkpoint is unusable. One line."""


@dataclass(frozen=True, order=True)
class WorkKey:
    """One task's work: batch `batch` of digit `digit`."""

    digit: int
    batch: int

    @property
    def name(self) -> str:
        """The staged shard's stem, e.g. 'c3-b00012'."""
        return f"c{self.digit}-b{self.batch:05d}"


def batch_seed(seed: int, digit: int, batch: int) -> int:
    """A 63-bit generator seed for batch `batch` of `digit`: a hash, so nearby keys give unrelated streams."""
    digest = hashlib.sha256(f"digits-generate/{seed}/{digit}/{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def run_key(cfg: GenerateConfig, checksums: dict[str, str]) -> str:
    """A hash of everything that decides a staged batch's bytes: sampling, scoring, filter, seed, device and
    the checksums of the model and judges. Counts, naming, sharding and the runner are left out: they only
    decide which batches are used, so a run asking for more digits reuses the batches of one asking for fewer.
    """
    what = {
        "sampler": cfg.sampler.model_dump(mode="json"),
        "batch_size": cfg.batch_size,
        "best_of_n": cfg.best_of_n,
        "filter": cfg.filter.model_dump(mode="json"),
        "clip": cfg.clip.model_dump(mode="json"),
        "seed": cfg.seed,
        "device": cfg.device,
        "checksums": checksums,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


@dataclass
class ClassProgress:
    """What one class has so far: batches made, images sampled and accepted, and what it asked for."""

    requested: int
    batches: int = 0
    sampled: int = 0
    accepted: int = 0

    @property
    def short(self) -> int:
        return max(self.requested - self.accepted, 0)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.sampled if self.sampled else 0.0


MIN_RATE = 0.02  # a class accepting fewer than 2% of its images is planned as if it accepted 2%


def max_batches(requested: int, batch_size: int, max_attempts: float) -> int:
    """The attempt cap in whole batches: at most max_attempts x requested images, at least one batch."""
    return max(1, math.ceil(max_attempts * requested / batch_size))


def plan_round(progress: dict[int, ClassProgress], batch_size: int, max_attempts: float) -> list[WorkKey]:
    """The next round's batches for every class still short (none when all are done).

    The first round assumes every image is accepted; later ones divide the shortfall by the class's
    observed acceptance rate. Raises GenerationError naming a class that is short with no batches left.
    """
    keys: list[WorkKey] = []
    for digit, p in sorted(progress.items()):
        if not p.short:
            continue
        cap = max_batches(p.requested, batch_size, max_attempts)
        if p.batches >= cap:
            raise GenerationError(
                f"class {digit}: {p.accepted} of {p.requested} accepted after {p.sampled} samples "
                f"(acceptance rate {p.acceptance_rate:.1%}); the cap of generate.max_attempts = {max_attempts:g} "
                f"x {p.requested} is spent: relax generate.filter or raise the cap"
            )
        rate = max(p.acceptance_rate, MIN_RATE) if p.sampled else 1.0
        wanted = math.ceil(p.short / (rate * batch_size))
        keys += [WorkKey(digit, b) for b in range(p.batches, min(p.batches + wanted, cap))]
    return keys
