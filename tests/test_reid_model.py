"""OAMN network contract: forward/backward on every backbone and split point, the grader's stopped
gradient, the eq. 8 decision, checkpoint round trip and ONNX export parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backbones import create_backbone, list_backbones
from models.reid.config import OAMNModelConfig
from models.reid.grader import GradeThresholds, OcclusionGrader, decide_grades, occlusion_score
from models.reid.oamn import OAMN, OAMNInference, infer_feature_hw, load_oamn, save_oamn_weights
from models.reid.occlusion_augment import grade_index

HW = (64, 32)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _model(name: str, split: str, classes: int = 3, grader: str = "softmax") -> OAMN:
    bb = create_backbone(name)
    hw = infer_feature_hw(bb, split, HW)
    return OAMN(bb, split, hw, num_classes=classes, grader_pool_hw=(2, 2), grader=grader)


def _cases():
    for name in list_backbones():
        stages = create_backbone(name).stage_names[:-1]
        for split in stages:
            if name not in ("osnet_x0_25", "resnet18") and split != stages[-1]:
                continue  # the big ones only at their default-like split, to keep the suite fast
            yield name, split


@pytest.mark.parametrize(("name", "split"), list(_cases()))
def test_forward_backward_every_backbone_and_split(name, split):
    model = _model(name, split).train()
    x = torch.randn(4, 3, *HW)
    out = model(x)
    assert out.embedding.shape == out.feature.shape == (4, model.embedding_dim)
    assert out.logits.shape == (4, 3) and out.scores.shape == (4, 5)
    assert torch.allclose(out.scores[:, :4].sum(1), torch.ones(4), atol=1e-5)  # the paper's softmax
    assert ((out.scores[:, 4] >= 0.5) & (out.scores[:, 4] <= 1)).all()  # its v: a hidden share <= 1/2
    assert out.m.shape[1] == 1 and out.m.min() >= 0 and out.m.max() <= 1
    l1 = out.logits.logsumexp(1).mean() + out.feature.square().mean() + out.f.mean()
    l2 = (out.scores[:, :4] - 0.25).square().sum()
    (l1 + l2).backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name}@{split}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}@{split}: {pname} has a non-finite gradient"


def test_grader_gradient_never_reaches_encoder_or_mask():
    model = _model("osnet_x0_25", "conv3").train()
    out = model(torch.randn(2, 3, *HW))
    out.scores.square().sum().backward()
    assert all(p.grad is not None for p in model.grader.parameters())
    leaked = [n for n, p in model.named_parameters() if not n.startswith("grader.") and p.grad is not None]
    assert leaked == []
    grader = {id(p) for p in model.grader.parameters()}
    assert not any(id(p) in grader for p in model.encoder_parameters())


def test_freeze_stages_keeps_them_fixed():
    model = _model("osnet_x0_25", "conv3")
    model.freeze_stages(["stem", "conv2"])
    model.train()
    assert not model.backbone.conv1.bn.training and model.backbone.conv3.training
    assert all(not p.requires_grad for p in model.backbone.conv2.parameters())
    with pytest.raises(ValueError, match="can only freeze stages of E"):
        model.freeze_stages(["conv4"])


def test_split_at_last_stage_rejected():
    bb = create_backbone("osnet_x0_25")
    with pytest.raises(ValueError, match="leaves no higher encoder"):
        OAMN(bb, "conv5", (4, 2))


def test_attention_rejects_other_input_size():
    model = _model("osnet_x0_25", "conv3").eval()
    with pytest.raises(ValueError, match="input image size must match"):
        model(torch.randn(1, 3, 128, 64))


def test_decide_grades_thresholds_eq8():
    s = np.array(
        [
            [0.25, 0.25, 0.25, 0.25],  # holistic
            [0.1, 0.6, 0.2, 0.1],  # bottom, 1/4
            [0.05, 0.05, 0.1, 0.8],  # right, 1/2
            [0.5, 0.2, 0.2, 0.1],  # top exactly at 0.5 -> 1/4
            [0.2, 0.0, 0.75, 0.05],
        ]
    )  # left exactly at 0.75 -> 1/2
    assert decide_grades(s).tolist() == [
        0,
        grade_index("bottom", 0.25),
        grade_index("right", 0.5),
        grade_index("top", 0.25),
        grade_index("left", 0.5),
    ]
    strict = GradeThresholds(quarter=0.7, half=0.9)
    assert decide_grades(s, strict).tolist() == [
        0,
        0,
        grade_index("right", 0.25),
        0,
        grade_index("left", 0.25),
    ]
    with pytest.raises(ValueError, match="quarter <= half"):
        GradeThresholds(0.8, 0.6)
    with pytest.raises(ValueError, match=r"scores must be \(B, 4\) or \(B, 5\)"):
        decide_grades(np.zeros((2, 3)))


def test_grader_softmax_fits_targets():
    """With a softmax, eq. 7's optimum is 1/4 everywhere for holistic, s^p = 0.625 for a quarter and 1
    for a half, so eq. 8's thresholds separate the three: check the grader can learn them."""
    torch.manual_seed(0)
    grader = OcclusionGrader(4, (1, 1), kind="softmax")
    feats = torch.eye(4)[:3].view(3, 4, 1, 1) * 5
    target = torch.tensor([[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 1.0, 0, 0]])
    opt = torch.optim.Adam(grader.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        (grader(feats)[:, :4] - target).square().sum(1).mean().backward()
        opt.step()
    assert decide_grades(grader(feats)).tolist() == [0, grade_index("top", 0.25), grade_index("bottom", 0.5)]


def test_visibility_grader_fits_targets_and_says_holistic_explicitly():
    """The visibility grader's sigmoid outputs can reach eq. 7's all-zero holistic target and a
    visible fraction of 1, so a whole crop is graded by v >= visible, not by where s lands."""
    torch.manual_seed(0)
    grader = OcclusionGrader(4, (1, 1), kind="visibility")
    # ten copies of each, so that BatchNorm's running statistics match the batch's
    feats = (torch.eye(4)[:3].view(3, 4, 1, 1) * 5).repeat_interleave(10, 0)
    # whole; top hidden 20 %; bottom hidden 45 % (grader_target: s^p = min(1, 2h), v = 1 - h)
    target = torch.tensor([[0, 0, 0, 0, 1.0], [0.4, 0, 0, 0, 0.8], [0, 0.9, 0, 0, 0.55]])
    target = target.repeat_interleave(10, 0)
    opt = torch.optim.Adam(grader.parameters(), lr=0.05)
    grader.train()
    for _ in range(300):
        opt.zero_grad()
        (grader(feats) - target).square().sum(1).mean().backward()
        opt.step()
    grader.eval()
    with torch.no_grad():
        out = grader(feats)[::10]
    assert (out[0, :4] < 0.2).all() and out[0, 4] > 0.9
    thresholds = GradeThresholds(0.3, 0.7, visible=0.9)
    assert decide_grades(out, thresholds).tolist() == [
        0,
        grade_index("top", 0.25),
        grade_index("bottom", 0.5),
    ]
    assert occlusion_score(out.numpy()).argsort().tolist() == [0, 1, 2]


def test_checkpoint_roundtrip_and_onnx_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from models.backends import check_onnx_parity, export_onnx

    cfg = OAMNModelConfig(backbone="osnet_x0_25", split_at="conv3", input_size=HW, grader_pool_hw=(2, 2))
    model = OAMN.from_config(cfg, num_classes=5).eval()
    path = save_oamn_weights(model, cfg.model_dump(mode="json"), tmp_path / "w.pt")
    loaded, cfg2 = load_oamn(path)
    assert loaded.classifier is None and cfg2 == cfg
    x = torch.randn(3, 3, *HW)
    with torch.no_grad():
        assert torch.allclose(loaded(x).embedding, model(x).embedding, atol=1e-6)
    graph = OAMNInference(loaded)
    onnx_path = export_onnx(graph, x, tmp_path / "m.onnx", output_names=["embedding", "grade"])
    assert check_onnx_parity(graph, onnx_path, torch.randn(7, 3, *HW)) < 1e-4  # dynamic batch
    # the gallery's encoders agree: torch eager and the exported graph on ONNX Runtime
    from models.backends import create_backend
    from models.reid.encoder import BackendEncoder, TorchEncoder

    backend = create_backend(["onnxruntime"], onnx_path=onnx_path, output_names=["embedding", "grade"])
    ort = BackendEncoder(backend)
    emb_ort, scores_ort = ort(x.numpy())
    emb_torch, scores_torch = TorchEncoder(loaded)(x)
    assert emb_ort.shape == (3, loaded.embedding_dim)
    assert np.abs(emb_ort - emb_torch).max() < 1e-4 and np.abs(scores_ort - scores_torch).max() < 1e-4
    with pytest.raises(FileNotFoundError, match="OAMN weights not found"):
        load_oamn(tmp_path / "missing.pt")


def test_export_tool_reports_parity_and_gallery_costs(tmp_path):
    pytest.importorskip("onnxruntime")
    import json

    from amodal.commands.export_reid import main

    cfg = OAMNModelConfig(backbone="osnet_x0_25", split_at="conv3", input_size=HW, grader_pool_hw=(2, 2))
    model = OAMN.from_config(cfg, load_backbone_weights=False).eval()
    path = save_oamn_weights(model, cfg.model_dump(mode="json"), tmp_path / "w.pt")
    out = tmp_path / "export.json"
    args = ["--weights", str(path), "--onnx", str(tmp_path / "m.onnx"), "--json", str(out)]
    args += ["--benchmark-batches", "2", "--gallery-entries", "8", "--repeats", "1"]
    assert main(args + ["--backends", "onnxruntime"]) == 0
    report = json.loads(out.read_text())
    assert report["outputs"] == ["embedding", "grade"] and max(report["parity_max_abs"].values()) < 1e-4
    assert report["timings"]["onnxruntime"][0]["batch"] == 2
    gallery = report["gallery"]["onnxruntime"]
    assert gallery["entries"] == 8 and len(gallery) == 8
    assert all(v > 0 for k, v in gallery.items() if k.endswith("_gallery"))


def test_open_mask_init_starts_near_one_and_still_learns():
    bb = create_backbone("osnet_x0_25")
    model = OAMN(bb, "conv3", infer_feature_hw(bb, "conv3", HW), num_classes=3, mask_init="open").train()
    out = model(torch.randn(4, 3, *HW))
    expected = 1 / (1 + np.exp(-3.0))
    assert torch.allclose(out.m, torch.full_like(out.m, expected), atol=1e-6)
    # the zeroed BatchNorm scale still gets a gradient, so the mask can move away from 0.95
    out.logits.sum().backward()
    last_bn = model.mask_module.weight[-1][1]
    assert last_bn.weight.grad is not None and last_bn.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mask_init must be"):
        OAMN(bb, "conv3", infer_feature_hw(bb, "conv3", HW), mask_init="closed")


def test_calibrated_thresholds_cap_false_occluded_holistic_crops():
    from models.reid.grader import calibrate_thresholds

    rng = np.random.default_rng(0)
    # holistic crops: top score spread over 0.3..0.7 (a softmax cannot fit the all-zero target)
    top = rng.uniform(0.3, 0.7, 200)
    holistic = np.stack([top, (1 - top) / 3, (1 - top) / 3, (1 - top) / 3], 1)
    # occluded copies: bottom 1/4 at s^p ~ 0.8, bottom 1/2 at s^p ~ 0.95
    quarter_s = np.tile([0.1 / 3, 0.8, 0.1 / 3, 0.1 / 3], (50, 1))
    half_s = np.tile([0.05 / 3, 0.95, 0.05 / 3, 0.05 / 3], (50, 1))
    occluded = np.concatenate([quarter_s, half_s])
    truth = np.array([grade_index("bottom", 0.25)] * 50 + [grade_index("bottom", 0.5)] * 50)
    t = calibrate_thresholds(holistic, occluded, truth, max_false_occluded=0.05)
    assert (decide_grades(holistic, t) > 0).mean() <= 0.05 + 1e-9
    assert 0.65 < t.quarter < 0.7  # the 95th percentile of U(0.3, 0.7)
    assert 0.8 < t.half <= 0.95  # splits the two areas: every occluded copy graded exactly
    assert (decide_grades(occluded, t) == truth).all()
    # a grader that already separates holistic crops keeps the paper's 0.5 (never lowered)
    flat = np.full((10, 4), 0.25)
    assert calibrate_thresholds(flat, occluded, truth).quarter == 0.5


def _scores_with_top(top: np.ndarray) -> np.ndarray:
    rest = (1 - top) / 3
    return np.stack([top, rest, rest, rest], 1)


def test_adapted_thresholds_follow_the_cameras_median_score():
    from models.reid.grader import adapt_thresholds

    base = GradeThresholds(0.52, 0.8)
    rng = np.random.default_rng(0)
    # a new camera whose whole crops score 0.1 higher than the reference crops (median 0.35)
    camera = rng.uniform(0.35, 0.55, 201)
    shifted = adapt_thresholds(base, 0.35, _scores_with_top(camera))
    assert shifted.quarter == pytest.approx(0.52 + np.median(camera) - 0.35)
    assert shifted.half == 0.8
    # a fifth of the camera's crops occluded (top score ~0.9): the median barely moves
    occluded = camera.copy()
    occluded[:40] = 0.9
    assert adapt_thresholds(base, 0.35, _scores_with_top(occluded)).quarter < shifted.quarter + 0.03
    # never below the paper's 0.5; half follows a quarter that passes it
    assert adapt_thresholds(base, 0.35, _scores_with_top(np.full(5, 0.26))).quarter == 0.5
    high = adapt_thresholds(base, 0.35, _scores_with_top(np.full(5, 0.7)))
    assert high.quarter == pytest.approx(0.87) and high.half == high.quarter
    with pytest.raises(ValueError, match="at least one crop"):
        adapt_thresholds(base, 0.35, np.zeros((0, 4)))


def test_camera_thresholds_follow_each_cameras_recent_crops(tmp_path):
    from models.reid.camera_thresholds import CameraThresholds

    base = GradeThresholds(0.52, 0.8)
    cams = CameraThresholds(base, reference_median=0.35, window=10, min_crops=4)
    cams.observe("a", _scores_with_top(np.full(3, 0.45)))
    assert cams.get("a") == base and cams.get("never seen") == base  # too few crops yet
    cams.observe("a", _scores_with_top(np.full(1, 0.45)))
    assert cams.seen("a") == 4 and cams.get("a").quarter == pytest.approx(0.62)
    # the window keeps the last 10 crops: the camera's drift is forgotten once it is gone
    cams.observe("a", _scores_with_top(np.full(10, 0.35)))
    assert cams.seen("a") == 10 and cams.get("a").quarter == pytest.approx(0.52)
    cams.observe("b", _scores_with_top(np.full(6, 0.40)))
    assert cams.get("b").quarter == pytest.approx(0.57) and cams.get("a").quarter == pytest.approx(0.52)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        cams.observe("a", np.zeros(4))
    with pytest.raises(ValueError, match="min_crops"):
        CameraThresholds(base, 0.35, window=5, min_crops=6)
    # from a checkpoint: its calibration, or a clear error when it has none
    cfg = OAMNModelConfig(input_size=(64, 32), grader_pool_hw=(2, 2), grade_thresholds=(0.6, 0.9))
    model = OAMN.from_config(cfg, load_backbone_weights=False)
    path = save_oamn_weights(model, cfg.model_dump(mode="json"), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="amodal calibrate-reid"):
        CameraThresholds.from_weights(path)
    cfg.grader_reference_median = 0.3
    path = save_oamn_weights(model, cfg.model_dump(mode="json"), tmp_path / "calibrated.pt")
    loaded = CameraThresholds.from_weights(path, min_crops=1)
    assert loaded.base == GradeThresholds(0.6, 0.9) and loaded.reference_median == 0.3
