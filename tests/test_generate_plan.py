"""The generate section's validation and the pure planning of a run: keys, seeds, rounds, the cap, the trim."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from diffusion.config import ConfigError, GenerateConfig, parse_params
from diffusion.data.schema import digits_table
from diffusion.data.staged import accepted_rows
from diffusion.generate.plan import (
    ClassProgress,
    GenerationError,
    TaskKey,
    WorkKey,
    block_seed,
    plan_round,
    run_key,
)


@pytest.mark.parametrize(
    ("generate", "named"),
    [
        ({"per_class": {12: 3}}, "generate: per_class: class 12 is outside 0-9"),
        ({"per_class": {1: -3}}, "class 1 has a negative count (-3)"),
        ({"per_class": -1}, "per_class must be >= 1"),
        ({"filter": {"min_classifier_prob": 1.5}}, "generate.filter.min_classifier_prob"),
        ({"filter": {"min_clip_score": 101}}, "generate.filter.min_clip_score"),
        (
            {"task_runner": {"kind": "threads", "address": "tcp://x:8786"}},
            "address is only used with kind: dask",
        ),
        ({"name": "Bad Name"}, "generate.name"),
        ({"seed_block": 0}, "generate.seed_block"),
        ({"staging_dir": "s3://bucket/stage"}, "generate.staging_dir: staging_dir must be a local folder"),
        ({"staging_dir": " "}, "generate.staging_dir: staging_dir must be a local folder"),
        ({"output_root": ""}, "generate.output_root: output_root must name a folder or a URL"),
        ({"task_size": 0}, "generate.task_size"),
        (
            {"seed_block": 50, "task_size": 120},
            "task_size (120) must hold whole seed blocks of seed_block = 50",
        ),
        ({"batch_size": 50}, "generate.batch_size: moved to generate.seed_block, generate.task_size"),
    ],
)
def test_bad_generate_params_are_one_line_naming_the_field(generate: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"generate": generate})
    assert named in str(err.value) and "\n" not in str(err.value)


def test_generate_sampler_keeps_its_own_defaults() -> None:
    """One knob, one meaning: diffusion.sampler is evaluate_diffusion's, and a generate.sampler mapping that
    leaves keys out keeps the shipped generation sampler's values for them (w = 1), not SamplerConfig's."""
    params = parse_params(
        {"diffusion": {"sampler": {"guidance": 1.25, "steps": 12}}, "generate": {"seed": 3}}
    )
    assert params.generate.sampler == GenerateConfig().sampler and params.generate.sampler.guidance == 1.0
    own = parse_params({"generate": {"sampler": {"steps": 10}}})
    assert own.generate.sampler.steps == 10 and own.generate.sampler.guidance == 1.0
    assert GenerateConfig(per_class={3: 5, 1: 0}).counts() == {3: 5}


def test_seeds_and_run_keys_are_stable_and_distinct() -> None:
    seeds = {block_seed(0, c, b) for c in range(10) for b in range(50)}
    assert len(seeds) == 500 and all(0 <= s < 2**63 for s in seeds)
    assert block_seed(0, 3, 7) == block_seed(0, 3, 7) != block_seed(1, 3, 7)
    cfg = GenerateConfig()
    sums = {"model": "a", "classifier": "b", "clip": "c"}
    key = run_key(cfg, "cpu", "fp32", sums)
    # counts, naming and the task size decide which blocks are made and how, never a block's bytes
    assert key == run_key(
        cfg.model_copy(update={"per_class": 7, "name": "other", "task_size": 500}), "cpu", "fp32", sums
    )
    assert key != run_key(cfg.model_copy(update={"seed": 1}), "cpu", "fp32", sums)
    assert key != run_key(cfg.model_copy(update={"seed_block": 25}), "cpu", "fp32", sums)
    assert key != run_key(cfg, "cpu", "fp32", {**sums, "model": "z"})
    assert key != run_key(cfg, "cuda", "fp32", sums) != run_key(cfg, "cuda", "bf16", sums)


def test_rounds_plan_whole_blocks_from_observed_acceptance_and_stop_at_the_cap() -> None:
    def task(*blocks: tuple[int, int]) -> TaskKey:
        return TaskKey(tuple(WorkKey(c, j) for c, j in blocks))

    progress = {0: ClassProgress(requested=100), 1: ClassProgress(requested=30)}
    first = plan_round(progress, seed_block=20, task_blocks=2, max_attempts=3)
    # the round's blocks in (class, block) order, cut into tasks of two blocks, classes mixed
    assert first == [task((0, 0), (0, 1)), task((0, 2), (0, 3)), task((0, 4), (1, 0)), task((1, 1))]
    progress[0] = ClassProgress(requested=100, blocks=5, sampled=100, accepted=50)  # half accepted
    progress[1] = ClassProgress(requested=30, blocks=2, sampled=40, accepted=30)  # done
    # a top-up asks for what the class lacks (50 digits at rate 0.5: 5 blocks), in tasks of whole blocks
    assert plan_round(progress, 20, 4, 3) == [task(*((0, j) for j in range(5, 9))), task((0, 9))]
    assert plan_round(progress, 20, 1, 3) == [task((0, j)) for j in range(5, 10)]
    progress[0] = ClassProgress(requested=100, blocks=15, sampled=300, accepted=2)
    with pytest.raises(
        GenerationError, match=r"class 0: 2 of 100 accepted after 300 samples \(acceptance rate 0\.7%\)"
    ):
        plan_round(progress, 20, 2, 3)
    assert plan_round({0: ClassProgress(requested=5, blocks=1, sampled=20, accepted=9)}, 20, 2, 3) == []
    # a top-up of a few blocks of many classes is one task
    short = {c: ClassProgress(requested=200, blocks=20, sampled=200, accepted=196) for c in range(10)}
    assert plan_round(short, 10, 20, 5) == [task(*((c, 20) for c in range(10)))]
    assert task((3, 4), (5, 1)).name == "c3-j00004-c5-j00001-2b"


def test_the_trim_keeps_the_first_accepted_rows_of_each_class_in_order() -> None:
    def shard(digit: int, batch: int, accepted: list[bool]) -> pa.Table:
        n = len(accepted)
        images = np.zeros((n, 28, 28), np.uint8)
        ids = [f"c{digit}-b{batch}-{i}" for i in range(n)]
        return digits_table(ids, images, np.full(n, digit), "synthetic", accepted=accepted)

    staged = [shard(0, 0, [True, False, True]), shard(0, 1, [True, True]), shard(2, 0, [False, True, True])]
    staged = pa.concat_tables(staged)
    rows = accepted_rows(staged, {0: 3, 2: 1})
    assert rows.column("id").to_pylist() == ["c0-b0-0", "c0-b0-2", "c0-b1-0", "c2-b0-1"]
    with pytest.raises(ValueError, match="class 2: 2 accepted rows, 3 requested"):
        accepted_rows(staged, {2: 3})
