"""Occlusion synthesis geometry (de-occlusion paper sec. 4.1 eq. 8; reconstruction paper sec. 4)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.deocclusion.synthesis import (
    OcclusionSynthesizer,
    UltralyticsPersonMasker,
    ellipse_person_mask,
    grabcut_person_mask,
)

H, W = 112, 48  # 6/7 * 112 = 96 exactly


def _person(
    colour: tuple[int, int, int], background: tuple[int, int, int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic crop: textured background, a filled upright 'person' blob, and its true mask."""
    rng = np.random.default_rng(seed)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = background
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (W // 2, 14), (7, 9), 0, 0, 360, 1, -1)  # head
    cv2.rectangle(mask, (W // 2 - 10, 22), (W // 2 + 10, 70), 1, -1)  # torso
    cv2.rectangle(mask, (W // 2 - 9, 70), (W // 2 - 2, H - 3), 1, -1)  # legs
    cv2.rectangle(mask, (W // 2 + 2, 70), (W // 2 + 9, H - 3), 1, -1)
    img[mask.astype(bool)] = colour
    return img, mask.astype(bool)


@pytest.fixture()
def pair():
    clean, _ = _person((200, 40, 40), (90, 160, 90), 0)
    occluder, occ_mask = _person((30, 30, 210), (150, 150, 150), 1)
    return clean, occluder, occ_mask


def test_silhouette_stays_above_six_sevenths(pair):
    clean, occluder, occ_mask = pair
    synth = OcclusionSynthesizer(band_width=3)
    limit = int(np.floor(H * 6 / 7))
    for seed in range(25):
        res = synth(clean, occluder, occ_mask, rng=seed, mode="silhouette")
        assert res.mode == "silhouette" and res.image.shape == clean.shape and res.image.dtype == np.uint8
        assert not res.mask[limit:].any()  # nothing occluded below 6/7 of the height
        np.testing.assert_array_equal(res.image[limit:], clean[limit:])
        assert res.mask.mean() > 0.02  # something was occluded
        # occluder colour only appears inside the returned mask
        blue = (res.image[..., 2] > 180) & (res.image[..., 0] < 80)
        assert not (blue & ~res.mask).any()


def test_blur_only_on_the_boundary_band(pair):
    clean, occluder, occ_mask = pair
    res = OcclusionSynthesizer(band_width=3, blur_sigma=1.5)(
        clean, occluder, occ_mask, rng=3, mode="silhouette"
    )
    band = res.band
    assert band.any() and band.mean() < 0.25
    inner = res.mask & ~band  # pasted silhouette interior: exact occluder pixels (shifted), never blurred
    outer = ~res.mask  # untouched background of the clean crop
    np.testing.assert_array_equal(res.image[outer], clean[outer])
    assert inner.any()
    # The band is exactly dilation minus erosion of the pasted mask: it straddles the silhouette edge.
    pasted = (res.mask & ~band) | (band & res.mask)
    assert (band & ~pasted).sum() == 0
    # Re-running eq. 8 without blur differs from the result only on the band.
    no_blur = OcclusionSynthesizer(band_width=3, blur_sigma=1e-3)(
        clean, occluder, occ_mask, rng=3, mode="silhouette"
    )
    differs = np.any(no_blur.image != res.image, axis=2)
    assert differs.any() and not (differs & ~band).any()


def test_same_seed_same_result_different_seed_different(pair):
    clean, occluder, occ_mask = pair
    synth = OcclusionSynthesizer(modes={"silhouette": 1, "bottom": 1, "corner": 1})
    a = synth(clean, occluder, occ_mask, rng=11)
    b = synth(clean, occluder, occ_mask, rng=11)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    results = [synth(clean, occluder, occ_mask, rng=s) for s in range(12)]
    assert len({r.image.tobytes() for r in results}) > 6
    assert {r.mode for r in results} == {"silhouette", "bottom", "corner"}


def test_bottom_occlusion_covers_50_to_80_percent(pair):
    clean, occluder, occ_mask = pair
    synth = OcclusionSynthesizer()
    for seed in range(20):
        res = synth(clean, occluder, occ_mask, rng=seed, mode="bottom")
        rows = np.nonzero(res.mask.any(axis=1))[0]
        fraction = len(rows) / H
        assert 0.5 - 1 / H <= fraction <= 0.8 + 1 / H
        assert rows.max() == H - 1 and res.mask[rows].all()  # full-width band at the bottom
        np.testing.assert_array_equal(res.image[~res.mask], clean[~res.mask])
        np.testing.assert_array_equal(
            res.image[rows.min() :], occluder[: len(rows)]
        )  # another subject's upper body


def test_corner_patch_mode_uses_oamn_geometry(pair):
    clean, occluder, occ_mask = pair
    res = OcclusionSynthesizer()(clean, occluder, occ_mask, rng=5, mode="corner")
    area = res.mask.mean()
    assert area == pytest.approx(0.25, abs=0.03) or area == pytest.approx(0.5, abs=0.03)
    np.testing.assert_array_equal(res.image[~res.mask], clean[~res.mask])


def test_grabcut_fallback_finds_the_person(pair):
    _, occluder, true_mask = pair
    mask = grabcut_person_mask(occluder)
    iou = (mask & true_mask).sum() / (mask | true_mask).sum()
    assert iou > 0.6
    prior = ellipse_person_mask(H, W)
    assert 0.3 < prior.mean() < 0.7 and prior[H // 2, W // 2]


def test_segmenter_must_be_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="nothing is downloaded"):
        UltralyticsPersonMasker(tmp_path / "yolov8n-seg.pt")


def test_bad_inputs_are_clear_errors(pair):
    clean, occluder, occ_mask = pair
    with pytest.raises(ValueError, match="unknown occlusion modes"):
        OcclusionSynthesizer(modes={"scribble": 1.0})
    with pytest.raises(ValueError, match="occluder must match"):
        OcclusionSynthesizer()(clean, occluder[:50], occ_mask, rng=0)
    with pytest.raises(ValueError, match="uint8"):
        OcclusionSynthesizer()(clean.astype(np.float32), occluder, occ_mask, rng=0)
    with pytest.raises(ValueError, match="bottom_range"):
        OcclusionSynthesizer(bottom_range=(0.8, 0.5))
