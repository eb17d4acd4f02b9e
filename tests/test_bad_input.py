"""Inputs that crash or mislead: every reader of outside files and every param a library reads later fails
with one line naming the file or key and what to do (a DigitsError; the CLI exits 2). Real files, offline."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from diffusion.checkpoint import CheckpointError, load_weights, read_checkpoint_config, save_checkpoint
from diffusion.cli import main
from diffusion.config import ConfigError, Params, parse_params
from diffusion.data.datasets import load_arrays, published_files
from diffusion.data.schema import digits_table
from diffusion.data.sources import read_idx
from diffusion.errors import DataError
from tests.conftest import REPO


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def _corrupt_deflate(data: bytes) -> bytes:
    """gzip of `data` whose first deflate block has the reserved block type 11 (zlib: invalid block type)."""
    gz = bytearray(gzip.compress(data))
    gz[10] |= 0b110  # the 10-byte gzip header, then BFINAL (bit 0) and BTYPE (bits 1-2)
    return bytes(gz)


def _run(tmp_path: Path, params: dict, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `digits <argv> --params <params>`; assert exit status 2 and one line; return that line."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    code = main([*argv, "--params", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _prepare(tmp_path: Path) -> list[str]:
    outputs = {"out": "prepared", "metrics": "m.json", "grid": "g.png", "classes": "c.csv"}
    return ["prepare", *(f"--{flag}={tmp_path / name}" for flag, name in outputs.items())]


# --------------------------------------------------------------------------- IDX and torchvision
@pytest.mark.parametrize(
    ("name", "make", "why"),
    [
        ("corrupt deflate", _corrupt_deflate, "invalid block type"),
        ("truncated gzip", lambda d: gzip.compress(d)[:60], "end-of-stream marker"),
        ("bad gzip header", lambda d: b"\x1f\x8b\x09" + gzip.compress(d)[3:], "compression method"),
    ],
)
def test_a_broken_gzip_idx_file_is_one_line(tmp_path: Path, name: str, make, why: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(make(_idx_bytes(_digits(20)[0])))
    with pytest.raises(DataError, match=why) as info:
        read_idx(path)
    assert str(info.value).startswith(f"{path}: cannot read IDX file")
    assert str(info.value).endswith("replace it with an intact copy")


def test_the_console_script_exits_with_the_status_and_line_of_main(tmp_path: Path) -> None:
    """`digits` is `diffusion.cli.run`: `main`'s status and one-line error survive its fast exit."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"generate": {"per_class": 0}}))
    script = Path(sys.executable).with_name("digits")  # what pyproject's [project.scripts] installed
    argv = [str(script), *_prepare(tmp_path), "--params", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "per_class must be >= 1" in proc.stderr
    assert not (tmp_path / "prepared").exists()


def test_prepare_on_a_corrupt_gzip_idx_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, labels = _digits(30)
    src = tmp_path / "idx"
    src.mkdir()
    (src / "train-images-idx3-ubyte.gz").write_bytes(_corrupt_deflate(_idx_bytes(images)))
    (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    params = {
        "data": {"sources": [{"kind": "idx", "idx_dir": str(src)}], "cache_dir": str(tmp_path / "cache")}
    }
    err = _run(tmp_path, params, _prepare(tmp_path), capsys)
    assert f"{src / 'train-images-idx3-ubyte.gz'}: cannot read IDX file" in err
    assert "invalid block type" in err and "intact copy" in err
    assert not (tmp_path / "prepared").exists()


def test_torchvision_files_left_empty_by_a_download_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """torchvision finds the extracted files, so it downloads nothing, then fails to decode them."""
    pytest.importorskip("torchvision")
    cache = tmp_path / "cache"
    raw = cache / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            (raw / f"{prefix}-{kind}").write_bytes(b"")
    before = sorted(p.name for p in raw.iterdir())
    err = _run(
        tmp_path,
        {"data": {"sources": [{"kind": "torchvision"}], "cache_dir": str(cache)}},
        _prepare(tmp_path),
        capsys,
    )
    assert f"{raw / 'train-images-idx3-ubyte'}: the IDX file is empty" in err
    assert f"delete the folder {raw} and run again to download MNIST afresh" in err
    assert sorted(p.name for p in raw.iterdir()) == before  # no download was attempted


# --------------------------------------------------------------------------- Parquet inputs
def _table(n: int = 5, **override: pa.Array) -> pa.Table:
    images, labels = _digits(n)
    table = digits_table([f"x-{i}" for i in range(n)], images, labels, "test")
    for name, column in override.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def test_a_stage_given_parquet_with_broken_images_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "train.parquet"
    not_png = pa.array([{"bytes": b"not a png", "path": None}] * 5, type=_table().schema.field("image").type)
    pq.write_table(_table(image=not_png), bad)
    argv = ["train-classifier", f"--train={bad}", "--val=v.parquet", "--test=t.parquet"]
    argv += [f"--out={tmp_path / 'm'}", "--metrics=m.json", "--confusion=c.csv"]
    err = _run(tmp_path, {}, argv, capsys)
    assert f"error: {bad}: an image does not decode as a PNG digit" in err and "intact copy" in err


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("label", pa.array([1, 2, None, 3, 4], pa.int64()), "null images or labels"),
        ("label", pa.array([1, 2, 12, 3, 4], pa.int64()), r"labels must lie in 0-9, found 1\.\.12"),
        ("label", pa.array(["1"] * 5), r"expected image \(struct of PNG bytes\) and label \(integer\)"),
    ],
)
def test_parquet_that_would_mislead_is_refused(
    tmp_path: Path, column: str, values: pa.Array, message: str
) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(_table(**{column: values}), path)
    with pytest.raises(DataError, match=message) as info:
        load_arrays(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_truncated_parquet_and_unknown_urls_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.parquet"
    pq.write_table(_table(), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.parquet: not a digits Parquet file .*intact copy"):
        load_arrays(path)
    with pytest.raises(
        DataError, match=r"nope://bucket/a\.parquet: cannot open \(Protocol not known: nope\)"
    ):
        load_arrays("nope://bucket/a.parquet")


def test_a_published_version_with_a_corrupt_manifest_is_one_line(tmp_path: Path) -> None:
    version = tmp_path / "synthetic-digits" / "20240101-abc"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text('{"files": [')
    with pytest.raises(
        DataError, match=r"20240101-abc/manifest\.json: not a version manifest .*publish the version again"
    ):
        published_files(version)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    save_checkpoint(tmp_path / "ckpt", "judge", {"hidden": 8}, {"model": {"w": torch.randn(64, 64)}})
    return tmp_path / "ckpt"


@pytest.mark.parametrize("cut", [0, 7, 100, -1])
def test_a_truncated_safetensors_file_is_one_line(checkpoint: Path, cut: int) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut])
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as info:
        load_weights(weights)
    assert str(info.value).startswith(f"{weights}: ") and "\n" not in str(info.value)
    assert str(info.value).endswith("restore the folder (dvc checkout) or rerun the stage that writes it")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00binary", "cannot read the checkpoint config"),
        (b'{"kind": "judge", "con', "not valid JSON"),
        (json.dumps({"kind": "judge", "config": {}, "meta": [1]}).encode(), "'meta' is not a mapping"),
    ],
)
def test_a_corrupt_checkpoint_config_is_one_line(checkpoint: Path, content: bytes, message: str) -> None:
    (checkpoint / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint_config(checkpoint, "judge")
    assert str(info.value).startswith(f"{checkpoint / 'config.json'}: ") and "dvc checkout" in str(info.value)


# --------------------------------------------------------------------------- params a library reads later
@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        (
            {"serve": {"timezone": "posixrules"}},
            "serve.timezone",
            "IANA name such as Europe/Berlin",
        ),
        ({"serve": {"timezone": ""}}, "serve.timezone", "zoneinfo.available_timezones()"),
        ({"serve": {"cron": "61 3 * * *"}}, "serve.cron", 'Invalid cron string: "61 3 * * *"'),
        ({"serve": {"cron": "H 3 * * *"}}, "serve.cron", "five-field cron expression"),
        ({"serve": {"cron": "0 0 30 2 *"}}, "serve.cron", "cron never fires"),
        ({"serve": {"overlap": "wait"}}, "serve.overlap", "'skip', 'queue' or 'run'"),
        (
            {"generate": {"output_root": "nope://bucket/datasets"}},
            "generate.output_root",
            "fsspec knows no protocol 'nope://'",
        ),
        (
            {"generate": {"output_root": "simplecache::nope://bucket"}},
            "generate.output_root",
            "fsspec knows no protocol 'nope://'",
        ),
        (
            {"generate": {"schedule": {"cron": "0 3 * * *"}}},
            "generate.schedule",
            "moved to serve (cron, timezone, overlap",
        ),
    ],
)
def test_generation_params_follow_the_rules_of_the_library_that_reads_them(
    raw: dict, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params(raw, where="params.yaml")
    text = str(info.value)
    assert text.startswith(f"params.yaml: {key}: ") and message in text and "\n" not in text


def test_a_flow_run_of_a_deployment_registered_before_the_serve_section_still_validates() -> None:
    """A Retry of an older scheduled run hands the flow a cfg with `schedule`: no part of the run now."""
    from diffusion.config import GenerateConfig

    old = {**GenerateConfig().model_dump(mode="json"), "schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}
    assert GenerateConfig.model_validate(old) == GenerateConfig()


def test_prefect_accepts_what_the_params_check_accepts() -> None:
    from prefect.schedules import Cron  # what flows/deploy.py builds

    for cron, tz in [
        ("0 0 29 2 *", "Europe/Berlin"),
        ("@daily", "UTC"),
        ("30 2 * * 1-5", "America/New_York"),
    ]:
        schedule = parse_params({"serve": {"cron": cron, "timezone": tz}}).serve
        assert Cron(schedule.cron, timezone=schedule.timezone).cron == cron


def test_an_output_root_whose_package_is_missing_is_one_line() -> None:
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    with pytest.raises(ConfigError, match=r"generate\.output_root: protocol 's3://' needs .*s3fs"):
        parse_params({"generate": {"output_root": "s3://bucket/datasets"}})
    assert parse_params({"generate": {"output_root": "memory://datasets"}}).generate.output_root


def test_serve_with_a_cron_prefect_rejects_exits_2_before_prefect(tmp_path: Path, capsys) -> None:
    err = _run(tmp_path, {"serve": {"cron": "61 3 * * *"}}, ["serve"], capsys)
    assert "serve.cron" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--real=r.parquet", "--real-fraction=abc"],
            "error: --real-fraction: expected a number in [0, 1), got 'abc'",
        ),
        (["--real-fraction=0.3"], "error: --real-fraction: give --real too"),
        (["--real=r.parquet", "--real-fraction=1.5"], "error: --real-fraction: expected a number in [0, 1)"),
        (["--real=r.parquet", "--real-fraction=nan"], "error: --real-fraction: expected a number in [0, 1)"),
    ],
)
def test_train_on_takes_a_real_fraction_as_a_number_with_real_digits(
    tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    err = _run(tmp_path, {}, ["train-on", f"--data={tmp_path / 'none'}", *flags], capsys)
    assert err.startswith(message)


def test_train_clip_checks_the_context_length_that_a_diffusion_stage_does_not_read(
    tmp_path: Path, capsys
) -> None:
    bad = {"clip": {"context_length": 8}, "serve": {"cron": "61 3 * * *"}}
    err = _run(
        tmp_path, bad, ["train-clip", "--train=t", "--val=v", "--test=t", "--out=o", "--metrics=m"], capsys
    )
    assert err.startswith("error: ") and "clip.context_length" in err
    # a stage that reads neither key checks their types and ranges only, not by open_clip's or Prefect's rules
    assert parse_params(bad, libraries=()).clip.context_length == 8
    with pytest.raises(
        ConfigError, match=r"clip\.context_length: Input should be greater than or equal to 8"
    ):
        parse_params({"clip": {"context_length": 7}}, libraries=())
    with pytest.raises(ValueError, match="not among"):
        parse_params({}, libraries=["torch"])


def test_a_stage_without_clip_or_a_schedule_imports_neither_to_check_params() -> None:
    """The params check of `digits train-diffusion` (and every stage not in LIBRARY_RULES) imports no
    open_clip, Prefect or fsspec; `digits train-clip`'s imports open_clip, `digits serve`'s Prefect."""
    probe = (
        "import sys; from diffusion.cli import LIBRARY_RULES; from diffusion.config import load_params;"
        "load_params('params.yaml', LIBRARY_RULES.get(sys.argv[1], frozenset()));"
        "print(sorted(m for m in ('open_clip', 'prefect', 'fsspec') if m in sys.modules))"
    )
    seen = {
        stage: subprocess.run(
            [sys.executable, "-c", probe, stage], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.strip()
        for stage in ("train-diffusion", "train-clip", "serve")
    }
    assert seen == {
        "train-diffusion": "[]",
        "train-clip": "['open_clip']",
        "serve": "['fsspec', 'prefect']",
    }


def test_clip_context_length_must_fit_every_prompt_and_caption() -> None:
    import open_clip

    from diffusion.judges.prompts import prompts, tokenized_texts
    from diffusion.library_rules import clip_tokens_needed

    needed, _ = clip_tokens_needed()
    tokenizer = open_clip.get_tokenizer("RN50")  # a SimpleTokenizer, as for our domain CLIP's config
    assert needed == int((tokenizer(tokenized_texts(), context_length=77) != 0).sum(1).max()) == 11
    assert len({tuple(t) for t in tokenizer(prompts(), context_length=8).tolist()}) == 1  # all ten the same
    assert parse_params({"clip": {"context_length": needed}}).clip.context_length == needed
    for short in (8, needed - 1):
        with pytest.raises(ConfigError) as info:
            parse_params({"clip": {"context_length": short}}, where="params.yaml")
        text = str(info.value)
        assert (
            text.startswith("params.yaml: clip.context_length: context_length must be >= 11")
            and "\n" not in text
        )


def test_the_defaults_pass_the_library_checks() -> None:
    """Defaults are not re-validated by pydantic: check them as params.yaml would give them."""
    d = Params()
    given = {
        "clip": {"context_length": d.clip.context_length},
        "generate": {"output_root": d.generate.output_root},
        "serve": d.serve.model_dump(),
    }
    assert parse_params(given).serve == d.serve


def test_a_student_for_a_teacher_s_sampler_and_eta_for_a_sampler_that_ignores_it_are_one_line(
    tmp_path: Path, capsys
) -> None:
    """Both would be read by nothing (the teacher draws; only ddim reads eta) while the run looked otherwise."""
    err = _run(tmp_path, {}, ["generate", "--no-grade", f"--student={tmp_path / 'nowhere'}"], capsys)
    assert "--student" in err and "the sampler is dpm-solver++" in err
    assert not (tmp_path / "data").exists()
    err = _run(tmp_path, {"generate": {"sampler": {"eta": 0.5}}}, ["generate", "--no-grade"], capsys)
    assert "generate.sampler" in err and "only ddim reads eta" in err
