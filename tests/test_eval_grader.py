"""The grader's evaluation on MOTChallenge-style footage (``models/reid/grader_eval.py``,
``amodal eval grader``): rank metrics against hand-computed values, the reader on a tiny sequence
written in the test (clipping, skipping, counts, clear errors), and the tool end to end with a
small random OAMN checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.reid.grader import occlusion_score
from models.reid.grader_eval import (
    MotDataError,
    area_class_from_grades,
    area_class_from_visibility,
    crop_box,
    find_sequences,
    grader_metrics,
    iter_crop_batches,
    read_frame,
    read_ground_truth,
    roc_auc,
    select_boxes,
    spearman,
)

HW = (240, 320)  # frame height, width
# frame, id, left, top, width, height, conf, class, visibility (MOT boxes are 1-based)
GT_ROWS = [
    (1, 1, 21, 31, 40, 100, 1, 1, 1.0),  # whole, red
    (1, 2, 101, 41, 40, 120, 1, 1, 0.3),
    (1, 3, 161, 41, 40, 100, 0, 1, 1.0),  # conf 0: not considered
    (1, 4, 221, 41, 30, 80, 1, 2, 0.9),  # person on vehicle
    (1, 5, 261, 41, 30, 80, 1, 7, 0.5),  # static person
    (1, 6, 291, 150, 60, 120, 1, 1, 0.6),  # past the right and bottom edges: 30 x 91 inside
    (1, 7, 200, 20, 3, 6, 1, 1, 0.8),  # tiny: skipped
    (2, 1, 21, 31, 40, 100, 1, 1, 0.9),
    (2, 2, 101, 41, 40, 120, 1, 1, 0.5),
    (2, 6, -19, 50, 40, 100, 1, 1, 0.4),  # past the left edge: 20 x 100 inside
    (3, 1, 21, 31, 40, 100, 1, 1, 0.75),
    (3, 2, 101, 41, 40, 120, 1, 1, 0.2),
    (3, 8, 400, 10, 30, 80, 1, 1, 0.95),  # outside the frame: skipped
]
# what the default reading (class 1, conf != 0) plants
COUNTS = {
    "gt_rows": 13,
    "not_considered": 1,
    "other_class": 2,
    "candidates": 10,
    "selected": 10,
    "frames": 3,
    "skipped_small": 2,
    "clipped": 2,
    "boxes": 8,
    "positives": 5,  # visibility 0.3, 0.6, 0.5, 0.4, 0.2
    "negatives": 3,
}
# truth rows of the area confusion: holistic (1.0, 0.9), 1/4 (0.75), 1/2 (0.3, 0.6, 0.5, 0.4, 0.2)
TRUE_AREA_COUNTS = [2, 1, 5]
RED = (0, 0, 255)


def _write_sequence(
    root: Path, rows=GT_ROWS, image_dir: str = "img1", ext: str = ".jpg", seqinfo: bool = False
) -> Path:
    (root / "gt").mkdir(parents=True)
    (root / image_dir).mkdir()
    rng = np.random.default_rng(0)
    for frame in sorted({r[0] for r in rows}):
        image = np.full((*HW, 3), 90, dtype=np.uint8)
        for r in rows:
            if r[0] != frame:
                continue
            x0, y0 = max(0, r[2] - 1), max(0, r[3] - 1)
            colour = RED if r[1] == 1 else tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(image, (x0, y0), (r[2] - 1 + r[4] - 1, r[3] - 1 + r[5] - 1), colour, -1)
        cv2.imwrite(str(root / image_dir / f"{frame:06d}{ext}"), image)
    (root / "gt" / "gt.txt").write_text("".join(",".join(str(v) for v in r) + "\n" for r in rows))
    if seqinfo:
        (root / "seqinfo.ini").write_text(
            f"[Sequence]\nname={root.name}\nimDir={image_dir}\nframeRate=30\nseqLength=3\n"
            f"imWidth={HW[1]}\nimHeight={HW[0]}\nimExt={ext}\n"
        )
    return root


# ------------------------------------------------------------------------------------------ metrics


def test_auc_counts_ties_as_half():
    # pairs (positive, negative): 0.4>0.1, 0.4=0.4 (half), 0.8>0.1, 0.8>0.4 -> 3.5 / 4
    assert roc_auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 1, 0, 1])) == pytest.approx(0.875)
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0])) == 0.0
    assert roc_auc(np.full(5, 0.3), np.array([0, 1, 0, 1, 1])) == 0.5
    assert roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None
    assert roc_auc(np.array([0.1, 0.2]), np.array([0, 0])) is None
    assert roc_auc(np.zeros(0), np.zeros(0, dtype=bool)) is None


def test_spearman_uses_average_ranks():
    # ranks x = 1, 2.5, 2.5, 4 and y = 1, 2, 3, 4: cov 4.5, var 4.5 and 5 -> 4.5 / sqrt(22.5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert spearman([1, 5, 9, 20], [0.1, 0.2, 0.3, 0.9]) == pytest.approx(1.0)
    assert spearman([1, 5, 9, 20], [0.9, 0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([3, 3, 3], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [7, 7, 7]) is None
    assert spearman([1], [2]) is None


def test_area_classes_from_visibility_and_grades():
    # hidden share 0, 0.1, 1/8, 0.25, 3/8, 0.5, 1 -> holistic below 1/8, 1/4 below 3/8, else 1/2
    vis = np.array([1.0, 0.9, 0.875, 0.75, 0.625, 0.5, 0.0])
    assert area_class_from_visibility(vis).tolist() == [0, 0, 1, 1, 2, 2, 2]
    # grades: 0 holistic; top-1/4, top-1/2, bottom-1/4, right-1/2
    assert area_class_from_grades(np.array([0, 1, 2, 3, 8])).tolist() == [0, 1, 2, 1, 2]
    with pytest.raises(ValueError, match="grades must be in"):
        area_class_from_grades(np.array([9]))


def test_grader_metrics_by_hand():
    vis = np.array([1.0, 0.95, 0.8, 0.6, 0.3])  # truth: holistic, holistic, 1/4, 1/2, 1/2
    occ = np.array([0.1, 0.4, 0.3, 0.4, 0.9])
    grades = np.array([0, 1, 0, 1, 2])  # predicted: holistic, 1/4, holistic, 1/4, 1/2
    m = grader_metrics(occ, grades, vis)
    assert (m["boxes"], m["positives"], m["negatives"]) == (5, 2, 3)
    # positives 0.4, 0.9 against negatives 0.1, 0.4, 0.3: 0.4 -> 1 + 0.5 + 1, 0.9 -> 3; 5.5 / 6
    assert m["auc"] == pytest.approx(5.5 / 6)
    assert m["spearman"] == pytest.approx(spearman(occ, 1 - vis))
    assert m["area_confusion"] == [[1, 1, 0], [1, 0, 0], [0, 1, 1]]
    assert m["area_recall"] == {"holistic": 0.5, "1/4": 0.0, "1/2": 0.5}
    assert m["area_accuracy"] == pytest.approx(2 / 5)
    assert m["occluded_found"] == 1.0 and m["false_alarm"] == pytest.approx(1 / 3)
    assert m["mean_occlusion_score"]["occluded"] == pytest.approx(0.65)
    empty = grader_metrics(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0))
    assert empty["auc"] is None and empty["area_accuracy"] is None and empty["occluded_found"] is None
    assert empty["area_recall"] == {"holistic": None, "1/4": None, "1/2": None}


def test_occlusion_score_reads_the_visible_fraction():
    five = np.array([[0.1, 0.2, 0.0, 0.0, 0.8], [0.0, 0.9, 0.0, 0.0, 0.25]])
    assert occlusion_score(five) == pytest.approx([0.2, 0.75])
    four = np.array(
        [[0.25, 0.25, 0.25, 0.25], [0.1, 1.0, 0.0, 0.0]]
    )  # the paper's softmax: a = (s - 1/4) / 3/4 / 2
    assert occlusion_score(four) == pytest.approx([0.0, 0.5])
    with pytest.raises(ValueError):
        occlusion_score(np.zeros((2, 3)))


def test_reader_filters_clips_and_skips(tmp_path):
    seq = find_sequences(_write_sequence(tmp_path / "SEQ-A"))[0]  # a sequence directory itself
    assert seq.name == "SEQ-A" and seq.frame_path(2) == tmp_path / "SEQ-A/img1/000002.jpg"
    gt = read_ground_truth(seq.gt_path)
    assert (gt.rows, gt.not_considered, gt.other_class, len(gt)) == (13, 1, 2, 10)
    assert set(gt.classes.tolist()) == {1} and 3 not in gt.ids.tolist()
    assert len(read_ground_truth(seq.gt_path, classes=(1, 2, 7))) == 12

    frame1 = read_frame(seq, 1)
    assert frame1.shape == (*HW, 3)
    whole = crop_box(frame1, gt.boxes[0])
    assert whole.shape == (100, 40, 3)
    assert np.abs(whole.reshape(-1, 3).mean(0) - RED).max() < 8  # exactly the planted person (jpeg)
    right = crop_box(frame1, gt.boxes[gt.ids.tolist().index(6)])
    assert right.shape == (91, 30, 3)  # the part inside the frame, as a detector would clip it
    assert crop_box(frame1, gt.boxes[gt.ids.tolist().index(7)]) is None  # 6 x 3 px
    assert crop_box(frame1, (400, 10, 30, 80)) is None  # outside
    assert crop_box(read_frame(seq, 2), (-19, 50, 40, 100)).shape == (100, 20, 3)

    batches = list(iter_crop_batches(seq, gt, (64, 32), batch_size=3))
    rows = np.concatenate([b.rows for b in batches])
    skipped = np.concatenate([b.skipped for b in batches])
    clipped = np.concatenate([b.clipped for b in batches])
    assert [len(b.rows) for b in batches] == [3, 3, 2]
    assert all(b.crops.shape == (len(b.rows), 64, 32, 3) and b.crops.dtype == np.uint8 for b in batches)
    assert sorted([*rows, *skipped]) == list(range(len(gt)))  # every box once
    assert sorted(gt.ids[skipped].tolist()) == [7, 8]
    assert sorted(gt.ids[clipped].tolist()) == [6, 6]
    assert sorted(gt.visibility[rows].tolist()) == sorted([1.0, 0.3, 0.6, 0.9, 0.5, 0.4, 0.75, 0.2])


def test_subsampling_is_deterministic(tmp_path):
    seq = find_sequences(_write_sequence(tmp_path / "SEQ-A"))[0]
    gt = read_ground_truth(seq.gt_path)
    assert sorted(set(select_boxes(gt, frame_step=2).frames.tolist())) == [1, 3]
    assert len(select_boxes(gt, frame_step=2)) == 7
    a = select_boxes(gt, frame_step=2, max_boxes=3, seed=0)
    b = select_boxes(gt, frame_step=2, max_boxes=3, seed=0)
    assert len(a) == 3 and a.ids.tolist() == b.ids.tolist() and a.frames.tolist() == sorted(a.frames)
    assert set(a.frames.tolist()) <= {1, 3} and a.rows == gt.rows
    assert len(select_boxes(gt, max_boxes=50)) == len(gt)
    with pytest.raises(ValueError, match="frame_step"):
        select_boxes(gt, frame_step=0)


def test_data_dir_seqinfo_and_detector_copies(tmp_path):
    _write_sequence(tmp_path / "data/MOT17-02-DPM")
    _write_sequence(tmp_path / "data/MOT17-02-FRCNN")
    _write_sequence(tmp_path / "data/OTHER", image_dir="frames", ext=".png", seqinfo=True)
    (tmp_path / "data/MOT17-01-DPM/img1").mkdir(parents=True)  # a test sequence: no gt
    seqs = find_sequences(tmp_path / "data")
    assert [s.name for s in seqs] == ["MOT17-02-DPM", "OTHER"]
    assert len(find_sequences(tmp_path / "data", keep_detector_copies=True)) == 3
    other = seqs[1]
    assert other.frame_path(1) == tmp_path / "data/OTHER/frames/000001.png"
    assert other.image_hw == HW and other.frame_rate == 30
    assert read_frame(other, 3).shape == (*HW, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MotDataError, match="no MOTChallenge sequences"):
        find_sequences(tmp_path / "empty")


def test_clear_errors_for_mot15_ground_truth_and_missing_frames(tmp_path):
    root = _write_sequence(tmp_path / "SEQ-A")
    gt_path = root / "gt/gt.txt"
    good = gt_path.read_text()
    gt_path.write_text("1,1,21,31,40,100,1\n")  # MOT15/16 style: no class, no visibility
    with pytest.raises(MotDataError, match=r"gt\.txt:1: 7 columns.*visibility"):
        read_ground_truth(gt_path)
    gt_path.write_text(good + "\n4,1,21,31,40,100,1,-1,-1,-1\n")  # MOT15 world coordinates
    with pytest.raises(MotDataError, match=r"gt\.txt:15: visibility -1 is not in \[0, 1\]"):
        read_ground_truth(gt_path)
    gt_path.write_text(good)
    (root / "img1/000002.jpg").unlink()
    seq = find_sequences(root)[0]
    with pytest.raises(MotDataError, match=r"frame 2 is missing: .*000002\.jpg"):
        list(iter_crop_batches(seq, read_ground_truth(gt_path), (64, 32)))


# ------------------------------------------------------------------------------------------ the tool


@pytest.fixture
def tiny_oamn(tmp_path) -> Path:
    from models.reid.config import OAMNModelConfig
    from models.reid.oamn import OAMN, save_oamn_weights

    torch.manual_seed(0)
    cfg = OAMNModelConfig(backbone="osnet_x0_25", input_size=(64, 32), grader_pool_hw=(2, 2))
    model = OAMN.from_config(cfg, load_backbone_weights=False).eval()
    return save_oamn_weights(model, cfg.model_dump(mode="json"), tmp_path / "oamn.pt")


def test_tool_end_to_end(tmp_path, tiny_oamn):
    from amodal.commands.eval_grader import main

    for name in ("SEQ-A", "SEQ-B"):
        _write_sequence(tmp_path / "data" / name)
    out = tmp_path / "grader.json"
    args = ["--weights", str(tiny_oamn), "--data", str(tmp_path / "data"), "--json", str(out)]
    assert main([*args, "--threads", "1", "--batch-size", "3"]) == 0
    report = json.loads(out.read_text())
    assert set(report["sequences"]) == {"SEQ-A", "SEQ-B"}
    sections = [*report["sequences"].values(), report["overall"]]
    for seq in report["sequences"].values():
        assert {k: seq[k] for k in COUNTS} == COUNTS
    assert {k: report["overall"][k] for k in COUNTS} == {k: 2 * v for k, v in COUNTS.items()}
    assert report["overall"]["num_sequences"] == 2 and report["score_columns"] in (4, 5)
    for m in sections:
        cm = np.array(m["area_confusion"])
        assert cm.shape == (3, 3) and cm.sum() == m["boxes"]
        assert cm.sum(1).tolist() == [v * m["boxes"] // 8 for v in TRUE_AREA_COUNTS]  # the truth side
        assert m["auc"] is None or 0.0 <= m["auc"] <= 1.0
        assert m["spearman"] is None or -1.0 <= m["spearman"] <= 1.0
        assert 0.0 <= m["occluded_found"] <= 1.0 and 0.0 <= m["false_alarm"] <= 1.0
        assert m["area_accuracy"] is not None and 0.0 <= m["area_accuracy"] <= 1.0
        inside = m["inside_frame"]  # the boxes past a frame edge left out
        assert inside["boxes"] == m["boxes"] - m["clipped"] and inside["boxes"] > 0
        assert inside["positives"] == m["positives"] - m["clipped"]  # both planted clipped boxes are
        assert inside["negatives"] == m["negatives"]  # occluded (visibility 0.6, 0.4)
    assert report["grade_thresholds"] == [0.5, 0.75] and report["input_size"] == [64, 32]

    # subsampled, every class, other thresholds
    extra = ["--classes", "1", "2", "7", "--max-boxes-per-seq", "4", "--thresholds", "0.6", "0.9"]
    extra += ["--grade-visible", "0.8"]
    assert main([*args, "--threads", "1", *extra]) == 0
    report = json.loads(out.read_text())
    for seq in report["sequences"].values():
        assert seq["candidates"] == 12 and seq["selected"] == 4 and seq["other_class"] == 0
        assert seq["boxes"] + seq["skipped_small"] == 4
        assert np.array(seq["area_confusion"]).sum() == seq["boxes"]
    assert report["grade_thresholds"] == [0.6, 0.9] and report["grade_visible"] == 0.8
    assert report["classes"] == [1, 2, 7] and report["max_boxes_per_seq"] == 4


def test_tool_clear_errors(tmp_path, tiny_oamn):
    from amodal.commands.eval_grader import main

    data = _write_sequence(tmp_path / "data/SEQ-A").parent
    out = ["--json", str(tmp_path / "g.json"), "--threads", "1"]
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--weights", str(tmp_path / "missing.pt"), "--data", str(data), *out])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no MOTChallenge sequences"):
        main(["--weights", str(tiny_oamn), "--data", str(tmp_path / "empty"), *out])
    (data / "SEQ-A/gt/gt.txt").write_text("1,1,21,31,40,100,1,1\n")
    with pytest.raises(SystemExit, match=r"gt\.txt:1: 8 columns"):
        main(["--weights", str(tiny_oamn), "--data", str(data), *out])
