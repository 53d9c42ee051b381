"""The model stages after the tracker (grade, deocclude, describe, identify) on the shipped weights:
empty input, one crop, a batch across streams, TrackEnd / EndOfStream, bad blocks rejected."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.reid.grader import visible_fraction
from pipeline.messages import (
    EndOfStream,
    Grades,
    MessageError,
    PersonCrops,
    TrackEnd,
    Tracks,
    TrackState,
)
from pipeline.stage import MetricSink, StageContext
from pipeline.wire import decode, encode
from stages.deocclude import DeoccludeConfig, DeoccludeStage
from stages.describe import DescribeConfig, DescribeStage
from stages.grade import GradeConfig, GradeStage
from stages.identify import IdentifyConfig, IdentifyStage

pytestmark = pytest.mark.shared_assets


class Counter(MetricSink):
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def count(self, stage: str, metric: str, amount: float, labels: dict[str, str]) -> None:
        self.totals[metric] = self.totals.get(metric, 0) + amount

    def observe(self, stage: str, metric: str, value: float, labels: dict[str, str]) -> None:
        self.last[metric] = value


def person_crops(shared_dir: Path, person: str, n: int) -> np.ndarray:
    """``n`` real Market-1501 crops of one person, resized to the tracker's 256x128, BGR."""
    folder = shared_dir / "datasets" / "Market-1501" / "bounding_box_test"
    files = sorted(folder.glob(f"{person}_*.jpg"))[:n]
    assert len(files) == n, f"need {n} crops of {person}"
    return np.stack([cv2.resize(cv2.imread(str(f)), (128, 256)) for f in files])


def message(
    seq: int, crops: np.ndarray, track_ids: list[int], stream: str = "cam", states: list[int] | None = None
) -> PersonCrops:
    n = len(track_ids)
    boxes = np.array([[50 + 100 * i, 20, 110 + 100 * i, 200] for i in range(n)], np.float32).reshape(-1, 4)
    state = np.array(states if states is not None else [TrackState.UPDATED] * n, np.uint8)
    tracks = Tracks(np.array(track_ids, np.int64), boxes, np.full(n, 0.9, np.float32), state)
    return PersonCrops(
        stream,
        seq,
        seq / 25,
        1000 + seq / 25,
        (480, 640),
        tracks,
        crops if n else np.zeros((0, 256, 128, 3), np.uint8),
    )


def started(cls, config, tmp_path: Path | None = None):
    counter = Counter()
    stage = cls(config, StageContext(cls.__name__.lower(), metrics=counter, output_dir=tmp_path or "."))
    stage.on_start()
    return stage, counter


@pytest.fixture(scope="module")
def two_people(shared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return person_crops(shared_dir, "0425", 6), person_crops(shared_dir, "0490", 6)


def test_grade_stage_grades_scheduled_rows_only(two_people) -> None:
    a, b = two_people
    stage, counter = started(GradeStage, GradeConfig())
    (empty,) = stage.process_batch([message(0, a[:0], [])])
    assert empty.grades is not None and len(empty.grades) == 0, "no tracks: an empty block, no model call"
    assert empty.grades.scores.shape == (0, 4) and empty.grades.visible.shape == (0,)
    outputs = []
    for seq in range(4):  # confirmed on its third frame
        outputs += stage.process_batch(
            [
                message(seq, np.stack([a[seq], b[seq]]), [1, 2]),
                message(seq, a[seq : seq + 1], [7], stream="other"),
            ]
        )
    assert all(m.grades is not None for m in outputs), "every message says it went through grade"
    graded = [m for m in outputs if len(m.grades)]
    assert [(m.stream_id, m.seq) for m in graded] == [("cam", 2), ("other", 2)]
    g = graded[0].grades
    assert g.rows.tolist() == [0, 1] and g.scores.shape == (2, 4) and g.embedding.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(g.embedding, axis=1), 1.0, atol=1e-5)
    assert ((g.scores >= 0) & (g.scores <= 1)).all()  # the grader's sigmoid location scores
    assert g.visible.shape == (2,) and g.visible.dtype == np.float32
    assert ((g.visible >= 0) & (g.visible <= 1)).all()
    _, raw = stage.predictor(np.stack([a[2], b[2]]))  # the grader's (N, 5) output for those rows
    np.testing.assert_allclose(g.scores, raw[:, :4], atol=1e-4)
    np.testing.assert_allclose(g.visible, visible_fraction(raw), atol=1e-4)
    unscheduled = [m for m in outputs if not len(m.grades)]
    assert all(m.grades.scores.shape == (0, 4) and m.grades.visible.shape == (0,) for m in unscheduled)
    assert counter.totals["rows_scheduled"] == 3 and counter.totals["rows_skipped"] == 9
    other = graded[1].grades.visible
    assert counter.last["visible_fraction_mean"] == pytest.approx(float(other.mean())), (
        "gauge: the last frame's"
    )
    assert [m.seq for m in outputs] == [0, 0, 1, 1, 2, 2, 3, 3], "every message passes, in order"
    assert list(stage.process(EndOfStream("cam", "finished"))) == [] and len(stage.scheduler) == 1


def test_deocclude_routes_only_occluded_tall_rows_and_keeps_visible_pixels(two_people) -> None:
    a, b = two_people
    stage, counter = started(
        DeoccludeStage,
        DeoccludeConfig.model_validate(
            {
                "schedule": {"confirm_frames": 1},
                "route": {"locations": ["bottom"]},
                "model": {"weights": "deocclusion_unet16_peta_128x64.pt"},  # keep_visible is U-Net's
            }
        ),
    )
    base = message(0, np.stack([a[0], b[0], a[1]]), [1, 2, 3])
    grades = Grades(
        np.array([0, 1, 2], np.int32),
        np.full((3, 4), 0.25, np.float32),
        np.array([4, 0, 2], np.uint8),
        np.ones((3, 8), np.float32) / np.sqrt(8),
        np.array([0.5, 1.0, 0.5], np.float32),
    )
    (out,) = stage.process_batch([replace(base, grades=grades)])
    assert out.restored is not None and out.restored.rows.tolist() == [0], "bottom-1/2 only (top not routed)"
    restored = out.restored.crops[0]
    assert restored.shape == (256, 128, 3) and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored[:128], a[0][:128]), "pixels above the bottom half are kept"
    assert not np.array_equal(restored[128:], a[0][128:]), "the bottom half comes from the generator"
    assert np.array_equal(out.crops, base.crops), "the original crops stay"
    (plain,) = stage.process_batch([base])
    assert plain.restored is None, "ungraded rows are not routed"


def test_deocclude_with_the_default_two_stage_file_repaints_the_occluder_only(two_people) -> None:
    """The shipped two-stage de-occluder finds the occluder itself: a crop cut by the frame border
    (its bottom third black) gets that part repainted and keeps the rest of its pixels."""
    a, _ = two_people
    stage, _ = started(DeoccludeStage, DeoccludeConfig.model_validate({"schedule": {"confirm_frames": 1}}))
    assert stage.predictor.composites, "the default file is the two-stage de-occluder"
    cut = a[0].copy()
    cut[170:] = 0
    base = message(0, cut[None], [1])
    grades = Grades(
        np.array([0], np.int32),
        np.full((1, 4), 0.25, np.float32),
        np.array([4], np.uint8),
        np.ones((1, 8), np.float32) / np.sqrt(8),
        np.array([0.6], np.float32),
    )
    (out,) = stage.process_batch([replace(base, grades=grades)])
    restored = out.restored.crops[0]
    kept = np.all(restored[:150] == cut[:150], axis=-1).mean()
    assert kept > 0.95, f"the visible top must keep its own pixels, kept {kept:.1%}"
    assert (restored[180:] > 0).mean() > 0.9, "the black band is repainted"
    assert np.array_equal(out.crops, base.crops), "the original crops stay"


def test_describe_decides_per_track_and_reports_final_decisions_on_track_end(two_people) -> None:
    a, _ = two_people
    stage, counter = started(
        DescribeStage, DescribeConfig.model_validate({"schedule": {"confirm_frames": 1, "every_frames": 1}})
    )
    outs = [stage.process_batch([message(seq, a[seq : seq + 1], [5])])[0] for seq in range(6)]
    first = outs[0].attributes
    assert first is not None and first.probabilities.shape == (1, len(first.names)) == (1, 35)
    decided = [m for m in outs if len(m.attributes.decision_rows)]
    assert decided and decided[0].attributes.decisions.min() >= -1
    assert (decided[-1].attributes.decisions >= 0).any(), "enough evidence after six crops"
    (end,) = stage.process(TrackEnd("cam", 6, 1000.3, np.array([5, 99], np.int64)))
    assert isinstance(end, TrackEnd) and end.attributes is not None
    assert end.attributes.rows.tolist() == [0], "track 99 was never described"
    np.testing.assert_array_equal(end.attributes.decisions[0], decided[-1].attributes.decisions[-1])
    assert list(stage.process(TrackEnd("cam", 6, 1000.3, np.array([5], np.int64)))) == [], "idempotent"


def test_identify_gives_one_identity_per_person_across_streams_and_persists(two_people, tmp_path) -> None:
    a, b = two_people
    grade, _ = started(GradeStage, GradeConfig.model_validate({"schedule": {"confirm_frames": 1}}))
    config = IdentifyConfig.model_validate({"schedule": {"confirm_frames": 1}, "gallery": "g"})
    stage, counter = started(IdentifyStage, config, tmp_path)

    def run(stream: str, seq: int, crops: np.ndarray, ids: list[int]) -> PersonCrops:
        (graded,) = grade.process_batch([message(seq, crops, ids, stream=stream)])
        (out,) = stage.process_batch([graded])
        return out

    cam1 = run("cam1", 0, np.stack([a[0], b[0]]), [1, 2])
    # the second camera sees the same crops mirrored, darker and slightly blurred, in swapped order
    other = [
        cv2.GaussianBlur(np.clip(c[:, ::-1].astype(np.int16) - 25, 0, 255).astype(np.uint8), (3, 3), 0)
        for c in (b[0], a[0])
    ]
    cam2 = run("cam2", 0, np.stack(other), [1, 2])
    ids1, ids2 = cam1.identities.identity.tolist(), cam2.identities.identity.tolist()
    assert ids1[0] != ids1[1], "two people seen at once by one camera are two identities"
    assert ids2 == ids1[::-1], "the same two people in another camera get the same identities"
    (end,) = stage.process(TrackEnd("cam1", 1, 1000.1, np.array([1, 2], np.int64)))
    assert end.identities.identity.tolist() == ids1
    stage.on_stop()
    assert (tmp_path / "g.npz").is_file() and (tmp_path / "g.json").is_file()
    again, _ = started(IdentifyStage, config, tmp_path)
    out = None
    (graded,) = grade.process_batch([message(5, a[1:2], [9], stream="cam3")])
    (out,) = again.process_batch([graded])
    assert out.identities.identity.tolist() == [ids1[0]], "the gallery of the last run knows the person"
    assert counter.totals["identities_created"] == 2


def test_stages_reject_missing_weights_with_the_key(tmp_path) -> None:
    for cls, config in (
        (GradeStage, GradeConfig),
        (DeoccludeStage, DeoccludeConfig),
        (DescribeStage, DescribeConfig),
        (IdentifyStage, IdentifyConfig),
    ):
        stage = cls(
            config.model_validate({"model": {"weights": str(tmp_path / "none.pt")}}), StageContext("s1")
        )
        with pytest.raises(FileNotFoundError, match=r"s1\.model\.weights '.*none\.pt' does not exist"):
            stage.on_start()


def test_forged_blocks_are_rejected_on_the_wire(two_people) -> None:
    a, _ = two_people
    base = message(0, a[:2], [1, 2])
    good = replace(
        base,
        grades=Grades(
            np.array([1], np.int32),
            np.full((1, 4), 0.25, np.float32),
            np.array([3], np.uint8),
            np.ones((1, 4), np.float32) / 2,
            np.array([0.75], np.float32),
        ),
    )
    back = decode(encode(good))
    assert back.grades.rows.tolist() == [1] and back.grades.grade.tolist() == [3]
    assert back.grades.visible.tolist() == [0.75]
    parts = encode(good)
    header = parts[0].decode().replace('"grades.rows","int32",[1]', '"grades.rows","int32",[1]')
    rows = np.array([5], np.int32)  # a row that does not exist
    forged = [header.encode()] + [rows.view(np.uint8) if i == 0 else p for i, p in enumerate(parts[1:])]
    order = [spec[0] for spec in __import__("json").loads(header)["a"]]
    forged = [header.encode()] + [
        rows.view(np.uint8) if path == "grades.rows" else p for path, p in zip(order, parts[1:], strict=True)
    ]
    with pytest.raises(MessageError, match=r"grades.rows must index the 2 track rows"):
        decode(forged)
    with pytest.raises(MessageError, match="Grades.grade values must be 0..8"):
        Grades(
            np.array([0], np.int32),
            np.zeros((1, 4), np.float32),
            np.array([9], np.uint8),
            np.zeros((1, 4), np.float32),
            np.ones(1, np.float32),
        )
