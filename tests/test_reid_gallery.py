"""The occlude-them-all gallery: unification rule, the paper's exception, capacity/eviction,
save/load round trip, and crops through a real (small, untrained) OAMN encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backbones import create_backbone
from models.reid.gallery import OcclusionGallery
from models.reid.grader import GradeThresholds
from models.reid.oamn import OAMN, infer_feature_hw
from models.reid.occlusion_augment import NUM_GRADES, grade_index
from models.reid.unification import unified_similarity

D = 8
BOTTOM_HALF = grade_index("bottom", 0.5)
TOP_HALF = grade_index("top", 0.5)
LEFT_QUARTER = grade_index("left", 0.25)


def _unit(i: int) -> np.ndarray:
    v = np.zeros(D, dtype=np.float32)
    v[i] = 1
    return v


def _entry(holistic: int, **by_grade: int) -> np.ndarray:
    """(9, D) embeddings: holistic vector everywhere except the given grades."""
    e = np.tile(_unit(holistic), (NUM_GRADES, 1))
    for name, idx in by_grade.items():
        e[int(name[1:])] = _unit(idx)
    return e


def test_bottom_half_query_matches_bottom_half_embeddings():
    gal = OcclusionGallery(D, capacity=10)
    # A looks like the query only once both are bottom-half masked; B looks like its unmasked view
    a = _entry(0, **{f"g{BOTTOM_HALF}": 3})
    b = _entry(3)
    gal.add(["A", "B"], np.stack([a, b]), grades=[0, 0])
    query = _entry(3)[None]  # version 0, the query with its own region masked: vector 3
    assert gal.match(query, grade=BOTTOM_HALF, top_k=1)[0][0].id == "A"
    # graded holistic it is compared with holistic embeddings -> B
    assert gal.match(query, grade=0, top_k=1)[0][0].id == "B"
    plain = OcclusionGallery(D, capacity=10, unify=False)
    plain.add(["A", "B"], np.stack([a, b]), grades=[0, 0])
    assert plain.match(query, grade=BOTTOM_HALF, top_k=1)[0][0].id == "B"


def test_occluded_gallery_entry_masks_the_query_the_same_way():
    gal = OcclusionGallery(D, capacity=10)
    # entry graded top-half: the query must be compared through its own top-half-masked embedding
    gal.add(["C", "D"], np.stack([_entry(5), _entry(6)]), grades=[TOP_HALF, 0])
    query = _entry(6, **{f"g{TOP_HALF}": 5})[None]  # unmasked like D, top-masked like C
    res = gal.match(query, grade=0, top_k=2)[0]
    assert [m.id for m in res] == ["C", "D"] and res[0].score == pytest.approx(1.0)
    assert res[0].grade == TOP_HALF


def test_unified_similarity_rule():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(9, 4, 3)), rng.normal(size=(9, 5, 3))
    qg, gg = np.array([0, 3, 3, 8]), np.array([0, 1, 3, 8, 2])
    s = unified_similarity(q, qg, g, gg)
    for i in range(4):
        for j in range(5):
            assert s[i, j] == pytest.approx(q[gg[j], i] @ g[qg[i], j], rel=1e-5)
    with pytest.raises(ValueError, match=r"expected \(9, N, D\)"):
        unified_similarity(q[:3], qg, g, gg)
    offsets = rng.uniform(size=(9, 9))
    shifted = unified_similarity(q, qg, g, gg, offsets)
    assert np.allclose(shifted, s - offsets[qg[:, None], gg[None, :]], atol=1e-5)
    with pytest.raises(ValueError, match=r"offsets must be \(9, 9\)"):
        unified_similarity(q, qg, g, gg, offsets[:3])


def test_offsets_stop_an_occluded_entry_outranking_plain_ones(tmp_path):
    # a holistic query meets the entry graded top-half through both crops' top-half-painted
    # versions (raw cosine 0.9) and the plain entry through the plain ones (0.8); painting inflates
    # similarity, which the offset for grades (0, top half) takes back
    offsets = np.zeros((NUM_GRADES, NUM_GRADES), dtype=np.float32)
    offsets[0, TOP_HALF] = offsets[TOP_HALF, 0] = 0.3
    query = np.tile(_unit(0), (NUM_GRADES, 1))
    query[TOP_HALF] = _unit(1)
    occluded = np.tile(0.9 * _unit(1) + np.sqrt(0.19) * _unit(3), (NUM_GRADES, 1))
    plain = np.tile(0.8 * _unit(0) + 0.6 * _unit(2), (NUM_GRADES, 1))
    for gal_offsets, first, score in ((None, "occluded", 0.9), (offsets, "plain", 0.8)):
        gal = OcclusionGallery(D, capacity=3, offsets=gal_offsets)
        gal.add(["occluded", "plain"], np.stack([occluded, plain]), grades=[TOP_HALF, 0])
        best = gal.match(query[None], grade=0, top_k=2)[0]
        assert best[0].id == first and best[0].score == pytest.approx(score, abs=1e-5)
    gal.save(tmp_path / "g")
    assert np.array_equal(OcclusionGallery.load(tmp_path / "g").offsets, offsets)
    with pytest.raises(ValueError, match=r"offsets must be \(9, 9\)"):
        OcclusionGallery(D, offsets=np.zeros((3, 3)))


def test_capacity_and_least_recently_used_eviction():
    gal = OcclusionGallery(D, capacity=3)
    gal.add(["a", "b", "c"], np.stack([_entry(0), _entry(1), _entry(2)]), grades=[0, 0, 0])
    gal.match(_entry(0)[None], grade=0)  # "a" refreshed
    gal.add(["d"], _entry(3)[None], grades=[0])  # evicts "b", the least recently used
    assert sorted(gal.ids) == ["a", "c", "d"] and len(gal) == 3 and gal.evictions == 1
    gal.add(["e"], _entry(4)[None], grades=[0])  # now "c"
    assert sorted(gal.ids) == ["a", "d", "e"]
    assert gal.remove("a") == 1 and len(gal) == 2
    gal.add(["f"], _entry(5)[None], grades=[0])  # reuses the free slot, no eviction
    assert gal.evictions == 2 and sorted(gal.ids) == ["d", "e", "f"]


def test_save_load_roundtrip(tmp_path):
    gal = OcclusionGallery(D, capacity=5)
    gal.add(["x", 7], np.stack([_entry(1), _entry(2, **{f"g{BOTTOM_HALF}": 4})]), grades=[0, TOP_HALF])
    npz, meta = gal.save(tmp_path / "gallery")
    assert npz.is_file() and meta.is_file()
    back = OcclusionGallery.load(tmp_path / "gallery")
    assert back.ids == ["x", 7] and len(back) == 2
    q = _entry(4)[None]
    assert [(m.id, m.score, m.grade) for m in back.match(q, grade=BOTTOM_HALF)[0]] == [
        (m.id, m.score, m.grade) for m in gal.match(q, grade=BOTTOM_HALF)[0]
    ]
    with pytest.raises(FileNotFoundError, match="gallery files not found"):
        OcclusionGallery.load(tmp_path / "nope")


def test_bad_input_is_rejected():
    gal = OcclusionGallery(D, capacity=2)
    with pytest.raises(ValueError, match="grades are required"):
        gal.add(["a"], _entry(0)[None])
    with pytest.raises(ValueError, match="no encoder"):
        gal.add(["a"], np.zeros((1, 3, 8, 4), np.float32))
    with pytest.raises(ValueError, match="1 ids for 2 items"):
        gal.add(["a"], np.stack([_entry(0), _entry(1)]), grades=[0, 0])
    with pytest.raises(ValueError, match="grades must be in"):
        gal.add(["a"], _entry(0)[None], grades=[9])
    with pytest.raises(ValueError, match="expected crops"):
        gal.match(np.zeros((2, D)), grade=0)


def test_crops_through_a_real_encoder():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bb = create_backbone("osnet_x0_25")
    model = OAMN(bb, "conv3", infer_feature_hw(bb, "conv3", (64, 32)), grader_pool_hw=(2, 2)).eval()
    gal = OcclusionGallery.for_model(model, capacity=4)
    crops = torch.randn(3, 3, 64, 32)
    emb, grades = gal.encode(crops, grades=[0, 0, 0])
    assert emb.shape == (3, NUM_GRADES, model.embedding_dim) and grades.tolist() == [0, 0, 0]
    assert np.allclose(np.linalg.norm(emb, axis=2), 1, atol=1e-5)
    assert not np.allclose(emb[:, 0], emb[:, BOTTOM_HALF])  # masking changes the embedding
    gal.add(["p", "q", "r"], crops)
    res = gal.match(crops[1:2], grade=0, top_k=3)[0]
    assert res[0].id == "q" and res[0].score == pytest.approx(1.0, abs=1e-4)


class _CountingEncoder:
    """Wraps a real TorchEncoder and counts the images it is asked to embed."""

    def __init__(self, inner):
        self.inner, self.seen = inner, 0

    def __call__(self, images):
        self.seen += len(images)
        return self.inner(images)


def _small_model():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bb = create_backbone("osnet_x0_25")
    return OAMN(bb, "conv3", infer_feature_hw(bb, "conv3", (64, 32)), grader_pool_hw=(2, 2)).eval()


def test_queries_encode_only_the_versions_the_gallery_needs():
    from models.reid.encoder import TorchEncoder

    model = _small_model()
    enc = _CountingEncoder(TorchEncoder(model))
    gal = OcclusionGallery(model.embedding_dim, capacity=4, encoder=enc)
    gal.add(["a", "b"], torch.randn(2, 3, 64, 32), grades=[0, 0])
    assert enc.seen == 2 * NUM_GRADES  # entries: the plain pass + 8 masked versions
    enc.seen = 0
    gal.match(torch.randn(3, 3, 64, 32), grade=0, top_k=1)
    assert enc.seen == 3  # holistic queries against a holistic gallery: one pass each
    enc.seen = 0
    gal.match(torch.randn(3, 3, 64, 32), grade=BOTTOM_HALF, top_k=1)
    assert enc.seen == 3 * 2  # + each query with its own (bottom) region masked
    gal.add(["c"], torch.randn(1, 3, 64, 32), grades=[TOP_HALF])
    enc.seen = 0
    gal.match(torch.randn(3, 3, 64, 32), grade=0, top_k=1)
    assert enc.seen == 3 * 2  # + the top-half-masked version (the paper's exception)
    enc.seen = 0
    gal.match(torch.randn(3, 3, 64, 32), grade=BOTTOM_HALF, top_k=1)
    # + bottom masked; top + bottom halves cover the crop, so that version is the plain pass
    assert enc.seen == 3 * 2


def test_versions_mask_the_entrys_own_region_too(tmp_path):
    from models.reid.encoder import TorchEncoder
    from models.reid.occlusion_augment import mask_batch

    model = _small_model()
    enc = TorchEncoder(model)
    gal = OcclusionGallery(model.embedding_dim, capacity=4, encoder=enc, fill=0.5)
    crops = torch.randn(2, 3, 64, 32)
    emb, grades = gal.encode(crops, grades=[TOP_HALF, 0])
    plain, _ = enc(crops)
    by_hand, _ = enc(
        mask_batch(crops[[0, 0, 1]], [TOP_HALF, TOP_HALF, 0], 0.5, also=[LEFT_QUARTER, 0, LEFT_QUARTER])
    )
    assert grades.tolist() == [TOP_HALF, 0]
    assert np.allclose(emb[0, LEFT_QUARTER], by_hand[0], atol=1e-5)  # left quarter + own top half
    assert np.allclose(emb[0, 0], by_hand[1], atol=1e-5)  # version 0: own region only
    assert np.allclose(emb[0, TOP_HALF], by_hand[1], atol=1e-5)
    assert np.allclose(emb[0, BOTTOM_HALF], plain[0], atol=1e-5)  # opposite halves: unmasked
    assert np.allclose(emb[1, 0], plain[1], atol=1e-5)  # a holistic entry's version 0 is its crop
    assert np.allclose(emb[1, LEFT_QUARTER], by_hand[2], atol=1e-5)
    # a query is its entry with the top half occluded differently: unified, both sides lose the top
    # half, so it matches the entry exactly; without unification it does not
    gal.add(["p", "q"], crops, grades=[0, 0])
    occluded = crops[:1].clone()
    occluded[:, :, :32] = torch.randn(1, 3, 32, 32)
    best = gal.match(occluded, grade=TOP_HALF, top_k=1)[0][0]
    assert best.id == "p" and best.score == pytest.approx(1.0, abs=1e-5)
    plain_gal = OcclusionGallery(model.embedding_dim, capacity=4, encoder=enc, unify=False)
    plain_gal.add(["p", "q"], crops, grades=[0, 0])
    assert plain_gal.match(occluded, grade=TOP_HALF, top_k=1)[0][0].score < 1 - 1e-4


def test_galleries_saved_with_the_old_rule_are_refused(tmp_path):
    gal = OcclusionGallery(D, capacity=2)
    gal.add(["a"], _entry(0)[None], grades=[0])
    _, meta = gal.save(tmp_path / "g")
    meta.write_text(meta.read_text().replace("amodal.oamn_gallery/2", "amodal.oamn_gallery/1"))
    with pytest.raises(ValueError, match="older unification rule"):
        OcclusionGallery.load(tmp_path / "g")


def test_from_weights_grades_with_the_checkpoints_thresholds(tmp_path):
    from models.reid.config import OAMNModelConfig
    from models.reid.oamn import save_oamn_weights

    torch.manual_seed(0)
    cfg = OAMNModelConfig(input_size=(64, 32), grader_pool_hw=(2, 2), grade_thresholds=(0.6, 0.9))
    model = OAMN.from_config(cfg, load_backbone_weights=False).eval()
    path = save_oamn_weights(model, cfg.model_dump(mode="json"), tmp_path / "oamn.pt")
    gal = OcclusionGallery.from_weights(path, capacity=3)
    assert (gal.thresholds.quarter, gal.thresholds.half) == (0.6, 0.9)
    gal.add(["a"], torch.randn(1, 3, 64, 32))
    assert len(gal) == 1 and gal.match(torch.randn(1, 3, 64, 32), top_k=1)[0][0].id == "a"
    assert (
        OcclusionGallery.from_weights(path, thresholds=GradeThresholds(0.5, 0.75)).thresholds.quarter == 0.5
    )
    assert gal.offsets is None  # this checkpoint was never calibrated: the paper's raw similarities


def test_similarity_offsets_measure_mean_cross_similarity_per_union():
    from models.reid.encoder import TorchEncoder
    from models.reid.occlusion_augment import mask_batch
    from models.reid.unification import similarity_offsets

    enc = TorchEncoder(_small_model())
    crops = torch.randn(5, 3, 64, 32)
    table = similarity_offsets(enc, crops, chunk=2)

    def mean_cross(emb):
        sims = emb @ emb.T
        return sims[~np.eye(len(emb), dtype=bool)].mean()

    assert table.shape == (NUM_GRADES, NUM_GRADES) and np.allclose(table, table.T)
    assert table[0, 0] == pytest.approx(mean_cross(enc(crops)[0]), abs=1e-5)
    masked = enc(mask_batch(crops, [TOP_HALF] * 5, also=[LEFT_QUARTER] * 5))[0]
    assert table[TOP_HALF, LEFT_QUARTER] == pytest.approx(mean_cross(masked), abs=1e-5)
    assert table[TOP_HALF, BOTTOM_HALF] == table[0, 0]  # opposite halves: the plain crops
    assert table[TOP_HALF, TOP_HALF] == table[0, TOP_HALF]  # the same region either way
    with pytest.raises(ValueError, match="at least 2 crops"):
        similarity_offsets(enc, crops[:1])


def test_from_weights_matches_with_the_checkpoints_offsets(tmp_path):
    from models.reid.config import OAMNModelConfig
    from models.reid.oamn import save_oamn_weights

    table = np.full((NUM_GRADES, NUM_GRADES), 0.25).tolist()
    cfg = OAMNModelConfig(input_size=(64, 32), grader_pool_hw=(2, 2), similarity_offsets=table)
    model = OAMN.from_config(cfg, load_backbone_weights=False).eval()
    path = save_oamn_weights(model, cfg.model_dump(mode="json"), tmp_path / "oamn.pt")
    gal = OcclusionGallery.from_weights(path, capacity=3)
    crops = torch.randn(2, 3, 64, 32)
    gal.add(["a", "b"], crops, grades=[0, 0])
    best = gal.match(crops[:1], grade=0, top_k=1)[0][0]
    assert best.id == "a" and best.score == pytest.approx(0.75, abs=1e-5)  # cosine 1 less 0.25
    with pytest.raises(ValueError, match="9 x 9"):
        OAMNModelConfig(similarity_offsets=[[0.0] * 9] * 3)


def test_shipped_checkpoint_carries_its_calibration():
    from pathlib import Path

    from models.reid.oamn import load_oamn

    path = Path(__file__).resolve().parents[1] / "models/weights/oamn_osnet_x0_25_peta.pt"
    _, cfg = load_oamn(path)
    assert cfg.grade_thresholds == pytest.approx((0.5057, 0.8147), abs=1e-4)
    assert cfg.grader_reference_median == pytest.approx(0.356, abs=1e-3)
    offsets = np.asarray(cfg.similarity_offsets)
    assert np.allclose(offsets, offsets.T) and 0 < offsets.min() <= offsets[0, 0] < offsets.max() < 0.5
    gal = OcclusionGallery.from_weights(path, capacity=2)
    assert np.array_equal(gal.offsets, offsets.astype(np.float32))
    crops = torch.randn(2, 3, *cfg.input_size)
    gal.add(["a", "b"], crops, grades=[0, 0])
    best = gal.match(crops[1:], grade=0, top_k=1)[0][0]
    assert best.id == "b" and best.score == pytest.approx(1 - offsets[0, 0], abs=1e-4)


def test_pairs_without_a_computed_version_compare_plain_embeddings(tmp_path):
    """Entries added with only version 0 (the pipeline computes the others for few crops): a query
    graded occluded meets them through version 0 on both sides, less offsets[0, 0]; the gallery's kept
    record of which versions exist gives the same answer as scanning the rows, also after a reload."""
    rng = np.random.default_rng(5)
    dim = 8
    offsets = np.full((NUM_GRADES, NUM_GRADES), 0.05, np.float32)
    gallery = OcclusionGallery(dim, capacity=4, offsets=offsets)
    sparse = np.zeros((1, NUM_GRADES, dim), np.float32)
    sparse[0, 0] = rng.normal(size=dim)
    full = rng.normal(size=(1, NUM_GRADES, dim)).astype(np.float32)
    gallery.add(["sparse"], sparse, grades=[0])
    gallery.add(["full"], full, grades=[0])
    query = rng.normal(size=(1, NUM_GRADES, dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=2, keepdims=True)
    grade = grade_index("bottom", 0.5)
    sims, _, slots = gallery.similarity(query, [grade], plain_fallback=True)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    by_id = {gallery.id_at(int(s)): float(v) for s, v in zip(slots, sims[0], strict=True)}
    assert by_id["sparse"] == pytest.approx(float(query[0, 0] @ unit(sparse[0, 0])) - 0.05, abs=1e-5)
    assert by_id["full"] == pytest.approx(float(query[0, 0] @ unit(full[0, grade])) - 0.05, abs=1e-5)
    scanned = unified_similarity(
        np.ascontiguousarray(query.transpose(1, 0, 2)),
        np.array([grade]),
        gallery._emb[:, :2],
        gallery._grades[:2],
        offsets,
        plain_fallback=True,
    )
    np.testing.assert_allclose(sims[0], scanned[0][slots], atol=1e-6)
    gallery.save(tmp_path / "g")
    again = OcclusionGallery.load(tmp_path / "g")
    np.testing.assert_allclose(again.similarity(query, [grade], plain_fallback=True)[0], sims, atol=1e-6)
