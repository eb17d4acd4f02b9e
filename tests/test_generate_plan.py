"""The generate section's validation and the pure planning of a run: keys, seeds, rounds, the cap, the trim."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from diffusion.config import ConfigError, GenerateConfig, parse_params
from diffusion.data.schema import digits_table
from diffusion.data.shards import accepted_rows
from diffusion.generate.plan import ClassProgress, GenerationError, WorkKey, batch_seed, plan_round, run_key


@pytest.mark.parametrize(
    ("generate", "named"),
    [
        ({"per_class": {12: 3}}, "generate: per_class: class 12 is outside 0-9"),
        ({"per_class": {1: -3}}, "class 1 has a negative count (-3)"),
        ({"per_class": -1}, "per_class must be >= 1"),
        ({"filter": {"min_classifier_prob": 1.5}}, "generate.filter.min_classifier_prob"),
        ({"filter": {"min_clip_score": 101}}, "generate.filter.min_clip_score"),
        ({"schedule": {"cron": "every day"}}, "cron must be a five-field cron expression"),
        ({"schedule": {"timezone": "Mars/Olympus"}}, "timezone must be an IANA name"),
        (
            {"task_runner": {"kind": "threads", "address": "tcp://x:8786"}},
            "address is only used with kind: dask",
        ),
        ({"name": "Bad Name"}, "generate.name"),
        ({"batch_size": 0}, "generate.batch_size"),
    ],
)
def test_bad_generate_params_are_one_line_naming_the_field(generate: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"generate": generate})
    assert named in str(err.value) and "\n" not in str(err.value)


def test_generate_sampler_defaults_to_the_diffusion_sampler() -> None:
    params = parse_params(
        {"diffusion": {"sampler": {"guidance": 1.25, "steps": 12}}, "generate": {"seed": 3}}
    )
    assert params.generate.sampler == params.diffusion.sampler
    own = parse_params(
        {"diffusion": {"sampler": {"guidance": 1.25}}, "generate": {"sampler": {"guidance": 2.0}}}
    )
    assert own.generate.sampler.guidance == 2.0
    assert GenerateConfig(per_class={3: 5, 1: 0}).counts() == {3: 5}


def test_seeds_and_run_keys_are_stable_and_distinct() -> None:
    seeds = {batch_seed(0, c, b) for c in range(10) for b in range(50)}
    assert len(seeds) == 500 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(0, 3, 7) == batch_seed(0, 3, 7) != batch_seed(1, 3, 7)
    cfg = GenerateConfig()
    sums = {"model": "a", "classifier": "b", "clip": "c"}
    assert run_key(cfg, sums) == run_key(cfg.model_copy(update={"per_class": 7, "name": "other"}), sums)
    assert run_key(cfg, sums) != run_key(cfg.model_copy(update={"seed": 1}), sums)
    assert run_key(cfg, sums) != run_key(cfg, {**sums, "model": "z"})


def test_rounds_plan_from_observed_acceptance_and_stop_at_the_cap() -> None:
    progress = {0: ClassProgress(requested=100), 1: ClassProgress(requested=30)}
    first = plan_round(progress, batch_size=20, max_attempts=3)
    assert first == [WorkKey(0, b) for b in range(5)] + [WorkKey(1, b) for b in range(2)]
    progress[0] = ClassProgress(requested=100, batches=5, sampled=100, accepted=50)  # half accepted
    progress[1] = ClassProgress(requested=30, batches=2, sampled=40, accepted=30)  # done
    assert plan_round(progress, 20, 3) == [WorkKey(0, b) for b in range(5, 10)]
    progress[0] = ClassProgress(requested=100, batches=15, sampled=300, accepted=2)
    with pytest.raises(
        GenerationError, match=r"class 0: 2 of 100 accepted after 300 samples \(acceptance rate 0\.7%\)"
    ):
        plan_round(progress, 20, 3)
    assert plan_round({0: ClassProgress(requested=5, batches=1, sampled=20, accepted=9)}, 20, 3) == []


def test_the_trim_keeps_the_first_accepted_rows_of_each_class_in_order() -> None:
    def shard(digit: int, batch: int, accepted: list[bool]) -> pa.Table:
        n = len(accepted)
        images = np.zeros((n, 28, 28), np.uint8)
        ids = [f"c{digit}-b{batch}-{i}" for i in range(n)]
        return digits_table(ids, images, np.full(n, digit), "synthetic", accepted=accepted)

    staged = [shard(0, 0, [True, False, True]), shard(0, 1, [True, True]), shard(2, 0, [False, True, True])]
    rows = accepted_rows(staged, {0: 3, 2: 1})
    assert rows.column("id").to_pylist() == ["c0-b0-0", "c0-b0-2", "c0-b1-0", "c2-b0-1"]
    with pytest.raises(ValueError, match="class 2: 2 accepted rows, 3 requested"):
        accepted_rows(staged, {2: 3})
