"""Realistic occlusion synthesis: every label is the exact hidden share of the full-body mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.reid.grader_data import RealisticBatches, realistic_set
from models.reid.occlusion_augment import LOCATIONS
from models.reid.realistic_occlusion import (
    KINDS,
    degrade,
    grader_target,
    hidden_location,
    paste_behind,
    paste_person,
    static_occluder,
    synthesize,
    truncate,
)

H, W = 64, 32


def _person(colour: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A crop with a person-shaped body (head + torso + legs) in one colour on a textured background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
    body = np.zeros((H, W), dtype=bool)
    body[4:14, 12:20] = True  # head
    body[14:40, 8:24] = True  # torso
    body[40:62, 9:15] = body[40:62, 17:23] = True  # legs
    image[body] = colour
    return image, body


def test_person_paste_label_is_the_covered_share_of_the_body():
    target, body = _person(200, 0)
    occluder, occluder_body = _person(90, 1)
    for seed in range(20):
        occ = paste_person(target, body, occluder, occluder_body, np.random.default_rng(seed))
        changed = np.any(occ.image != target, axis=2)
        covered = changed & body  # the occluder's colour differs from the target's everywhere
        assert occ.hidden_share == pytest.approx(covered.sum() / body.sum())
        assert np.array_equal(occ.hidden, covered)
        assert np.array_equal(occ.image[~changed], target[~changed])  # nothing else touched
        assert (occ.location == -1) == (occ.hidden_share == 0)


def test_static_occluder_label_counts_only_body_pixels():
    target, body = _person(200, 0)
    source = np.full((H, W, 3), 17, dtype=np.uint8)  # a texture of one colour absent from the target
    for seed in range(20):
        occ = static_occluder(target, body, source, np.random.default_rng(seed))
        cover = np.all(occ.image == 17, axis=2) & ~np.all(target == 17, axis=2)
        assert occ.hidden_share == pytest.approx((cover & body).sum() / body.sum())
        assert occ.kind == "static"


def test_truncation_label_is_the_share_of_the_body_cut_away():
    target, body = _person(200, 0)
    cut = 0
    for seed in range(20):
        occ = truncate(target, body, np.random.default_rng(seed))
        assert occ.image.shape == target.shape
        if occ.hidden_share == 0:
            continue
        cut += 1
        # what is hidden is the body inside a band along the named border, and all of it there
        side = LOCATIONS[occ.location]
        rows, cols = np.flatnonzero(occ.hidden.any(1)), np.flatnonzero(occ.hidden.any(0))
        band = np.zeros_like(body)
        if side == "top":
            band[: rows.max() + 1] = True
        elif side == "bottom":
            band[rows.min() :] = True
        elif side == "left":
            band[:, : cols.max() + 1] = True
        else:
            band[:, cols.min() :] = True
        assert np.array_equal(occ.hidden, band & body)
        assert occ.hidden_share == pytest.approx((band & body).sum() / body.sum())
    assert cut >= 10


def test_hidden_location_names_the_side_of_the_body():
    body = np.zeros((40, 20), dtype=bool)
    body[5:35, 5:15] = True
    for side, region in {
        "top": (slice(0, 12), slice(None)),
        "bottom": (slice(28, 40), slice(None)),
        "left": (slice(None), slice(0, 8)),
        "right": (slice(None), slice(12, 20)),
    }.items():
        hidden = np.zeros_like(body)
        hidden[region] = True
        assert LOCATIONS[hidden_location(body, hidden & body)] == side
    assert hidden_location(body, np.zeros_like(body)) == -1


def test_grader_target_follows_eq7_and_the_visible_fraction():
    assert grader_target(-1, 0.0).tolist() == [0, 0, 0, 0, 1]
    assert grader_target(1, 0.2) == pytest.approx([0, 0.4, 0, 0, 0.8])
    assert grader_target(2, 0.7) == pytest.approx([0, 0, 1.0, 0, 0.3])  # s^p capped at 1 (a half)


def test_synthesize_is_deterministic_and_draws_every_kind():
    target, body = _person(200, 0)
    pool = [_person(60 + 20 * i, 10 + i) for i in range(3)]

    def run(seed: int):
        rng = np.random.default_rng(seed)
        return [synthesize(target, body, lambda: pool[int(rng.integers(3))], rng) for _ in range(60)]

    a, b = run(3), run(3)
    assert all(
        np.array_equal(x.image, y.image) and x.hidden_share == y.hidden_share
        for x, y in zip(a, b, strict=True)
    )
    assert {o.kind for o in a} == set(KINDS)
    with pytest.raises(ValueError, match="one probability per kind"):
        synthesize(target, body, lambda: pool[0], np.random.default_rng(0), (1.0, 0.0))


def test_batches_take_occluders_from_other_identities_and_resume():
    people = [_person(40 + 30 * i, i) for i in range(4)]
    images = torch.stack([torch.from_numpy(p[0]).permute(2, 0, 1) for p in people])
    masks = torch.stack([torch.from_numpy(p[1]) for p in people])
    usable = np.array([True, True, True, False])
    batches = RealisticBatches(images, masks, usable, ["a", "a", "b", "c"], seed=0)
    first = batches.sample(8)
    assert first.images.shape == (8, 3, H, W) and first.targets.shape == (8, 5)
    assert np.all((first.hidden_share >= 0) & (first.hidden_share <= 1))
    state = batches.state()
    again = batches.sample(5)
    batches.set_state(state)
    assert torch.equal(batches.sample(5).images, again.images)
    held = realistic_set(images, masks, usable, ["a", "a", "b", "c"], seed=1, copies=2)
    assert len(held.images) == 6  # two copies of each crop with a mask
    with pytest.raises(ValueError, match="at least two crops"):
        RealisticBatches(images, masks, np.array([True, False, False, False]), ["a"] * 4, seed=0)


def test_a_person_behind_hides_nothing_and_leaves_the_body_as_it_was():
    target, body = _person(200, 0)
    other, other_body = _person(90, 1)
    touched = 0
    for seed in range(20):
        occ = paste_behind(target, body, other, other_body, np.random.default_rng(seed))
        assert occ.hidden_share == 0 and occ.location == -1 and occ.kind == "behind"
        assert np.array_equal(occ.image[body], target[body])  # the target's body is drawn on top
        touched += int(np.any(occ.image != target))
    assert touched > 0  # and the person behind does show around it


def test_degrade_keeps_the_shape_and_is_seeded():
    target, _ = _person(200, 0)
    a = degrade(target, np.random.default_rng(5))
    assert a.shape == target.shape and a.dtype == np.uint8
    assert np.array_equal(a, degrade(target, np.random.default_rng(5)))
