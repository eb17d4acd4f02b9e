"""The independent evaluator: another architecture and seed than the filtering judge, a real (tiny) training
run, its features and probabilities, and its own checkpoint kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion.checkpoint import CheckpointError, read_checkpoint_config
from diffusion.config import ClassifierConfig, ConfigError, EvaluatorConfig, Params, parse_params
from diffusion.judges.classifier import DigitClassifier, load_classifier
from diffusion.judges.evaluator import (
    DigitEvaluator,
    ResidualBlock,
    load_evaluator,
    save_evaluator,
    train_evaluator,
)
from diffusion.judges.training import predict
from tests.judges_fixtures import digits_split, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = EvaluatorConfig(widths=(8, 16, 32), train={"epochs": 6, "batch_size": 32, "lr": 5e-3})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A tiny evaluator trained on 500 rendered digits, then saved: (result, checkpoint dir, test split)."""
    tmp = tmp_path_factory.mktemp("evaluator")
    train, val, test = (
        digits_split(tmp, name, n, seed)
        for name, n, seed in [("train", 500, 0), ("val", 100, 1), ("test", 200, 2)]
    )
    result = train_evaluator(TINY, train, val, test, progress=False)
    save_evaluator(tmp / "evaluator", TINY, result.model, result.metrics)
    return result, tmp / "evaluator", test


def test_another_architecture_and_seed_than_the_filtering_judge() -> None:
    evaluator, classifier = DigitEvaluator(), DigitClassifier.from_config(ClassifierConfig())
    kinds = {type(m) for m in evaluator.modules()}
    assert ResidualBlock in kinds and torch.nn.AdaptiveAvgPool2d in kinds
    assert not kinds & {torch.nn.MaxPool2d, torch.nn.Dropout}  # the classifier's pooling and dense layers
    assert not {type(m) for m in classifier.modules()} & {ResidualBlock, torch.nn.AdaptiveAvgPool2d}
    params = Params()
    assert params.evaluator.train.seed != params.classifier.train.seed
    with pytest.raises(ConfigError, match="evaluator.train.seed must differ"):
        parse_params({"evaluator": {"train": {"seed": 5}}, "classifier": {"train": {"seed": 5}}})


def test_shapes_of_logits_features_and_probabilities() -> None:
    model = DigitEvaluator.from_config(TINY).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model(x).shape == (3, 10) and model.features(x).shape == (3, TINY.widths[-1])
    probs = model.probabilities(x)
    assert torch.allclose(probs.sum(1), torch.ones(3)) and torch.equal(probs.argmax(1), model(x).argmax(1))
    deeper = DigitEvaluator(widths=(8, 16, 32), blocks=2)
    assert sum(isinstance(m, ResidualBlock) for m in deeper.modules()) == 6


def test_training_beats_chance_and_an_untrained_net(trained) -> None:
    result, _, test = trained
    m = result.metrics
    untrained = (predict(DigitEvaluator.from_config(TINY), test.images) == test.labels).float().mean().item()
    assert m["test_accuracy"] > max(0.5, untrained + 0.3)
    assert m["val_accuracy"] == max(h["val"] for h in result.history)
    assert set(m["per_class_accuracy"]) == {str(c) for c in range(10)} and len(result.confusion) == 100


def test_checkpoint_is_its_own_kind_and_reloads(trained) -> None:
    result, directory, test = trained
    doc = read_checkpoint_config(directory, "evaluator")
    assert doc["config"] == {"widths": [8, 16, 32], "blocks": 1}
    assert doc["meta"]["settings"]["train"]["seed"] == TINY.train.seed
    model = load_evaluator(directory)
    assert torch.equal(model.features(test.images[:4]), result.model.features(test.images[:4]))
    accuracy = (predict(model, test.images) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["test_accuracy"])
    with pytest.raises(CheckpointError, match="expected a 'classifier' checkpoint, found 'evaluator'"):
        load_classifier(directory)


def test_weights_of_another_shape_fail_in_one_line(trained, tmp_path: Path) -> None:
    _, directory, _ = trained
    other = EvaluatorConfig(widths=(8, 16, 64))
    save_evaluator(tmp_path / "other", other, DigitEvaluator.from_config(TINY), {})
    with pytest.raises(CheckpointError, match="does not match the evaluator's config") as err:
        load_evaluator(tmp_path / "other")
    assert "\n" not in str(err.value)
