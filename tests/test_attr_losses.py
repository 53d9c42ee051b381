"""Weighted BCE losses on hand-computed cases (Fabbri eq. 2, de-occlusion eq. 7, MAN-PAR eq. 4-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.attributes.losses import AttributeLoss, category_weights, positive_ratio, weighted_bce

LN2 = math.log(2.0)


def test_reconstruction_scheme_hand_computed():
    # logit 0 -> p = 0.5 -> -log p = -log(1-p) = ln 2; r = 0.25 -> w+ = 1/(2*0.25) = 2, w- = 1/(2*0.75) = 2/3
    logits = torch.zeros(1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    loss = weighted_bce(logits, targets, [0.25, 0.25], "reconstruction", reduction="none")
    assert torch.allclose(loss, torch.tensor([[2 * LN2, (2 / 3) * LN2]]), atol=1e-6)
    mean = weighted_bce(logits, targets, [0.25, 0.25], "reconstruction")
    assert mean.item() == pytest.approx((2 + 2 / 3) * LN2 / 2, rel=1e-6)


def test_exp_scheme_hand_computed():
    # de-occlusion paper eq. 7: w+ = exp(1 - r), w- = exp(r)
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = 0.75 and 0.5
    targets = torch.tensor([[1.0, 0.0]])
    loss = weighted_bce(logits, targets, [0.1, 0.4], "exp", reduction="none")
    expected = [math.exp(0.9) * -math.log(0.75), math.exp(0.4) * LN2]
    assert loss[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_category_scheme_hand_computed():
    # MAN-PAR eq. 4-5: categories of sizes 1 and 2 -> weights 1 and 1/2, same on both terms
    assert category_weights(["gender", "age", "age"]).tolist() == pytest.approx([1.0, 0.5, 0.5])
    logits = torch.zeros(1, 3)
    targets = torch.tensor([[1.0, 0.0, 1.0]])
    cats = ["gender", "age", "age"]
    loss = weighted_bce(logits, targets, None, "category", categories=cats, reduction="sum")
    assert loss.item() == pytest.approx(2.0 * LN2, rel=1e-6)


def test_unknown_labels_are_ignored_and_plain_matches_torch():
    logits = torch.randn(4, 3)
    targets = torch.tensor([[1.0, 0, -1], [0, 1, 1], [-1, -1, 0], [1, 1, 1]])
    loss = weighted_bce(logits, targets, None, "plain")
    known = targets >= 0
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_positive_ratio_and_module():
    labels = np.array([[1, 0], [0, 0], [1, -1], [0, 1]], np.float32)
    assert positive_ratio(labels).tolist() == pytest.approx([0.5, 1 / 3])
    module = AttributeLoss("reconstruction", positive_ratio(labels))
    logits = torch.zeros(4, 2, requires_grad=True)
    module(logits, torch.as_tensor(labels)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_extreme_ratio_stays_finite():
    loss = weighted_bce(torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]), [0.0], "reconstruction")
    assert torch.isfinite(loss)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="unknown loss scheme"):
        weighted_bce(torch.zeros(1, 2), torch.zeros(1, 2), [0.5, 0.5], "focal")
    with pytest.raises(ValueError, match="needs pos_ratio"):
        weighted_bce(torch.zeros(1, 2), torch.zeros(1, 2), None, "exp")
    with pytest.raises(ValueError, match=r"pos_ratio must have shape \(2,\)"):
        weighted_bce(torch.zeros(1, 2), torch.zeros(1, 2), [0.5], "exp")
    with pytest.raises(ValueError, match="must both be"):
        weighted_bce(torch.zeros(1, 2), torch.zeros(1, 3), [0.5, 0.5])
    with pytest.raises(ValueError, match="categories has 1 entries"):
        weighted_bce(torch.zeros(1, 2), torch.zeros(1, 2), None, "category", categories=["a"])
