"""OAMN losses on hand-made cases (eq. 2, 3, 5-7, 9), the P x K sampler and CMC/mAP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.reid.losses import (
    batch_hard_triplet_loss,
    cross_triplet_loss,
    grouped_triplet_loss,
    identity_loss,
    mask_loss1,
    mask_loss2,
    score_loss,
)
from models.reid.metrics import cmc_map, confusion_matrix
from models.reid.sampler import PKSampler


def _stack(*views):
    return torch.cat(views)


def test_mask_loss1_zero_when_masked_difference_vanishes_and_hand_value():
    f = torch.randn(2, 3, 4, 2)
    fo = f.clone()
    fo[:, :, :2] += 1.0  # top half differs
    m_top = torch.ones(2, 1, 4, 2)
    m_top[:, :, :2] = 0  # ...and the mask ignores exactly that half
    ones = torch.ones(2, 1, 4, 2)
    f_all = _stack(f, fo, f, f, f)
    m_all = _stack(ones, m_top, ones, ones, ones)
    assert mask_loss1(f_all, m_all, "sum").item() == pytest.approx(0.0)
    # unmasked: each image has 3*2*2 = 12 elements differing by 1 -> sum 12 per image, /n(=2) * 2 images = 12
    m_all = _stack(ones, ones, ones, ones, ones)
    assert mask_loss1(f_all, m_all, "sum").item() == pytest.approx(12.0)
    assert mask_loss1(f_all, m_all, "mean").item() == pytest.approx(12.0 / 24)


def test_mask_loss2_zero_when_halves_add_up():
    g = torch.rand(3, 2, 4, 4)
    top = g.clone()
    top[:, :, 2:] = 0
    bottom = g - top
    left = g.clone()
    left[..., 2:] = 0
    right = g - left
    g_all = _stack(g, top, bottom, left, right)
    half = torch.tensor([True, True, False])
    assert mask_loss2(g_all, half, "sum").item() == pytest.approx(0.0, abs=1e-10)
    shifted = _stack(g, top + 1, bottom, left, right)
    # only half-occluded images count: per image 2*4*4 = 32 elements off by 1 -> mean over |I| = 32
    assert mask_loss2(shifted, half, "sum").item() == pytest.approx(32.0)
    assert mask_loss2(shifted, torch.tensor([False, False, False])).item() == 0.0


def test_batch_hard_triplet_hand_case():
    x = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest pos d=1, nearest neg d=3 -> relu(1-3+0.5)=0; anchor 1: pos 1, neg 2 -> 0
    # anchor 2: pos 0.5, neg 2 -> 0; anchor 3: pos 0.5, neg 2.5 -> 0
    assert batch_hard_triplet_loss(x, y, 0.5, squared=False).item() == pytest.approx(0.0)
    # margin 2.5: anchors -> 0.5, 1.5, 1.0, 0.5 -> mean 0.875
    assert batch_hard_triplet_loss(x, y, 2.5, squared=False).item() == pytest.approx(0.875)
    # squared (eq. 5), margin 4.5: relu(1-9+4.5)=0, relu(1-4+4.5)=1.5, relu(0.25-4+4.5)=0.75,
    # relu(0.25-6.25+4.5)=0
    val = batch_hard_triplet_loss(x, y, 4.5, squared=True).item()
    assert val == pytest.approx((0 + 1.5 + 0.75 + 0) / 4)


def test_grouped_triplet_mines_inside_groups_only():
    # group 0 is well separated, group 1 has a hard negative; a pooled loss would mix them
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1], [0.0], [0.1], [0.2], [0.3]])
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    g0 = batch_hard_triplet_loss(x[:4], y[:4], 0.5, False)
    g1 = batch_hard_triplet_loss(x[4:], y[4:], 0.5, False)
    assert g0.item() == pytest.approx(0.0)
    assert grouped_triplet_loss(x, y, groups, 0.5, False).item() == pytest.approx((g0 + g1).item() / 2)
    assert grouped_triplet_loss(x, y, groups, 0.5, False).item() != pytest.approx(
        batch_hard_triplet_loss(x, y, 0.5, False).item()
    )


def test_cross_triplet_mines_positives_and_negatives_in_the_other_set():
    # anchors (occluded views) at 0 and 10 on a line; candidates (masked holistic views) elsewhere
    anchors = torch.tensor([[0.0], [10.0]])
    candidates = torch.tensor([[1.0], [3.0], [9.0], [4.0]])
    a_lab, c_lab = torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1])
    # anchor 0: farthest positive 3, nearest negative 4 -> relu(3 - 4 + 0.5) = 0
    # anchor 1: farthest positive 6 (at 4), nearest negative 7 (at 3) -> relu(6 - 7 + 0.5) = 0
    assert cross_triplet_loss(anchors, a_lab, candidates, c_lab, 0.5, squared=False) == pytest.approx(0.0)
    # margin 2: (3 - 4 + 2 + 6 - 7 + 2) / 2 = 1
    assert cross_triplet_loss(anchors, a_lab, candidates, c_lab, 2.0, squared=False) == pytest.approx(1.0)
    # an anchor with no positive among the candidates is left out
    lone = torch.tensor([0, 5])
    assert cross_triplet_loss(anchors, lone, candidates, c_lab, 2.0, squared=False) == pytest.approx(1.0)


def test_identity_and_score_losses():
    logits = torch.tensor([[0.0, 0.0]])
    assert identity_loss(logits, torch.tensor([1])).item() == pytest.approx(math.log(2))
    s = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0]])
    t = torch.tensor([[0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    assert score_loss(s, t).item() == pytest.approx((4 * 0.0625 + 0) / 2)


def test_pk_sampler_balance_and_determinism():
    labels = [0] * 5 + [1] * 1 + [2] * 3 + [3] * 4
    a = PKSampler(labels, p=3, k=2, seed=1)
    b = PKSampler(labels, p=3, k=2, seed=1)
    for _ in range(20):
        batch = a.next_batch()
        assert batch == b.next_batch()
        ids = [labels[i] for i in batch]
        assert len(batch) == 6 and len(set(ids)) == 3
        assert all(ids.count(i) == 2 for i in set(ids))
    with pytest.raises(ValueError, match="at least p=5 identities"):
        PKSampler(labels, p=5, k=2)


def test_cmc_map_hand_computed():
    sim = np.array(
        [
            [0.9, 0.8, 0.1, 0.5],  # q0 (id 1): ranking g0(id2) g1(id1) g3(id1) g2 -> first hit rank 2
            [0.2, 0.1, 0.9, 0.3],
        ]
    )  # q1 (id 3): g2(id3) first -> rank 1
    g_ids = np.array([2, 1, 3, 1])
    q_ids = np.array([1, 3])
    res = cmc_map(sim, q_ids, g_ids, ranks=(1, 2, 5))
    assert res["rank1"] == pytest.approx(50.0) and res["rank2"] == pytest.approx(100.0)
    ap0 = (1 / 2 + 2 / 3) / 2
    assert res["mAP"] == pytest.approx(100 * (ap0 + 1.0) / 2)
    # same id + same camera excluded: q0 in cam 1, g1 in cam 1 -> removed, first hit now g3 at rank 2
    res = cmc_map(sim, q_ids, g_ids, np.array([1, 1]), np.array([2, 1, 2, 2]), ranks=(1, 2))
    assert res["rank1"] == pytest.approx(50.0)
    assert res["mAP"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="does not match"):
        cmc_map(sim[:, :3], q_ids, g_ids)
    assert confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist() == [[1, 0], [1, 1]]
