"""Attribute metrics on a small example computed by hand (MAN-PAR eq. 6; example-based metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from models.attributes.metrics import attribute_metrics, format_metrics


def test_small_example_by_hand():
    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.6], [0.4, 0.1, 0.7], [0.8, 0.9, 0.3], [0.6, 0.3, 0.2]])
    # preds: [1,0,1] [0,0,1] [1,1,0] [1,0,0]
    m = attribute_metrics(probs, labels, ["a", "b", "c"])
    # attr a: P=2 TP=2, N=2 TN=1 -> 0.75; b: P=2 TP=1, N=2 TN=2 -> 0.75; c: P=3 TP=2, N=1 TN=1 -> (2/3+1)/2
    assert m["mA"] == pytest.approx((0.75 + 0.75 + (2 / 3 + 1) / 2) / 3)
    # per sample (inter, union, |pred|, |true|): (2,2,2,2) (1,2,1,2) (2,2,2,2) (0,2,1,1)
    assert m["accuracy"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert m["precision"] == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert m["recall"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.625 / (0.75 + 0.625))
    row_a = m["per_attribute"][0]
    assert row_a["name"] == "a" and row_a["positives"] == 2 and row_a["precision"] == pytest.approx(2 / 3)
    assert "mA" in format_metrics(m)


def test_attribute_without_positives_uses_the_existing_half():
    labels = np.array([[0, 1], [0, 0]])
    preds = np.array([[0, 1], [1, 0]])
    m = attribute_metrics(preds, labels, ["x", "y"])
    assert m["per_attribute"][0]["mA"] == pytest.approx(0.5)  # TNR only
    assert m["per_attribute"][0]["tpr"] is None
    assert m["mA"] == pytest.approx((0.5 + 1.0) / 2)


def test_perfect_predictions_give_one():
    labels = np.array([[1, 0], [0, 1]])
    m = attribute_metrics(labels.astype(float), labels, ["x", "y"])
    assert m["mA"] == m["accuracy"] == m["precision"] == m["recall"] == m["f1"] == pytest.approx(1.0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        attribute_metrics(np.zeros((2, 3)), np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="names has 1 entries"):
        attribute_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["a"])
