"""Per-track aggregation: quality weights, weighted running average, hysteresis on constructed sequences."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from models.attributes.aggregation import (
    AggregationConfig,
    CropQuality,
    TrackAttributeAggregator,
    laplacian_sharpness,
    quality_weight,
)


def test_quality_weight_terms():
    cfg = AggregationConfig(min_height=32, full_height=128, sharpness_half=100)
    assert quality_weight(CropQuality(), cfg) == 1.0
    assert quality_weight(CropQuality(height=80), cfg) == pytest.approx(0.5)
    assert quality_weight(CropQuality(height=20), cfg) == 0.0
    assert quality_weight(CropQuality(sharpness=100), cfg) == pytest.approx(0.5)
    assert quality_weight(CropQuality(height=200, confidence=0.8, occlusion=0.25), cfg) == pytest.approx(0.6)
    assert quality_weight(CropQuality(height=33, sharpness=1), cfg) == pytest.approx(cfg.min_weight)


def test_sharpness_orders_sharp_above_blurred():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (9, 9), 3)
    assert laplacian_sharpness(sharp) > 10 * laplacian_sharpness(blurred)


def test_hysteresis_does_not_flicker():
    agg = TrackAttributeAggregator(["bag"], AggregationConfig(t_on=0.6, t_off=0.4, min_evidence=1.5))
    # probability oscillating around 0.5 -> a single threshold at 0.5 would flip every frame
    decisions = []
    for k in range(20):
        state = agg.update(7, [0.55 if k % 2 else 0.45], quality=1.0)
        decisions.append(state.decisions["bag"])
    assert decisions[0] is None  # not enough evidence after one frame
    assert len(set(decisions[1:])) == 1  # decided once, then stable
    # strong evidence turns it on, weaker-but-above-t_off evidence keeps it on
    agg2 = TrackAttributeAggregator(
        ["bag"], AggregationConfig(t_on=0.6, t_off=0.4, min_evidence=0.0, half_life=2.0)
    )
    seq = [0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1]
    out = [agg2.update("t", [p]).decisions["bag"] for p in seq]
    assert out[:3] == [True, True, True]
    assert all(out[3:7])  # averages fall towards 0.5 but stay above t_off
    assert out[-1] is False  # forgetting lets clear contrary evidence switch it off


def test_low_quality_frames_barely_move_the_average():
    agg = TrackAttributeAggregator(["male", "hat"])
    good = CropQuality(height=200, sharpness=1000, confidence=0.9, occlusion=0.0)
    bad = CropQuality(height=40, sharpness=5, confidence=0.3, occlusion=0.7)
    for _ in range(5):
        agg.update(1, [0.9, 0.1], good)
    for _ in range(5):
        state = agg.update(1, [0.1, 0.9], bad)  # occluded, tiny, blurred crops saying the opposite
    assert state.frames == 10
    assert state.probabilities["male"] > 0.85 and state.probabilities["hat"] < 0.15
    assert state.decisions == {"male": True, "hat": False}
    assert agg.end(1) is state and agg.get(1) is None and len(agg) == 0


def test_bad_input():
    agg = TrackAttributeAggregator(["a", "b"])
    with pytest.raises(ValueError, match="got 3 probabilities for 2 attributes"):
        agg.update(1, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        agg.update(1, [0.1, 1.5])
    with pytest.raises(ValidationError, match="t_off"):
        AggregationConfig(t_on=0.4, t_off=0.6)


@pytest.mark.shared_assets
def test_shipped_weights_describe_a_track(shared_dir):
    """The shipped checkpoint through the predictor (the describe stage's path) and the aggregator."""
    from pathlib import Path

    from models.attributes.predictor import AttributePredictor
    from models.data.transforms import load_rgb

    weights = Path(__file__).resolve().parents[1] / "models" / "weights" / "attributes_part_osnet_x0_25.pt"
    assert weights.stat().st_size < 10 * 2**20
    predictor = AttributePredictor.from_weights(weights)
    viper = shared_dir / "datasets" / "PETA" / "VIPeR" / "archive"
    crops = [load_rgb(str(viper / name)) for name in ("000_45_1.bmp", "000_45_2.bmp")]
    probs = predictor(crops)
    assert probs.shape == (2, 35) and np.all((probs >= 0) & (probs <= 1))
    agg = TrackAttributeAggregator(predictor.names)
    for crop, p in zip(crops, probs, strict=True):
        state = agg.update(
            "viper-000", p, CropQuality(height=crop.shape[0], sharpness=laplacian_sharpness(crop))
        )
    assert set(state.decisions) == set(predictor.names)
    assert all(v in (True, False) for v in state.decisions.values())
