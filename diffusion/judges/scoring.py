"""One scorer for both judges: how well each generated digit shows its intended label.

    scores = Scorer(clip_judge, classifier)(images, labels)    # images (N, 1, 28, 28) in [-1, 1]
    keep = keep_mask(scores, labels, min_clip_score=25.0, min_classifier_prob=0.9)
    best = best_of_n(scorer, candidates, labels)               # candidates (W, N, 1, 28, 28)

Everything is batched on the judges' device; the 10 prompt embeddings are computed once per scorer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from diffusion.judges.classifier import DigitClassifier
from diffusion.judges.clip import PROMPT, ClipJudge


@dataclass(frozen=True)
class Scores:
    """Per-image scores, all tensors of shape (N,) on the scorer's device.

    clip_score: 100 x cosine(image embedding, intended prompt embedding) (CLIPScore, without its clip at 0).
    clip_margin: clip_score minus the best clip_score among the 9 other digits' prompts (> 0: CLIP agrees).
    classifier_prob: the classifier's probability of the intended label.
    classifier_pred: the classifier's argmax label (int64).
    """

    clip_score: torch.Tensor
    clip_margin: torch.Tensor
    classifier_prob: torch.Tensor
    classifier_pred: torch.Tensor

    def __len__(self) -> int:
        return self.clip_score.shape[0]

    def to(self, device: torch.device | str) -> Scores:
        """The same scores on `device`."""
        return Scores(*(getattr(self, f.name).to(device) for f in fields(self)))

    def select(self, index: torch.Tensor | slice) -> Scores:
        """The scores of the images picked by a boolean mask (N,) or an index tensor."""
        return Scores(*(getattr(self, f.name)[index] for f in fields(self)))


class Scorer:
    """Scores images against intended labels with a CLIP judge and a classifier judge.

    Every judge call sees exactly `batch_size` images: the images go in chunks of `batch_size`, the last one
    padded with blank digits that are then dropped, and every product with the prompt embeddings too. So a
    digit's scores do not depend on how many digits are scored with it (a flow task's size): oneDNN and
    the BLAS pick their kernels by batch size, and on an AVX-512 CPU batches under 8 round differently from
    larger ones (measured, 2026-12-07), while rows of one shape are computed alike whatever their
    neighbours. The default 256 pads the shipped task of 250 by 6.
    """

    def __init__(
        self, clip: ClipJudge, classifier: DigitClassifier, template: str = PROMPT, batch_size: int = 256
    ):
        self.clip = clip
        self.classifier = classifier.eval()
        self.batch_size = batch_size
        self.device = clip.device
        self.text = clip.class_embeddings(template)  # (10, D), unit length

    def _fixed_batches(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 1, H, W) -> chunks of exactly `batch_size` on the judges' device, the last padded
        with blank digits (-1, the background)."""
        chunks = []
        for chunk in images.to(self.device).split(self.batch_size):
            pad = self.batch_size - chunk.shape[0]
            chunks.append(torch.cat([chunk, chunk.new_full((pad, *chunk.shape[1:]), -1.0)]) if pad else chunk)
        return chunks

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Scores:
        """images (N, 1, 28, 28) in [-1, 1], labels (N,) int -> Scores on the scorer's device."""
        n = images.shape[0]
        labels = labels.to(self.device, torch.int64)
        chunks = self._fixed_batches(images)  # the similarity too: a (1, D) @ (D, 10) rounds unlike (256, D)
        all_scores = torch.cat(
            [100 * self.clip.encode_images(c, self.batch_size) @ self.text.T for c in chunks]
        )
        all_scores = all_scores[:n]  # (N, 10)
        clip_score = all_scores.gather(1, labels[:, None]).squeeze(1)
        others = all_scores.scatter(1, labels[:, None], float("-inf"))
        clip_margin = clip_score - others.max(dim=1).values
        probs = torch.cat([self.classifier.probabilities(c) for c in chunks])[:n]
        return Scores(
            clip_score=clip_score,
            clip_margin=clip_margin,
            classifier_prob=probs.gather(1, labels[:, None]).squeeze(1),
            classifier_pred=probs.argmax(dim=1),
        )


def keep_mask(
    scores: Scores,
    labels: torch.Tensor,
    min_clip_score: float | None = None,
    min_clip_margin: float | None = None,
    min_classifier_prob: float | None = None,
    require_classifier_agrees: bool = True,
) -> torch.Tensor:
    """Boolean (N,) mask of the images passing every given threshold (None: that check is off).

    require_classifier_agrees: also require classifier_pred == labels.
    """
    keep = torch.ones(len(scores), dtype=torch.bool, device=scores.clip_score.device)
    if min_clip_score is not None:
        keep &= scores.clip_score >= min_clip_score
    if min_clip_margin is not None:
        keep &= scores.clip_margin >= min_clip_margin
    if min_classifier_prob is not None:
        keep &= scores.classifier_prob >= min_classifier_prob
    if require_classifier_agrees:
        keep &= scores.classifier_pred == labels.to(keep.device)
    return keep


@dataclass(frozen=True)
class BestOfN:
    """images (W, 1, H, W') the chosen candidates; index (W,) which of the N each one was; scores of them."""

    images: torch.Tensor
    index: torch.Tensor
    scores: Scores


def best_of_n(scorer: Scorer, candidates: torch.Tensor, labels: torch.Tensor) -> BestOfN:
    """For each wanted image keep the candidate with the highest CLIP score for its label.

    Args:
        candidates: (W, N, 1, H, W') in [-1, 1], N candidates for each of W wanted images.
        labels: (W,) the intended label of each wanted image (shared by its N candidates).
    """
    w, n = candidates.shape[:2]
    flat = scorer(candidates.flatten(0, 1), labels.repeat_interleave(n))  # W * N scores
    index = flat.clip_score.view(w, n).argmax(dim=1)  # (W,)
    picked = torch.arange(w, device=index.device) * n + index
    images = candidates.flatten(0, 1)[picked.to(candidates.device)]
    return BestOfN(images=images, index=index, scores=flat.select(picked))
