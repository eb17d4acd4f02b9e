"""The scorer shared by both judges: shapes, ranges, agreement with each judge, filtering and best-of-N."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from diffusion.config import ClipConfig
from diffusion.judges.classifier import DigitClassifier
from diffusion.judges.clip import ClipJudge, domain_model_config
from diffusion.judges.scoring import Scorer, Scores, best_of_n, keep_mask
from tests.judges_fixtures import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP = ClipConfig(
    model="scoring-test-clip",
    embed_dim=32,
    vision="vit",
    image_size=28,
    patch_size=7,
    width=32,
    layers=1,
    text_width=32,
    text_layers=1,
)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    """Untrained judges are enough to check the arithmetic: a seeded tiny CLIP and a tiny CNN."""
    path = tmp_path_factory.mktemp("scoring") / f"{CLIP.model}.json"
    path.write_text(json.dumps(domain_model_config(CLIP)))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    clip = ClipJudge(open_clip.create_model(CLIP.model), open_clip.get_tokenizer(CLIP.model), "cpu")
    return Scorer(clip, DigitClassifier(channels=(4, 8), hidden=16), batch_size=7)


def digits(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_scores_shapes_ranges_and_agreement(scorer: Scorer) -> None:
    images, labels = digits(20, 0), torch.arange(20) % 10
    s = scorer(images, labels)
    assert len(s) == 20 and all(t.shape == (20,) for t in (s.clip_score, s.clip_margin, s.classifier_prob))
    assert (
        s.classifier_pred.dtype == torch.int64 and ((s.classifier_pred >= 0) & (s.classifier_pred < 10)).all()
    )
    assert (s.clip_score.abs() <= 100 + 1e-4).all() and (
        (s.classifier_prob >= 0) & (s.classifier_prob <= 1)
    ).all()

    per_class = scorer.clip.class_scores(images)  # (20, 10), computed independently
    assert torch.allclose(s.clip_score, per_class[torch.arange(20), labels], atol=1e-4)
    assert torch.equal(s.clip_margin > 0, per_class.argmax(1) == labels)
    probs = scorer.classifier.probabilities(images)
    assert torch.allclose(s.classifier_prob, probs[torch.arange(20), labels])
    assert torch.equal(s.classifier_pred, probs.argmax(1))


def test_scores_do_not_depend_on_chunking(scorer: Scorer) -> None:
    images, labels = digits(23, 1), torch.arange(23) % 10
    big = Scorer(scorer.clip, scorer.classifier, batch_size=512)
    a, b = scorer(images, labels), big(images, labels)
    assert torch.allclose(a.clip_score, b.clip_score, atol=1e-4) and torch.equal(
        a.classifier_pred, b.classifier_pred
    )


def test_a_digits_scores_are_the_same_bytes_whatever_is_scored_with_it(scorer: Scorer) -> None:
    """A flow task scores its own digits: the scores of a digit must not move with the task's size or its
    place in it (every judge call is one padded batch shape; on an AVX-512 CPU a batch of 4 rounded
    otherwise than one of 12)."""
    images, labels = digits(23, 2), torch.arange(23) % 10
    whole = scorer(images, labels)
    for start, n in ((0, 1), (3, 4), (5, 12), (16, 7)):
        part = scorer(images[start : start + n], labels[start : start + n])
        for field in ("clip_score", "clip_margin", "classifier_prob", "classifier_pred"):
            assert torch.equal(getattr(part, field), getattr(whole, field)[start : start + n]), (
                start,
                n,
                field,
            )


def test_keep_mask_applies_each_threshold() -> None:
    s = Scores(
        clip_score=torch.tensor([30.0, 20.0, 30.0, 30.0]),
        clip_margin=torch.tensor([5.0, 5.0, -1.0, 5.0]),
        classifier_prob=torch.tensor([0.99, 0.99, 0.99, 0.5]),
        classifier_pred=torch.tensor([1, 1, 1, 1]),
    )
    labels = torch.tensor([1, 1, 1, 1])
    assert keep_mask(s, labels).tolist() == [True] * 4
    assert keep_mask(s, labels, min_clip_score=25).tolist() == [True, False, True, True]
    assert keep_mask(s, labels, min_clip_margin=0).tolist() == [True, True, False, True]
    assert keep_mask(s, labels, min_classifier_prob=0.9).tolist() == [True, True, True, False]
    assert keep_mask(s, torch.tensor([1, 2, 1, 1])).tolist() == [True, False, True, True]
    assert keep_mask(s, torch.tensor([2, 2, 2, 2]), require_classifier_agrees=False).all()
    assert s.select(torch.tensor([3])).classifier_prob.tolist() == [0.5]


def test_best_of_n_keeps_the_top_clip_score(scorer: Scorer) -> None:
    w, n = 4, 3
    candidates, labels = digits(w * n, 2).view(w, n, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    best = best_of_n(scorer, candidates, labels)
    assert best.images.shape == (w, 1, 28, 28) and best.index.shape == (w,) and len(best.scores) == w
    every = scorer(candidates.flatten(0, 1), labels.repeat_interleave(n)).clip_score.view(w, n)
    assert torch.allclose(best.scores.clip_score, every.max(1).values)
    assert torch.equal(best.images, candidates[torch.arange(w), best.index])


def test_scorer_runs_on_the_clip_device(scorer: Scorer) -> None:
    s = scorer(digits(3, 3), torch.tensor([0, 1, 2]))
    assert all(t.device == scorer.device for t in (s.clip_score, s.classifier_prob, s.classifier_pred))
