"""Checkpoints store only what rebuilds the network; folders written by earlier versions still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion.checkpoint import CheckpointError, read_checkpoint_config, save_checkpoint
from diffusion.config import ClassifierConfig, DiffusionConfig
from diffusion.judges.classifier import DigitClassifier, load_classifier
from diffusion.model.saved import load_diffusion, new_model, save_diffusion

SMALL = DiffusionConfig.model_validate(
    {"unet": {"base_channels": 8, "channel_mults": [1, 2], "attention": False}}
)


def test_new_checkpoints_hold_the_architecture_and_keep_the_rest_as_meta(tmp_path: Path) -> None:
    net = new_model(SMALL, torch.device("cpu"))
    save_diffusion(tmp_path / "d", SMALL, net.state_dict(), net.state_dict(), {"val_loss": 0.1})
    doc = read_checkpoint_config(tmp_path / "d", "diffusion")
    assert set(doc["config"]) == {"unet", "process"}
    assert doc["meta"]["val_loss"] == 0.1 and doc["meta"]["train"]["steps"] == SMALL.train.steps


def test_a_diffusion_folder_in_the_earlier_format_loads(tmp_path: Path) -> None:
    """Earlier folders held the whole diffusion section (train, sampler, eval too) as their config."""
    net = new_model(SMALL, torch.device("cpu"))
    save_checkpoint(
        tmp_path / "old",
        "diffusion",
        SMALL.model_dump(mode="json"),
        {"ema": net.state_dict(), "model": net.state_dict()},
        {"val_loss": 0.2},
    )
    assert {"train", "sampler", "eval"} <= set(
        json.loads((tmp_path / "old" / "config.json").read_text())["config"]
    )
    loaded, process = load_diffusion(tmp_path / "old")
    assert loaded.cfg == SMALL.unet and process.num_timesteps == SMALL.process.timesteps
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), net.eval()(x, t, y))


def test_a_classifier_folder_in_the_earlier_format_loads(tmp_path: Path) -> None:
    cfg = ClassifierConfig(channels=(8, 16), hidden=32)
    old = {
        **cfg.architecture(),
        "epochs": 3,
        "batch_size": 128,
        "lr": 0.002,
        "label_smoothing": 0.05,
        "seed": 0,
    }
    net = DigitClassifier.from_config(cfg).eval()
    save_checkpoint(tmp_path / "old", "classifier", old, {"model": net.state_dict()})
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(load_classifier(tmp_path / "old")(x), net(x))


def test_a_config_without_its_config_key_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"kind": "diffusion", "meta": {}}))
    with pytest.raises(CheckpointError, match="no 'config' mapping") as err:
        load_diffusion(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text(
        json.dumps({"kind": "diffusion", "config": {"unet": {"groups": 0}}})
    )
    with pytest.raises(CheckpointError, match="invalid diffusion config") as err:
        load_diffusion(tmp_path)
    assert "\n" not in str(err.value)


def test_a_dvc_metrics_file_keeps_one_value_per_key(tmp_path: Path) -> None:
    import json
    import math

    from diffusion.checkpoint import write_metrics

    path = tmp_path / "metrics.json"
    write_metrics(
        path,
        {"loss": 0.5, "steps": 3, "ok": True, "version": "v1", "none": None, "nan": math.nan}
        | {"per_class": {"0": 1.0}, "styles": ["handwritten-mnist"], "pair": (1, 2)},
    )
    kept = json.loads(path.read_text())
    assert kept == {"loss": 0.5, "steps": 3, "ok": True, "version": "v1", "none": None, "nan": None}
