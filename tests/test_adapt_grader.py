"""Self-supervised adaptation of the occlusion grader to a site (``models/reid/site_adaptation.py``,
``amodal adapt-grader``): box geometry on hand-made boxes, the sampling and the track split, and
the tool end to end on a video made in the test, whose tracks file plants a known number of
occluded, clear, partly covered and truncated boxes. The network is tiny and random, so only
invariants are checked, never that adaptation improves the grader."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from models.data.reid_datasets import normalize
from models.data.transforms import resize
from models.reid.grader import VISIBLE, calibrate_visible_threshold
from models.reid.occlusion_augment import LOCATIONS
from models.reid.site_adaptation import (
    AdaptationError,
    Candidate,
    LabelCounts,
    SiteCrops,
    adapt_grader,
    box_occlusion,
    label_boxes,
    pseudo_label,
    sample_boxes,
    split_tracks,
)

torch.set_num_threads(1)

HW = (240, 320)  # frame height, width
FRAMES = 40
FPS = 10
TRACK_STEP = 2


# ------------------------------------------------------------------------------------- box geometry


def test_box_half_covered_from_below():
    boxes = [[100, 100, 140, 200], [90, 150, 150, 260]]  # the second is nearer: its y2 is larger
    back, front = box_occlusion(boxes, (300, 400))
    assert back.covered == pytest.approx(0.5) and LOCATIONS[back.location] == "bottom"
    assert not back.truncated
    assert front.covered == 0.0 and front.location == -1 and not front.truncated


def test_box_covered_from_a_side_and_equal_bottoms():
    back, front = box_occlusion([[100, 100, 140, 200], [120, 80, 200, 210]], (300, 400))
    assert back.covered == pytest.approx(0.5) and LOCATIONS[back.location] == "right"
    assert front.covered == 0.0
    # the same bottom edge: neither is in front of the other
    a, b = box_occlusion([[100, 100, 140, 200], [120, 80, 200, 200]], (300, 400))
    assert a.covered == 0.0 and b.covered == 0.0


def test_box_at_the_frame_edge_is_truncated():
    covers = box_occlusion(
        [[0, 10, 30, 90], [300, 10, 399, 90], [150, 10, 190, 299], [150, 10, 190, 90]], (300, 400)
    )
    assert [c.truncated for c in covers] == [True, True, True, False]
    # a detector's box of a person cut by the edge ends a few pixels inside: 1.5 % of the frame's
    # height is 4.5 px here, of its width 6 px
    near = [[150, 10, 190, 296], [150, 10, 190, 295], [5, 10, 40, 90], [7, 10, 40, 90]]
    assert [c.truncated for c in box_occlusion(near, (300, 400))] == [True, False, True, False]
    # and never less than 2 px
    assert [c.truncated for c in box_occlusion(near[:2], (300, 400), border=0.0)] == [False, False]
    assert box_occlusion([[150, 10, 190, 298]], (300, 400), border=0.0)[0].truncated
    assert box_occlusion(np.zeros((0, 4)), (300, 400)) == []
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_occlusion([[1, 2, 3]], (300, 400))


def test_pseudo_labels_and_counts():
    boxes = np.array(
        [
            [100, 100, 140, 200],  # half covered by the next: occluded
            [90, 150, 150, 260],  # in front: clear
            [200, 100, 240, 200],  # a fifth covered by the next: partly covered, unused
            [200, 180, 240, 280],
            [0, 10, 30, 90],  # at the edge: truncated
            [300, 10, 302, 12],  # 2 x 2 px: small
        ],
        dtype=np.float64,
    )
    counts = LabelCounts()
    out = label_boxes(7, 3, [1, 2, 3, 4, 5, 6], boxes, (300, 400), counts)
    assert counts.as_dict() == {
        "boxes": 6,
        "small": 1,
        "truncated": 1,
        "occluded": 1,
        "clear": 2,
        "partial": 1,
        "same_box": 0,
        "unsure": 0,
    }
    assert [(c.track_id, c.label) for c in out] == [(1, "occluded"), (2, "clear"), (4, "clear")]
    assert out[0].key == 7 and out[0].frame == 3 and LOCATIONS[out[0].location] == "bottom"
    covers = box_occlusion(boxes, (300, 400))
    assert pseudo_label(covers[2]) is None and pseudo_label(covers[2], min_covered=0.1) == "occluded"


def test_duplicates_and_unsure_clear_boxes_are_not_used():
    boxes = np.array(
        [
            [100, 100, 140, 200],  # a second detection of the next box's person (IoU 0.85)
            [102, 102, 142, 204],  # in front of its duplicate: clear
            [300, 50, 316, 120],  # nothing in front, but the detector is unsure: a bollard
            [200, 100, 240, 200],  # nothing in front, confidence unknown: clear
        ],
        dtype=np.float64,
    )
    covers = box_occlusion(boxes, (300, 400))
    assert covers[0].front_iou == pytest.approx(38 * 98 / (40 * 100 + 40 * 102 - 38 * 98))
    assert covers[0].covered > 0.9 and covers[1].front_iou == 0.0
    counts = LabelCounts()
    out = label_boxes(0, 0, [1, 2, 3, 4], boxes, (300, 400), counts, confidences=[0.9, 0.9, 0.3, None])
    assert [(c.track_id, c.label) for c in out] == [(2, "clear"), (4, "clear")]
    assert (counts.same_box, counts.unsure, counts.clear, counts.occluded) == (1, 1, 2, 0)
    # both rules are the caller's to move: a stricter IoU, a laxer confidence
    assert pseudo_label(covers[0], max_front_iou=0.9) == "occluded"
    assert pseudo_label(covers[2], confidence=0.3) is None
    assert pseudo_label(covers[2], confidence=0.3, min_confidence=0.25) == "clear"


def _candidate(frame: int, track: int, label: str) -> Candidate:
    return Candidate(0, frame, track, (0.0, 0.0, 1.0, 1.0), 0.5 if label == "occluded" else 0.0, 1, label)


def test_sampling_step_and_cap():
    cands = [_candidate(f, 1, "clear") for f in range(10)] + [
        _candidate(f, 2, "occluded") for f in (0, 1, 4, 5)
    ]
    chosen = sample_boxes(cands, track_step=3, max_crops=100)
    assert [c.frame for c in chosen if c.track_id == 1] == [0, 3, 6, 9]
    assert [c.frame for c in chosen if c.track_id == 2] == [0, 4]
    capped = sample_boxes(cands, track_step=1, max_crops=3, seed=5)
    assert sum(c.label == "clear" for c in capped) == 3 and sum(c.label == "occluded" for c in capped) == 3
    assert capped == sample_boxes(cands, track_step=1, max_crops=3, seed=5)  # seeded


def test_split_keeps_occlusions_on_both_sides():
    for seed in range(5):
        check = split_tracks([1, 3], [1, 2, 3, 4, 5], seed=seed)
        assert len(check & {1, 3}) == 1 and len(check & {2, 4, 5}) == 1
    assert split_tracks([1], [1, 2], seed=0) == frozenset()  # one track per group: nothing to hold out


# ------------------------------------------------------------------------------ the planted footage


def _boxes(f: int) -> dict[int, list[int]]:
    """Boxes (x1, y1, x2, y2, clipped to the frame) of frame ``f``. Two people stand still (1, 3);
    two walk in from the frame edges and stop in front of them (2, 4: lower in the frame); one stands
    apart (5), detected twice (6: its duplicate, a little lower); a bollard the detector is unsure
    of stands apart (7, ``CONFIDENCE``). Every edge of a box with a box in front is a multiple of
    its grid cells (32 x 96 px boxes, 2 x 3 px cells), so the covered share is the exact area ratio."""
    x2 = min(8 * f - 16, 56)
    x4 = max(300 - 8 * f, 196)
    return {
        1: [60, 60, 92, 156],
        2: [max(0, x2), 111, min(HW[1], x2 + 40), 231],
        3: [200, 60, 232, 156],
        4: [max(0, x4), 111, min(HW[1], x4 + 40), 231],
        5: [140, 20, 170, 100],
        6: [142, 22, 172, 103],
        7: [280, 20, 296, 80],
    }


#: the detector's confidence per track (the bollard's is below MIN_CLEAR_CONFIDENCE)
CONFIDENCE = {1: 0.9, 2: 0.9, 3: 0.9, 4: 0.9, 5: 0.8, 6: 0.7, 7: 0.35}


def _iou(a: list[int], b: list[int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _expected_label(box: list[int], others: list[list[int]], confidence: float) -> str:
    """The label by the continuous geometry: area of the box under boxes with a larger bottom."""
    x1, y1, x2, y2 = box
    if x1 <= 0.015 * HW[1] or y1 <= 0.015 * HW[0] or x2 >= HW[1] * 0.985 or y2 >= HW[0] * 0.985:
        return "truncated"
    fronts = [o for o in others if o[3] > y2]
    if any(_iou(box, o) >= 0.5 for o in fronts):
        return "same_box"
    covered = 0.0
    for ox1, oy1, ox2, oy2 in fronts:  # the planted fronts never overlap each other
        covered += max(0, min(x2, ox2) - max(x1, ox1)) * max(0, min(y2, oy2) - max(y1, oy1))
    share = covered / ((x2 - x1) * (y2 - y1))
    if share >= 0.3:
        return "occluded"
    if share > 0:
        return "partial"
    return "clear" if confidence >= 0.5 else "unsure"


def _expected():
    """Box counts, the boxes sampled every TRACK_STEP frames per track, by label."""
    counts = dict.fromkeys(LabelCounts().as_dict(), 0)
    last: dict[int, int] = {}
    sampled: dict[str, list[tuple[int, int]]] = {"occluded": [], "clear": []}
    for f in range(FRAMES):
        boxes = _boxes(f)
        for track, box in boxes.items():
            label = _expected_label(box, [b for t, b in boxes.items() if t != track], CONFIDENCE[track])
            counts["boxes"] += 1
            counts[label] += 1
            if label in sampled and (track not in last or f - last[track] >= TRACK_STEP):
                last[track] = f
                sampled[label].append((f, track))
    return counts, sampled


def _draw(f: int, background: np.ndarray) -> np.ndarray:
    image = background.copy()
    colours = {1: (40, 40, 200), 2: (200, 60, 40), 3: (40, 180, 60), 4: (180, 40, 180), 5: (30, 200, 220)}
    boxes = _boxes(f)
    x1, y1, x2, y2 = boxes.pop(7)
    cv2.rectangle(image, (x1 + 4, y1), (x2 - 5, y2 - 1), (90, 90, 90), -1)  # the bollard
    del boxes[6]  # the second detection of person 5
    for track in sorted(boxes, key=lambda t: boxes[t][3]):  # the nearest person last
        x1, y1, x2, y2 = boxes[track]
        head = (x2 - x1) // 3
        cx = (x1 + x2) // 2
        cv2.circle(image, (cx, y1 + head), head, (150, 170, 210), -1)
        cv2.rectangle(image, (x1, y1 + 2 * head), (x2 - 1, y2 - 1), colours[track], -1)
        cv2.line(image, (cx, y1 + 2 * head), (cx, y2 - 1), (20, 20, 20), 2)
    return image


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(60, 200, (*HW, 3), dtype=np.uint8), (5, 5), 0)
    video = root / "rec.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = HW[1], HW[0], "yuv420p"
        stream.options = {"qscale": "3"}
        for f in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_draw(f, background), format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    lines = []
    for f in range(FRAMES):
        tracks = [
            {"track_id": t, "xyxy": b, "confidence": CONFIDENCE[t], "state": "updated"}
            for t, b in _boxes(f).items()
        ]
        line = {"type": "tracks", "stream_id": "cam1", "seq": f, "pts": f / FPS, "frame_size": list(HW)}
        lines.append({**line, "tracks": tracks})
        if f == 5:
            lines.append(lines[-1])  # a graph that fans in writes a frame twice
        if f % 10 == 0:  # another camera in the same file
            other = [{"track_id": 1, "xyxy": [10, 10, 50, 120]}]
            lines.append({**line, "stream_id": "cam2", "frame_size": [480, 640], "tracks": other})
    # a line past the end of the recording: matches no frame
    lines.append(
        {**lines[-1], "seq": 99, "pts": 10.0, "tracks": [{"track_id": 9, "xyxy": [250, 150, 280, 200]}]}
    )
    lines.append({"type": "track_end", "stream_id": "cam1", "seq": 99, "tracks": [{"track_id": 1}]})
    lines.append(
        {"type": "end_of_stream", "stream_id": "cam1", "reason": "finished", "detail": "", "lost": 0}
    )
    tracks = root / "events.jsonl"
    tracks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return video, tracks


def _oamn(path: Path, grader: str = "visibility") -> Path:
    from models.reid.config import OAMNModelConfig
    from models.reid.oamn import OAMN, save_oamn_weights

    torch.manual_seed(0)
    cfg = OAMNModelConfig(backbone="osnet_x0_25", input_size=(64, 32), grader_pool_hw=(2, 2), grader=grader)
    model = OAMN.from_config(cfg, load_backbone_weights=False).eval()
    return save_oamn_weights(model, cfg.model_dump(mode="json"), path, {"seed": 3})


@pytest.fixture(scope="module")
def tiny_oamn(tmp_path_factory) -> Path:
    return _oamn(tmp_path_factory.mktemp("weights") / "oamn.pt")


def test_tool_end_to_end(tmp_path, footage, tiny_oamn):
    from amodal.commands.adapt_grader import main
    from models.reid.oamn import load_oamn

    video, tracks = footage
    out, report_path = tmp_path / "site.pt", tmp_path / "report.json"
    args = ["--weights", str(tiny_oamn), "--video", str(video), "--tracks", str(tracks), "--out", str(out)]
    args += ["--json", str(report_path), "--stream", "cam1", "--steps", "6", "--track-step", str(TRACK_STEP)]
    assert main([*args, "--threads", "1", "--seed", "1"]) == 0
    report = json.loads(report_path.read_text())

    counts, sampled = _expected()
    assert counts == {
        **{"boxes": 280, "small": 0, "truncated": 7, "occluded": 60, "clear": 127, "partial": 6},
        **{"same_box": 40, "unsure": 40},
    }
    # the boxes are labelled from the tracks file alone: the line past the end adds a clear box of
    # track 9 (its line gives no confidence, so none is checked), sampled but cut from no frame
    assert report["boxes"] == {**counts, "boxes": 281, "clear": 128}
    assert report["sampled"] == {"occluded": len(sampled["occluded"]), "clear": len(sampled["clear"]) + 1}
    assert report["crops"]["occluded"] == len(sampled["occluded"]) == 30
    assert report["crops"]["clear"] == len(sampled["clear"]) == 65
    lines = report["lines"]
    assert lines["tracks_lines"] == FRAMES + 1 and lines["matched"] == FRAMES and lines["unmatched"] == 1
    assert lines["duplicates"] == 1 and lines["other_streams"] == 4 and lines["other_types"] == 2
    assert lines["chosen_unmatched"] == 1 and lines["no_pts"] == 0
    crops = report["crops"]
    parts = ("adapt", "calibrate", "check")
    assert sum(crops[p]["occluded"] for p in parts) == 30
    assert sum(crops[p]["clear"] for p in parts) == 65
    assert crops["adapt"]["occluded"] > 0 and crops["check"]["occluded"] > 0  # two occluded tracks
    # calibration splits the tracks check left like check does: the one occluded track left (1 or 3
    # stand behind 2 and 4) is a group of one and stays to adapt on; one of the two others calibrates
    calibrate, check = set(report["calibrate_tracks"]), set(report["check_tracks"])
    assert len(calibrate) == 1 and not calibrate & {1, 3} and not calibrate & check
    assert crops["calibrate"] == {"occluded": 0, "clear": sum(t in calibrate for _, t in sampled["clear"])}
    assert (report["before_all_crops"]["occluded"], report["before_all_crops"]["clear"]) == (30, 65)
    for part in ("before", "after"):
        m = report[part]
        assert (m["occluded"], m["clear"]) == (crops["check"]["occluded"], crops["check"]["clear"])
        assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["clear_graded_occluded"] <= 1.0
        assert m["spearman"] is None or -1.0 <= m["spearman"] <= 1.0
    for which in ("first", "last"):
        assert all(np.isfinite(v) for v in report["losses"][which].values())
        assert set(report["losses"][which]) == {"total", "rank", "bound", "location", "clear", "distill"}

    # the checkpoint: loads, only the grader changed, the threshold is the calibration tracks' clear crops
    model, cfg = load_oamn(out)
    original, cfg0 = load_oamn(tiny_oamn)
    assert cfg.grade_thresholds == cfg0.grade_thresholds and cfg.grader == "visibility"
    new, old = model.state_dict(), original.state_dict()
    assert new.keys() == old.keys()
    for key in old:
        if not key.startswith("grader."):
            assert torch.equal(new[key], old[key]), key
    assert any(not torch.equal(new[k], old[k]) for k in old if k.startswith("grader."))
    assert 0.5 <= cfg.visible_threshold <= 1.0
    adapt_clear = [(f, t) for f, t in sampled["clear"] if t not in check | calibrate]
    assert len(adapt_clear) == crops["adapt"]["clear"]
    calibrate_clear = [(f, t) for f, t in sampled["clear"] if t in calibrate]
    frames = {}
    with av.open(str(video)) as container:
        for f, frame in enumerate(container.decode(video=0)):
            frames[f] = frame.to_ndarray(format="bgr24")
    images = []
    for f, t in calibrate_clear:
        x1, y1, x2, y2 = _boxes(f)[t]
        images.append(resize(np.ascontiguousarray(frames[f][y1:y2, x1:x2]), (64, 32))[..., ::-1])
    x = normalize(torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2))
    with torch.no_grad():
        v = model.grader(model.masked_features(x))[:, VISIBLE].numpy()
    assert cfg.visible_threshold == pytest.approx(calibrate_visible_threshold(v), abs=1e-5)
    assert cfg.grader_reference_median == pytest.approx(float(np.median(v)), abs=1e-5)
    assert report["visible_threshold"]["after"] == pytest.approx(cfg.visible_threshold)

    extra = torch.load(out, map_location="cpu", weights_only=True)["extra"]
    assert extra["seed"] == 3  # the checkpoint's own extra is kept
    assert extra["adaptation"]["video"] == "rec.mp4" and extra["adaptation"]["steps"] == 6
    assert extra["adaptation"]["crops"] == report["crops"] and "after" in extra["adaptation"]


def test_tool_clear_errors(tmp_path, footage, tiny_oamn):
    from amodal.commands.adapt_grader import main

    video, tracks = footage
    base = ["--video", str(video), "--out", str(tmp_path / "o.pt"), "--steps", "1", "--threads", "1"]
    args = ["--weights", str(tiny_oamn), *base]
    with pytest.raises(SystemExit, match=r"several streams \['cam1', 'cam2'\]: .*--stream"):
        main([*args, "--tracks", str(tracks)])
    with pytest.raises(SystemExit, match=r"no tracks of stream 'cam9'"):
        main([*args, "--tracks", str(tracks), "--stream", "cam9"])

    text = tracks.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*text[:2], '{"type": "tracks", "stream_id": "cam1"', *text[3:]]) + "\n")
    with pytest.raises(SystemExit, match=r"broken\.jsonl:3: not a JSON line"):
        main([*args, "--tracks", str(broken), "--stream", "cam1"])
    record = json.loads(text[0])
    record["tracks"][1]["xyxy"] = [1, 2, 3]
    broken.write_text("\n".join([text[1], json.dumps(record)]) + "\n")
    with pytest.raises(SystemExit, match=r"broken\.jsonl:2: malformed tracks line: track 1: xyxy"):
        main([*args, "--tracks", str(broken), "--stream", "cam1"])
    record = json.loads(text[0])
    record["tracks"][0]["confidence"] = "high"
    broken.write_text(json.dumps(record) + "\n")
    with pytest.raises(
        SystemExit, match=r"broken\.jsonl:1: .*track 0: confidence must be a number in \[0, 1\]"
    ):
        main([*args, "--tracks", str(broken), "--stream", "cam1"])

    with pytest.raises(
        SystemExit, match=r"found 30 occluded and 65 clear crops, need at least 100 .*--min-covered"
    ):
        main([*args, "--tracks", str(tracks), "--stream", "cam1", "--track-step", "2", "--min-crops", "100"])

    softmax = _oamn(tmp_path / "softmax.pt", grader="softmax")
    with pytest.raises(SystemExit, match="softmax grader has no visible fraction to adapt"):
        main(["--weights", str(softmax), *base, "--tracks", str(tracks), "--stream", "cam1"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--weights", str(tmp_path / "missing.pt"), *base, "--tracks", str(tracks)])


def test_footage_without_a_track_to_calibrate_on_is_refused(tiny_oamn):
    """Two people, each occluded at some time: one track is held out to check, the other is a group
    of one and stays to fit, so no clear crop is left to set the threshold on, and adapting says so
    instead of calibrating on crops it was fitted to."""
    from models.reid.oamn import load_oamn

    model, cfg = load_oamn(tiny_oamn)
    images = torch.zeros(24, 3, *cfg.input_size, dtype=torch.uint8)
    occluded = SiteCrops(images, np.full(24, 0.5), np.zeros(24), np.arange(24) % 2 + 1)
    clear = SiteCrops(images, np.zeros(24), np.full(24, -1), np.arange(24) % 2 + 1)
    with pytest.raises(AdaptationError, match=r"no clear crops to calibrate the visible threshold on"):
        adapt_grader(model, cfg, occluded, clear, steps=1)
