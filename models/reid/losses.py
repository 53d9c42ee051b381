"""OAMN losses (Chen et al., ICCV 2021, sec. 3.2-3.5).

Views are laid out as in ``occlusion_augment.AugmentedBatch``: rows ``v*n + i`` hold view ``v`` of
image ``i``, views ordered [holistic, top, bottom, left, right].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "mask_loss1",
    "mask_loss2",
    "grouped_triplet_loss",
    "batch_hard_triplet_loss",
    "cross_triplet_loss",
    "identity_loss",
    "score_loss",
    "OAMNLoss",
    "LossTerms",
]

Reduction = Literal["mean", "sum"]


def _sq_norm(x: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Squared L2 norm of each sample's map; 'mean' divides by the element count."""
    s = x.flatten(1).square().sum(1)
    return s / x[0].numel() if reduction == "mean" else s


def _views(x: torch.Tensor, n_views: int = 5) -> torch.Tensor:
    if x.shape[0] % n_views:
        raise ValueError(f"expected {n_views} stacked views, got batch of {x.shape[0]}")
    return x.reshape(n_views, x.shape[0] // n_views, *x.shape[1:])


def mask_loss1(f: torch.Tensor, m: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Eq. 2: L_mask1 = 1/n sum_p sum_i ||(f_i - f_i^p) * m^p||^2 over the four occluded views:
    the mask of an occluded view should select what its holistic image shows identically."""
    fv, mv = _views(f), _views(m)
    n = fv.shape[1]
    total = f.new_zeros(())
    for p in range(1, 5):
        total = total + _sq_norm((fv[0] - fv[p]) * mv[p], reduction).sum()
    return total / n


def mask_loss2(g: torch.Tensor, half: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Eq. 3: over half-occluded images I, ||g^t + g^b - g||^2 + ||g^l + g^r - g||^2, averaged over |I|:
    complementary halves together should give back the complete attentive feature."""
    gv = _views(g)
    if half.shape[0] != gv.shape[1]:
        raise ValueError(f"half has {half.shape[0]} entries for {gv.shape[1]} images")
    if not bool(half.any()):
        return g.new_zeros(())
    idx = half.nonzero().flatten()
    hol, top, bot, left, right = (gv[v][idx] for v in range(5))
    per = _sq_norm(top + bot - hol, reduction) + _sq_norm(left + right - hol, reduction)
    return per.mean()


def _pairwise(x: torch.Tensor, squared: bool) -> torch.Tensor:
    sq = x.square().sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0)
    return d if squared else (d + 1e-12).sqrt()


def batch_hard_triplet_loss(
    x: torch.Tensor, labels: torch.Tensor, margin: float, squared: bool = True
) -> torch.Tensor:
    """Eq. 5 with batch-hard mining (Hermans et al. 2017): farthest positive, nearest negative,
    averaged over anchors that have both."""
    d = _pairwise(x, squared)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=x.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not bool(valid.any()):
        return x.new_zeros(())
    hardest_pos = (d * pos_mask).max(1).values
    hardest_neg = d.masked_fill(~neg_mask, float("inf")).min(1).values
    loss = F.relu(hardest_pos - hardest_neg + margin)
    return loss[valid].mean()


def cross_triplet_loss(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidates: torch.Tensor,
    candidate_labels: torch.Tensor,
    margin: float,
    squared: bool = True,
) -> torch.Tensor:
    """Batch-hard triplet (eq. 5's form) whose positives and negatives come from another set: for
    each anchor, the farthest same-identity candidate and the nearest other-identity candidate."""
    d = torch.cdist(anchors, candidates).square() if squared else torch.cdist(anchors, candidates)
    same = anchor_labels[:, None] == candidate_labels[None, :]
    valid = same.any(1) & (~same).any(1)
    if not bool(valid.any()):
        return anchors.new_zeros(())
    hardest_pos = (d * same).max(1).values
    hardest_neg = d.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def grouped_triplet_loss(
    h: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, margin: float, squared: bool = True
) -> torch.Tensor:
    """Eq. 6: the triplet loss mined separately inside each occlusion group p in P' (holistic, top,
    bottom, left, right) and averaged over the groups (1/|P'|)."""
    uniq = groups.unique()
    losses = [
        batch_hard_triplet_loss(h[groups == gid], labels[groups == gid], margin, squared) for gid in uniq
    ]
    return torch.stack(losses).mean()


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Eq. 9: cross-entropy over all five versions of every image, averaged over n * |P'|."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def score_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7: 1/(n |P'|) sum ||T(g) - s||^2 (squared error summed over the four locations, and over
    the visible fraction when ``target`` has it; a four-column target leaves it out)."""
    return (scores[:, : target.shape[1]] - target).square().sum(1).mean()


@dataclass
class LossTerms:
    """The terms of eq. 10, detached scalars for logging plus the two objectives to minimise."""

    l1: torch.Tensor
    l2: torch.Tensor
    logs: dict[str, float]


class OAMNLoss:
    """L1 = lambda1 L_mask + lambda2 L_tri-g + lambda3 L_ide and L2 = lambda4 L_score (eq. 10)."""

    def __init__(
        self,
        alpha1: float = 1.0,
        alpha2: float = 1.0,
        lambda_mask: float = 5.0,
        lambda_triplet: float = 0.5,
        lambda_ide: float = 1.0,
        lambda_score: float = 1.0,
        margin: float = 0.5,
        squared_distance: bool = False,
        mask_reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        lambda_unify: float = 0.0,
    ):
        self.alpha1, self.alpha2 = alpha1, alpha2
        self.lambdas = (lambda_mask, lambda_triplet, lambda_ide, lambda_score)
        self.margin, self.squared = margin, squared_distance
        self.reduction: Reduction = mask_reduction
        self.label_smoothing = label_smoothing
        self.lambda_unify = lambda_unify

    @classmethod
    def from_config(cls, cfg) -> OAMNLoss:
        return cls(**cfg.model_dump())

    def __call__(
        self,
        out,
        labels: torch.Tensor,
        groups: torch.Tensor,
        half: torch.Tensor,
        score_target: torch.Tensor,
        masked_holistic: torch.Tensor | None = None,
    ) -> LossTerms:
        """``out`` is an ``OAMNOutput`` over the 5n stacked views; ``labels`` and ``groups`` (5n,).
        ``masked_holistic`` (4n, D): pre-BN features of the holistic views with g masked like
        occluded views 1..4 (rows in the same order), for ``lambda_unify``."""
        if out.logits is None:
            raise ValueError("OAMN needs an identity classifier (num_classes > 0) to train")
        lm1 = mask_loss1(out.f, out.m, self.reduction)
        lm2 = mask_loss2(out.g, half, self.reduction)
        l_mask = self.alpha1 * lm1 + self.alpha2 * lm2
        l_tri = grouped_triplet_loss(out.feature, labels, groups, self.margin, self.squared)
        l_ide = identity_loss(out.logits, labels, self.label_smoothing)
        l_score = score_loss(out.scores, score_target)
        lam_mask, lam_tri, lam_ide, lam_score = self.lambdas
        l1 = lam_mask * l_mask + lam_tri * l_tri + lam_ide * l_ide
        unify_logs = {}
        if self.lambda_unify > 0 and masked_holistic is not None:
            n = labels.shape[0] // 5
            l_unify = cross_triplet_loss(
                out.feature[n:], labels[n:], masked_holistic, labels[n:], self.margin, self.squared
            )
            l1 = l1 + self.lambda_unify * l_unify
            unify_logs["unify"] = l_unify.item()
        l2 = lam_score * l_score
        logs = {
            "mask1": lm1.item(),
            "mask2": lm2.item(),
            "triplet": l_tri.item(),
            "ide": l_ide.item(),
            "score": l_score.item(),
            "l1": l1.item(),
            "l2": l2.item(),
            **unify_logs,
        }
        return LossTerms(l1, l2, logs)
