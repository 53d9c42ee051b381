"""The upscale stage rebuilds small people's crops with the shipped super-resolution network and
leaves tall ones as they came."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.deocclusion.image_metrics import psnr
from pipeline.messages import PersonCrops, Tracks, TrackState
from pipeline.stage import StageContext
from stages.upscale import UpscaleConfig, UpscaleStage, native_size

pytestmark = pytest.mark.shared_assets


def _message(crops: np.ndarray, heights: list[float]) -> PersonCrops:
    n = len(heights)
    boxes = np.array(
        [[10 + 60 * i, 300 - h, 10 + 60 * i + h / 2, 300] for i, h in enumerate(heights)], np.float32
    )
    tracks = Tracks(
        np.arange(n, dtype=np.int64),
        boxes,
        np.full(n, 0.9, np.float32),
        np.full(n, TrackState.UPDATED, np.uint8),
    )
    return PersonCrops("cam", 0, 0.0, 1000.0, (480, 640), tracks, crops)


def test_native_size_keeps_the_crop_aspect():
    assert native_size(40.4, (256, 128)) == (40, 20)
    assert native_size(1.0, (256, 128)) == (4, 2)


def test_small_boxes_are_super_resolved_and_tall_ones_pass(shared_dir: Path):
    """Market-1501 query crops seen 40 px tall: the tracker's linear stretch vs the stage's rebuild,
    both against the real crop at the crop size."""
    files = sorted((shared_dir / "datasets" / "Market-1501" / "query").glob("*.jpg"))[:16]
    truth = np.stack(
        [cv2.resize(cv2.imread(str(f)), (128, 256), interpolation=cv2.INTER_CUBIC) for f in files]
    )
    seen = [cv2.resize(cv2.imread(str(f)), (20, 40), interpolation=cv2.INTER_AREA) for f in files]
    tracker = np.stack([cv2.resize(s, (128, 256), interpolation=cv2.INTER_LINEAR) for s in seen])
    stage = UpscaleStage(UpscaleConfig(), StageContext("upscale", output_dir="."))
    stage.on_start()
    crops = np.concatenate([tracker, truth[:1]])  # 16 small people and one tall one
    (out,) = stage.process_batch([_message(crops, [40.0] * 16 + [200.0])])
    assert out.crops.shape == crops.shape and out.crops.dtype == np.uint8
    assert np.array_equal(out.crops[16], crops[16])  # tall: untouched
    assert np.array_equal(crops[:16], tracker)  # the input message is not modified
    gain = np.mean([psnr(o, t) - psnr(b, t) for o, b, t in zip(out.crops[:16], tracker, truth, strict=True)])
    assert gain > 0.0, f"SR should beat the tracker's linear stretch on average, got {gain:+.2f} dB"
    (none,) = stage.process_batch([_message(truth[:2], [200.0, 150.0])])
    assert np.array_equal(none.crops, truth[:2])
