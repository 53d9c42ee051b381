"""Class-imbalance-weighted binary cross-entropy losses for multi-label attribute recognition.

Pedestrian attributes are rare (a hat on ~2% of PETA people), so plain BCE learns "always no".
Three published weightings are offered, selectable by name from a recipe:

* ``reconstruction``: Fabbri et al., GAN reconstruction for attribute recognition, sec. 3.1, eq. 2:
  positives weighted 1/(2 r_i), negatives 1/(2 (1 - r_i)), r_i = positive ratio of attribute i.
* ``exp``: de-occlusion U-Net GAN paper, sec. 3.1, eq. 7: positives exp(1 - r_i), negatives exp(r_i).
* ``category``: MAN-PAR sec. 3.5, eq. 4-5: every attribute of category c weighted 1/R_c, R_c = number
  of classes (attributes) in that category, so large categories do not dominate the gradient.
* ``plain``: unweighted BCE, the baseline the others are compared with.

Partial labels: a target < 0 or NaN, or a False entry of an explicit ``mask``, marks an unknown label
(an attribute the sample's dataset does not label, RAP's "uncertain", an empty CSV cell). Such an
entry contributes nothing: no loss, no gradient, and it is not counted in the mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LossScheme",
    "LOSS_SCHEMES",
    "weighted_bce",
    "positive_ratio",
    "category_weights",
    "AttributeLoss",
]

logger = logging.getLogger(__name__)

LossScheme = Literal["reconstruction", "exp", "category", "plain"]
LOSS_SCHEMES: tuple[str, ...] = ("reconstruction", "exp", "category", "plain")
_RATIO_EPS = 1e-3  # keeps 1/(2 r) finite for an attribute with no positives in the training set


def positive_ratio(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """r_i = fraction of positives of attribute i over the known (>= 0, not NaN) training labels, (A,)."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2D (N, A) array, got shape {y.shape}")
    known = np.isfinite(y) & (y >= 0)
    counts = known.sum(axis=0)
    pos = ((y > 0.5) & known).sum(axis=0)
    return np.where(counts > 0, pos / np.maximum(counts, 1), 0.0).astype(np.float32)


def category_weights(categories: Sequence[int] | Sequence[str]) -> np.ndarray:
    """MAN-PAR eq. 4: weight 1/R_c for each attribute, R_c = how many attributes share its category."""
    cats = list(categories)
    if not cats:
        raise ValueError("categories must name one category per attribute, got an empty list")
    sizes = {c: cats.count(c) for c in set(cats)}
    return np.array([1.0 / sizes[c] for c in cats], dtype=np.float32)


def _weights(
    scheme: str,
    pos_ratio: torch.Tensor | None,
    categories: Sequence[int] | Sequence[str] | None,
    num_attrs: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_pos, w_neg), each shape (A,)."""
    if scheme in ("reconstruction", "exp"):
        if pos_ratio is None:
            raise ValueError(f"scheme {scheme!r} needs pos_ratio (per-attribute positive ratio)")
        r = pos_ratio.to(like).clamp(_RATIO_EPS, 1.0 - _RATIO_EPS)
        if scheme == "reconstruction":  # Fabbri et al. eq. 2
            return 1.0 / (2.0 * r), 1.0 / (2.0 * (1.0 - r))
        return torch.exp(1.0 - r), torch.exp(r)  # de-occlusion paper eq. 7
    if scheme == "category":
        if categories is None:
            raise ValueError("scheme 'category' needs categories (one category id or name per attribute)")
        if len(categories) != num_attrs:
            raise ValueError(f"categories has {len(categories)} entries but there are {num_attrs} attributes")
        w = torch.as_tensor(category_weights(categories)).to(like)
        return w, w  # MAN-PAR eq. 5: the same 1/R_c on both terms
    if scheme == "plain":
        one = torch.ones(num_attrs).to(like)
        return one, one
    raise ValueError(f"unknown loss scheme {scheme!r}; expected one of {', '.join(LOSS_SCHEMES)}")


def weighted_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_ratio: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    scheme: str = "reconstruction",
    categories: Sequence[int] | Sequence[str] | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted BCE on logits (numerically stable: log p = logsigmoid(x), log(1-p) = logsigmoid(-x)).

    Per element: ``-(w_pos_i * y * log p + w_neg_i * (1 - y) * log(1 - p))`` with the scheme's weights.
    ``reduction="mean"`` averages over the known elements (so the papers' sum over attributes is
    scaled by 1/(N*A): the same minimiser, learning rates that do not depend on A); ``"sum"`` sums;
    ``"none"`` returns the (N, A) matrix with zeros at unknown labels (targets < 0 or NaN, or
    ``mask`` False where a boolean (N, A) ``mask`` is given).
    """
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must both be (N, A); got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    num_attrs = logits.shape[1]
    r = None
    if pos_ratio is not None:
        r = torch.as_tensor(
            np.asarray(pos_ratio, dtype=np.float32) if not isinstance(pos_ratio, torch.Tensor) else pos_ratio
        )
        if r.shape != (num_attrs,):
            raise ValueError(f"pos_ratio must have shape ({num_attrs},), got {tuple(r.shape)}")
    w_pos, w_neg = _weights(scheme, r, categories, num_attrs, logits)
    targets = targets.to(logits.dtype)
    known = torch.isfinite(targets) & (targets >= 0)
    if mask is not None:
        if mask.shape != logits.shape:
            raise ValueError(f"mask must be {tuple(logits.shape)}, got {tuple(mask.shape)}")
        known = known & mask.to(torch.bool)
    y = torch.where(known, targets, torch.zeros_like(targets)).clamp(0.0, 1.0)
    per_element = -(w_pos * y * F.logsigmoid(logits) + w_neg * (1.0 - y) * F.logsigmoid(-logits))
    loss = torch.where(known, per_element, torch.zeros_like(per_element))  # no gradient where unknown
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / known.sum().clamp(min=1).to(loss.dtype)


class AttributeLoss(nn.Module):
    """The loss a recipe selects, with r_i (and categories) fixed from the training set at construction."""

    def __init__(
        self,
        scheme: str,
        pos_ratio: np.ndarray | Sequence[float] | None = None,
        categories: Sequence[int] | Sequence[str] | None = None,
    ):
        super().__init__()
        if scheme not in LOSS_SCHEMES:
            raise ValueError(f"unknown loss scheme {scheme!r}; expected one of {', '.join(LOSS_SCHEMES)}")
        self.scheme = scheme
        self.categories = list(categories) if categories is not None else None
        ratio = torch.as_tensor(np.asarray(pos_ratio, dtype=np.float32)) if pos_ratio is not None else None
        self.register_buffer("pos_ratio", ratio, persistent=False)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean weighted BCE over the known entries (targets >= 0, not NaN, and ``mask`` where given)."""
        return weighted_bce(logits, targets, self.pos_ratio, self.scheme, self.categories, mask=mask)
