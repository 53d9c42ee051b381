"""OAMN occlusion augmentation (sec. 3.1): geometry, targets, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.reid.occlusion_augment import (
    AREAS,
    LOCATIONS,
    NUM_GRADES,
    OcclusionLabel,
    augment_batch,
    grade_from_index,
    grade_index,
    mask_batch,
    occlude,
    occlude_all_locations,
    occlusion_box,
    sample_corner_patch,
)


def test_boxes_cover_the_requested_band():
    assert occlusion_box(128, 64, "top", 0.5) == (0, 64, 0, 64)
    assert occlusion_box(128, 64, "bottom", 0.25) == (96, 128, 0, 64)
    assert occlusion_box(128, 64, "left", 0.5) == (0, 128, 0, 32)
    assert occlusion_box(128, 64, "right", 0.25) == (0, 128, 48, 64)


def test_grade_index_roundtrip_and_errors():
    seen = {grade_index(None, 0)}
    for loc in LOCATIONS:
        for area in AREAS:
            idx = grade_index(loc, area)
            assert grade_from_index(idx) == (loc, area)
            seen.add(idx)
    assert seen == set(range(NUM_GRADES))
    with pytest.raises(ValueError, match="unknown occlusion location 'middle'"):
        grade_index("middle", 0.5)
    with pytest.raises(ValueError, match="area must be one of"):
        grade_index("top", 0.3)


def test_score_target_is_twice_the_area():
    assert OcclusionLabel("left", 0.25).score_target().tolist() == [0, 0, 0.5, 0]
    assert OcclusionLabel("bottom", 0.5).score_target().tolist() == [0, 1, 0, 0]
    assert OcclusionLabel(None, 0).score_target().tolist() == [0, 0, 0, 0]


def test_corner_patch_size_and_corner():
    src = torch.arange(100 * 50, dtype=torch.float32).reshape(1, 100, 50)
    for seed in range(50):
        patch = sample_corner_patch(src, seed)
        ph, pw = patch.shape[1:]
        area = ph * pw / (100 * 50)
        assert 0.005 < area < 0.3  # eps in [0.02, 0.2], up to rounding and clipping
        corners = {src[0, 0, 0].item(), src[0, 0, -1].item(), src[0, -1, 0].item(), src[0, -1, -1].item()}
        assert corners & {
            patch[0, 0, 0].item(),
            patch[0, 0, -1].item(),
            patch[0, -1, 0].item(),
            patch[0, -1, -1].item(),
        }


def test_occlude_numpy_pastes_only_inside_the_band_and_is_deterministic():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)
    src = np.full((90, 40, 3), 7, dtype=np.uint8)
    res = occlude(img, src, "bottom", 0.5, rng=3)
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    assert res.mask.sum() == 64 * 64 and res.mask[64:].all()
    assert (res.image[64:] == 7).all()
    assert np.array_equal(res.image[:64], img[:64])
    assert res.label == OcclusionLabel("bottom", 0.5)
    again = occlude(img, src, "bottom", 0.5, rng=3)
    assert np.array_equal(again.image, res.image)


def test_four_copies_share_patch_and_area():
    img = torch.zeros(3, 64, 32)
    src = torch.rand(3, 64, 32)
    copies = occlude_all_locations(img, src, rng=5)
    assert [c.label.location for c in copies] == list(LOCATIONS)
    assert len({c.label.area for c in copies}) == 1
    for c in copies:
        changed = (c.image != 0).any(0).numpy()
        assert not changed[~c.mask].any()


def test_augment_batch_layout_and_targets():
    images = torch.randn(6, 3, 32, 16)
    batch = augment_batch(images, rng=1)
    assert batch.images.shape == (30, 3, 32, 16)
    assert torch.equal(batch.images[:6], images)
    assert batch.location.tolist() == [-1] * 6 + [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6
    for row in range(6, 30):
        loc, area = int(batch.location[row]), float(batch.area[row])
        assert batch.score_target[row, loc] == pytest.approx(2 * area)
        assert batch.score_target[row].sum() == pytest.approx(2 * area)
        assert batch.grade[row] == grade_index(LOCATIONS[loc], area)
        i = row % 6
        assert batch.half[i] == (area == 0.5)
        y0, y1, x0, x1 = occlusion_box(32, 16, LOCATIONS[loc], area)
        outside = torch.ones(32, 16, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert torch.equal(batch.images[row][:, outside], images[i][:, outside])
    assert batch.score_target[:6].abs().sum() == 0
    again = augment_batch(images, rng=1)
    assert torch.equal(again.images, batch.images)
    with pytest.raises(ValueError, match="B>=2"):
        augment_batch(images[:1])


def test_mask_batch_fills_region():
    x = torch.ones(2, 3, 8, 4)
    out = mask_batch(x, [grade_index("top", 0.5), 0], fill=0.0)
    assert out[0, :, :4].abs().sum() == 0 and out[0, :, 4:].eq(1).all()
    assert torch.equal(out[1], x[1])
    with pytest.raises(ValueError, match="got 1 grades and 1 extra grades for 2 images"):
        mask_batch(x, [0])


def test_mask_batch_masks_the_union_with_a_second_grade():
    x = torch.ones(3, 3, 8, 4)
    top, bottom_q, left = grade_index("top", 0.5), grade_index("bottom", 0.25), grade_index("left", 0.5)
    out = mask_batch(x, [top, left, top], also=[bottom_q, top, grade_index("bottom", 0.5)])
    # top half + bottom quarter: rows 0-3 and 6-7 painted, rows 4-5 kept
    assert out[0, :, [0, 1, 2, 3, 6, 7]].eq(0).all() and out[0, :, 4:6].eq(1).all()
    # left half + top half: everything but the bottom-right quarter
    assert out[1, :, 4:, 2:].eq(1).all() and out[1].eq(0).sum() == 3 * (32 - 8)
    # opposite halves would paint the whole crop: it is left as it is
    assert torch.equal(out[2], x[2])
