"""Track aggregation for the identify stage: crop weights, the bounded weighted mean of each
unification version, the track grade, its use with the gallery, and ``amodal eval identity`` on a
tiny Market-1501-layout folder of real crops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.reid.gallery import OcclusionGallery
from models.reid.occlusion_augment import NUM_GRADES, grade_index
from models.reid.track_embedding import (
    TrackEmbedding,
    crop_weight,
    crop_weights,
    laplacian_sharpness,
    visible_share,
)

D = 16
TOP_QUARTER = grade_index("top", 0.25)
TOP_HALF = grade_index("top", 0.5)
LEFT_HALF = grade_index("left", 0.5)
BOTTOM_QUARTER = grade_index("bottom", 0.25)


def _unit_rows(rng: np.random.Generator, n: int = NUM_GRADES) -> np.ndarray:
    v = rng.normal(size=(n, D))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_weights_prefer_holistic_sharp_tall_confident_crops():
    assert visible_share(np.array([0, TOP_QUARTER, LEFT_HALF])).tolist() == [1.0, 0.75, 0.5]
    holistic, quarter, half = (crop_weight(g) for g in (0, TOP_QUARTER, TOP_HALF))
    assert holistic == 1.0 and holistic > quarter > half > 0
    assert crop_weight(0, sharpness=200.0) > crop_weight(0, sharpness=5.0)
    assert crop_weight(0, height=200.0) == crop_weight(0, height=128.0) > crop_weight(0, height=40.0)
    assert crop_weight(0, confidence=0.9) > crop_weight(0, confidence=0.3)
    # at equal sharpness the whole crop weighs more
    assert crop_weight(TOP_QUARTER, sharpness=50.0) < crop_weight(0, sharpness=50.0)
    # vectorised = one by one; NaN means unknown (factor 1)
    g = np.array([0, TOP_QUARTER, TOP_HALF])
    s, h, c = np.array([10.0, np.nan, 300.0]), np.array([64.0, 256.0, 100.0]), np.array([0.5, 1.0, 0.8])
    many = crop_weights(g, s, h, c)
    one = [crop_weight(int(g[i]), None if np.isnan(s[i]) else s[i], h[i], c[i]) for i in range(3)]
    assert np.allclose(many, one)
    assert crop_weight(TOP_HALF, confidence=0.0) > 0  # floored, never zero
    with pytest.raises(ValueError, match="grades must be in"):
        crop_weight(9)
    with pytest.raises(ValueError, match="sharpness must be >= 0"):
        crop_weight(0, sharpness=-1.0)
    with pytest.raises(ValueError, match="2 height values for 3 grades"):
        crop_weights(g, heights=np.ones(2))


def test_laplacian_sharpness_ranks_blur_below_detail():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, size=(64, 32, 3)).astype(np.uint8)
    blurred = sharp.astype(np.float32)
    for _ in range(3):  # box blur
        blurred = (
            blurred + np.roll(blurred, 1, 0) + np.roll(blurred, 1, 1) + np.roll(blurred, (1, 1), (0, 1))
        ) / 4
    assert laplacian_sharpness(np.full((20, 10), 7, np.uint8)) == 0.0
    assert laplacian_sharpness(sharp) > 10 * laplacian_sharpness(blurred)
    with pytest.raises(ValueError, match="H, W >= 3"):
        laplacian_sharpness(np.zeros((2, 8)))


def test_identical_crops_aggregate_to_that_embedding():
    rng = np.random.default_rng(1)
    crop = _unit_rows(rng)
    for top_k in (None, 2):
        track = TrackEmbedding(D, top_k=top_k)
        for w in (0.2, 1.0, 3.0):
            track.add(crop, grade=0, weight=w)
        assert np.allclose(track.versions(), crop, atol=1e-6)
        assert np.allclose(track.embedding(), crop[0], atol=1e-6)
    plain = TrackEmbedding(D)
    plain.add(crop[3] * 5.0)  # inputs are normalised
    plain.add(crop[3])
    assert np.allclose(plain.embedding(), crop[3], atol=1e-6)


def test_weighted_mean_by_hand_and_zero_rows():
    rng = np.random.default_rng(2)
    a, b = _unit_rows(rng), _unit_rows(rng)
    a[5] = 0  # version 5 not computed for a: b's alone
    track = TrackEmbedding(D)
    track.add(a, grade=0, weight=3.0)
    track.add(b, grade=TOP_QUARTER, weight=1.0)
    expected = 3.0 * a + 1.0 * b
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(track.versions(), expected, atol=1e-6)
    assert np.allclose(track.versions()[5], b[5], atol=1e-6)
    assert np.allclose(np.linalg.norm(track.versions(), axis=1), 1.0, atol=1e-5)
    assert track.total_weight == 4.0 and track.grade_weights[[0, TOP_QUARTER]].tolist() == [3.0, 1.0]
    assert len(track) == track.count == 2
    nothing = TrackEmbedding(D)
    nothing.add(np.zeros((NUM_GRADES, D)), grade=0)
    assert not nothing.versions().any()  # rows no crop has stay zero


def test_track_grade_rules():
    rng = np.random.default_rng(3)
    crops = [(0, 0.4), (TOP_QUARTER, 0.35), (BOTTOM_QUARTER, 0.25)]

    def grade(**kw) -> int:
        track = TrackEmbedding(D, **kw)
        for g, w in crops:
            track.add(_unit_rows(rng), g, w)
        return track.grade

    assert grade(grade_rule="dominant") == 0
    assert grade(grade_rule="holistic_share", holistic_share=0.5) == TOP_QUARTER  # 40 % holistic < 50 %
    assert grade(grade_rule="holistic_share", holistic_share=0.25) == 0
    assert grade(grade_rule="holistic_share", holistic_share=0.0) == 0  # always holistic
    occluded_only = TrackEmbedding(D, holistic_share=0.0)
    occluded_only.add(_unit_rows(rng), TOP_HALF, 1.0)
    assert occluded_only.grade == 0  # share 0: the track is always graded holistic
    with pytest.raises(ValueError, match="grade_rule"):
        TrackEmbedding(D, grade_rule="max")  # type: ignore[arg-type]


def test_memory_is_bounded_and_top_k_keeps_the_heaviest():
    rng = np.random.default_rng(4)
    running, best = TrackEmbedding(D), TrackEmbedding(D, top_k=3)
    heavy = _unit_rows(rng)
    sizes = []
    for i in range(500):
        rows, w = (heavy, 10.0 + i % 3) if i in (100, 200, 300) else (_unit_rows(rng), 0.5)
        running.add(rows, 0, w)
        best.add(rows, 0, w)
        sizes.append((running.nbytes, best.nbytes))
    assert len({s[0] for s in sizes}) == 1  # constant from the first crop
    assert max(s[1] for s in sizes) == 3 * NUM_GRADES * D * 4
    assert running.count == best.count == 500 and len(best) == 3 and len(running) == 500
    assert np.allclose(best.versions(), heavy, atol=1e-6)  # only the three heavy (identical) crops
    assert best.total_weight == pytest.approx(33.0)


def test_bad_input_is_rejected():
    track = TrackEmbedding(D)
    with pytest.raises(ValueError, match="no crops yet"):
        track.versions()
    with pytest.raises(ValueError, match=r"must be \(9, 16\) or \(16,\)"):
        track.add(np.ones((3, D)))
    with pytest.raises(ValueError, match="weight must be finite and > 0"):
        track.add(np.ones(D), weight=0.0)
    with pytest.raises(ValueError, match="grade must be in"):
        track.add(np.ones(D), grade=9)
    with pytest.raises(ValueError, match="NaN"):
        track.add(np.full(D, np.nan))
    track.add(np.ones(D))
    with pytest.raises(ValueError, match="holds \\(D,\\) plain embeddings"):
        track.add(np.ones((NUM_GRADES, D)))
    with pytest.raises(ValueError, match="use embedding"):
        track.versions()
    with pytest.raises(ValueError, match="top_k"):
        TrackEmbedding(D, top_k=0)


def test_tracks_go_into_and_match_against_the_gallery():
    rng = np.random.default_rng(5)
    people = [_unit_rows(rng) for _ in range(3)]
    gallery = OcclusionGallery(D, capacity=10)
    for pid, person in enumerate(people):
        track = TrackEmbedding(D)
        for _ in range(4):  # noisy crops of the person
            track.add(person + 0.3 * _unit_rows(rng), 0, 1.0)
        emb, grade = track.as_query()
        assert emb.shape == (1, NUM_GRADES, D)
        gallery.add([f"p{pid}"], emb, grades=[grade])
    query = TrackEmbedding(D)
    query.add(people[1] + 0.3 * _unit_rows(rng), TOP_QUARTER, crop_weight(TOP_QUARTER))
    query.add(people[1] + 0.3 * _unit_rows(rng), 0, crop_weight(0))
    emb, grade = query.as_query()
    assert gallery.match(emb, grade=grade, top_k=1)[0][0].id == "p1"


def test_threshold_and_summary_helpers():
    from amodal.commands.eval_identity import choose_threshold, pairwise_thresholds, summarise

    known = np.array([0.8, 0.7, 0.9, 0.3])
    correct = np.array([True, True, True, False])
    unknown = np.array([0.2, 0.4, 0.1, 0.35])
    res = choose_threshold(known, correct, unknown)
    assert 0.4 < res["threshold"] <= 0.7  # between the unknowns and the correct knowns
    assert res["unknown_declared_new"] == 1.0 and res["known_identified"] == 0.75
    assert res["known_wrong_identity"] == 0.0 and res["known_declared_new"] == 0.25
    pw = pairwise_thresholds(np.array([0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3, 0.65]))
    assert 0.1 <= pw["eer_threshold"] <= 0.8 and 0 <= pw["eer"] <= 1
    # per-track averaging: track 0 has two crops (hit, miss), track 1 one hit -> (50 + 100) / 2
    s = summarise(np.array([100.0, 0.0, 100.0]), np.array([100.0, 50.0, 100.0]), np.array([0, 0, 1]))
    assert s["rank1"] == 75.0 and s["mAP"] == 87.5 and s["num_tracks"] == 2


@pytest.mark.shared_assets
def test_eval_identity_program_on_a_tiny_market_folder(shared_dir, tmp_path):
    from amodal.commands.eval_identity import VARIANTS, main

    market = shared_dir / "datasets/Market-1501"
    peta = shared_dir / "datasets/PETA"
    if not (market / "query").is_dir() or not peta.is_dir():
        pytest.skip("Market-1501 or PETA not in the shared assets")
    root = tmp_path / "m"
    picked, ids = 0, 0
    for pid in sorted({p.name[:4] for p in market.glob("query/0*.jpg")}):
        if ids == 3:
            break
        cams = sorted({p.name[5:7] for p in market.glob(f"query/{pid}_c*.jpg")})[:2]
        if len(cams) < 2:
            continue
        ids += 1
        for cam in cams:  # the query crop of the camera and its first gallery crop there
            q = sorted(market.glob(f"query/{pid}_{cam}*.jpg"))[:1]
            g = sorted(market.glob(f"bounding_box_test/{pid}_{cam}*.jpg"))[:1]
            for src, sub in [(p, "query") for p in q] + [(p, "bounding_box_test") for p in g]:
                (root / sub).mkdir(parents=True, exist_ok=True)
                shutil.copy(src, root / sub / src.name)
                picked += 1
    assert ids == 3 and picked >= 6
    out = tmp_path / "identity.json"
    weights = Path(__file__).resolve().parents[1] / "models/weights/oamn_osnet_x0_25_peta.pt"
    args = ["--weights", str(weights), "--data", str(root), "--json", str(out)]
    args += ["--held-out-data", str(peta), "--held-out-ids", "3", "--max-track-len", "2", "--num-ids", "0"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["market"]["sizes"]["num_ids"] == 3 and res["market"]["sizes"]["num_tracks"] == 6
    assert res["held_out"]["sizes"]["num_ids"] == 3
    assert res["aggregation"]["variant"] in VARIANTS
    assert set(res["market"]["variants"]) == set(VARIANTS)
    for view in ("holistic", "occluded", "mixed"):
        rows = res["market"]["views"][view]
        assert {"crop_to_crop", "crop_to_crop_none", "query_crop_to_crop"} <= set(rows)
        agg = res["market"]["variants"][res["aggregation"]["variant"]][view]
        for row in (rows["crop_to_crop"], agg["track_to_track"], agg["track_to_crop"], agg["crop_to_track"]):
            assert 0 <= row["rank1"] <= 100 and 0 <= row["mAP"] <= 100 and row["num_queries"] > 0
    t = res["new_identity_threshold"]
    assert isinstance(t, float) and -1.5 < t < 1.5 and "held-out" in res["new_identity_threshold_rule"]
    chosen = res["new_identity"]["chosen"]
    assert (
        0 <= chosen["balanced_accuracy"] <= 1 and chosen["num_known_trials"] == 12
    )  # 3 ids x 2 sides x 2 views
    same, diff = (
        res["new_identity"]["same_identity_similarity"],
        res["new_identity"]["different_identity_similarity"],
    )
    assert same["q01"] <= same["q50"] <= same["q99"] and diff["num"] == 3 * 2 * 2 * 2
