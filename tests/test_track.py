"""Track stage: lifecycle (NEW/UPDATED/LOST/ENDED, each end reported once), prediction on frames
without detections, per-stream independence, BoT-SORT with motion compensation, crops, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.configfile import ConfigError, load_config
from pipeline.messages import Detections, EndOfStream, Frame, PersonCrops, TrackEnd, Tracks, TrackState
from pipeline.stage import MetricSink, StageContext
from stages.track import TrackConfig, TrackStage
from stages.trackers.crops import cut_crops

NEW, UPDATED, LOST, ENDED = TrackState.NEW, TrackState.UPDATED, TrackState.LOST, TrackState.ENDED


class Counter(MetricSink):
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def count(self, stage: str, metric: str, amount: float, labels: dict[str, str]) -> None:
        self.totals[metric] = self.totals.get(metric, 0) + amount


def make_stage(**config) -> tuple[TrackStage, Counter]:
    counter = Counter()
    stage = TrackStage(
        TrackConfig.model_validate({"gmc_method": "none", **config}), StageContext("track", metrics=counter)
    )
    stage.on_start()
    return stage, counter


def dets(*boxes: tuple[float, float, float, float], score: float = 0.9) -> Detections:
    if not boxes:
        return Detections.empty()
    return Detections(
        np.array(boxes, np.float32), np.full(len(boxes), score, np.float32), np.zeros(len(boxes), np.int32)
    )


def walker(i: int, x0: float = 20.0, y0: float = 40.0, vx: float = 4.0) -> tuple[float, float, float, float]:
    """A 30x80 person moving right at ``vx`` px/frame."""
    x = x0 + vx * i
    return (x, y0, x + 30, y0 + 80)


def step(
    stage: TrackStage, stream: str, seq: int, detections: Detections | None, image: np.ndarray | None = None
) -> tuple[Frame, PersonCrops]:
    image = np.zeros((240, 320, 3), np.uint8) if image is None else image
    out = list(stage.process(Frame(stream, seq, seq / 25, 1000.0 + seq / 25, image, detections=detections)))
    assert len(out) in (2, 3) and isinstance(out[0], Frame) and isinstance(out[1], PersonCrops)
    frame, crops = out[:2]
    ended = crops.tracks.track_id[crops.tracks.state == ENDED]
    if len(ended):  # every ENDED row is followed by the control message that frees per-track state
        assert len(out) == 3 and isinstance(out[2], TrackEnd) and out[2].track_id.tolist() == ended.tolist()
    else:
        assert len(out) == 2
    assert frame.tracks is crops.tracks and crops.seq == seq and crops.frame_size == (240, 320)
    return frame, crops


def states(tracks: Tracks) -> dict[int, TrackState]:
    return {int(t): TrackState(int(s)) for t, s in zip(tracks.track_id, tracks.state, strict=True)}


def test_lifecycle_new_updated_lost_ended_each_end_once() -> None:
    stage, counter = make_stage(track_buffer=5)
    history: list[dict[int, TrackState]] = []
    for i in range(20):
        boxes = [walker(i)] + ([walker(i, x0=200, vx=-3)] if i < 8 else [])
        history.append(states(step(stage, "cam", i, dets(*boxes))[1].tracks))
    assert history[0] == {1: NEW, 2: NEW}
    assert all(h[1] == UPDATED for h in history[1:]), "a steadily detected walker keeps its id"
    assert history[8][2] == LOST, "the walker that disappears is reported lost on that frame"
    lost_or_ended = [h.get(2) for h in history[9:]]
    assert lost_or_ended.count(ENDED) == 1 and LOST not in lost_or_ended, "LOST once, then ENDED once"
    ended_at = 9 + lost_or_ended.index(ENDED)
    assert 8 + 5 <= ended_at <= 8 + 7, "ended after track_buffer frames lost"
    final, end = stage.process(EndOfStream("cam", "finished"))
    assert isinstance(final, PersonCrops) and states(final.tracks) == {1: ENDED}
    assert isinstance(end, TrackEnd) and end.track_id.tolist() == [1] and end.seq == final.seq
    assert final.crops.shape == (1, 256, 128, 3) and not final.crops.any(), "ended rows carry empty crops"
    assert counter.totals == {"tracks_new": 2, "tracks_lost": 1, "tracks_ended": 2}
    assert list(stage.process(EndOfStream("cam", "finished"))) == [], "a stream is ended only once"


def test_frames_without_detections_are_predicted_not_missed() -> None:
    stage, _ = make_stage(track_buffer=3)
    boxes = {}
    for i in range(30):
        detected = i < 10 or i % 4 == 0  # warm up the velocity, then detector on every 4th frame
        frame, crops = step(stage, "cam", i, dets(walker(i)) if detected else None)
        assert states(crops.tracks) == {1: NEW if i == 0 else UPDATED}, f"frame {i}: {states(crops.tracks)}"
        boxes[i] = frame.tracks.xyxy[0]
    for i in (13, 14, 15, 21, 22, 23):
        assert np.abs(boxes[i] - np.array(walker(i))).max() < 3.0, f"prediction of frame {i} off: {boxes[i]}"
    assert boxes[15][0] > boxes[13][0] + 6, "the predicted box moves with the walker between detections"


def test_streams_are_tracked_independently() -> None:
    stage, _ = make_stage()
    for i in range(6):
        _, a = step(stage, "a", i, dets(walker(i), walker(i, y0=140)))
        _, b = step(stage, "b", i, dets(walker(i, x0=200, vx=-2)))
    assert sorted(states(a.tracks)) == [1, 2] and sorted(states(b.tracks)) == [1], "ids are per stream"
    ended, end = stage.process(EndOfStream("a", "finished"))
    assert ended.stream_id == "a" and states(ended.tracks) == {1: ENDED, 2: ENDED}
    assert isinstance(end, TrackEnd) and end.stream_id == "a" and end.track_id.tolist() == [1, 2]
    _, b = step(stage, "b", 6, dets(walker(6, x0=200, vx=-2)))
    assert states(b.tracks) == {1: UPDATED}, "ending stream a leaves stream b alone"
    _, a = step(stage, "a", 0, dets(walker(0)))
    assert states(a.tracks) == {1: NEW}, "a stream that comes back starts a fresh tracker"


def test_low_scores_do_not_start_tracks_and_empty_frames_are_fine() -> None:
    stage, _ = make_stage(new_track_thresh=0.6)
    _, crops = step(stage, "cam", 0, dets(walker(0), score=0.4))
    assert len(crops.tracks) == 0 and crops.crops.shape == (0, 256, 128, 3)
    _, crops = step(stage, "cam", 1, dets())
    assert len(crops.tracks) == 0
    _, crops = step(stage, "cam", 2, None)
    assert len(crops.tracks) == 0


def test_botsort_with_motion_compensation_on_a_panning_camera() -> None:
    rng = np.random.default_rng(0)
    scene = (rng.random((240, 480, 3)) * 255).astype(np.uint8)
    scene = np.ascontiguousarray(np.repeat(np.repeat(scene[::8, ::8], 8, 0), 8, 1))  # textured background
    stage, _ = make_stage(tracker="botsort", gmc_method="sparseOptFlow")
    ids = []
    for i in range(12):
        pan = 2 * i  # the camera pans right: the static person drifts left in the image
        image = np.ascontiguousarray(scene[:, pan : pan + 320])
        _, crops = step(stage, "cam", i, dets((150 - pan, 60, 180 - pan, 140)), image)
        ids.append(states(crops.tracks))
    assert ids[0] == {1: NEW} and all(h == {1: UPDATED} for h in ids[1:])


def test_stage_emits_annotated_frame_only_when_asked() -> None:
    stage, _ = make_stage(emit_frames=False)
    out = list(stage.process(Frame("cam", 0, 0.0, 1.0, np.zeros((240, 320, 3), np.uint8), dets(walker(0)))))
    assert len(out) == 1 and isinstance(out[0], PersonCrops)


def test_crops_resize_letterbox_padding_and_masking() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[20:80, 50:80] = (0, 0, 255)  # a red 30x60 "person"
    boxes = np.array([[50, 20, 80, 80], [0, 0, 200, 20], [300, 300, 400, 400], [50, 20, 80, 80]], np.float32)
    keep = np.array([True, True, True, False])
    crops = cut_crops(image, boxes, (64, 32), padding=0.0, mode="resize", keep=keep)
    assert crops.shape == (4, 64, 32, 3) and crops.dtype == np.uint8
    assert (crops[0] == (0, 0, 255)).all(), "a tight crop of the red box is all red"
    assert not crops[2].any(), "a box outside the frame gives an empty crop"
    assert not crops[3].any(), "a masked row gives an empty crop"
    padded = cut_crops(image, boxes[:1], (64, 32), padding=0.5, mode="resize")[0]
    red = (padded == (0, 0, 255)).all(axis=2).mean()
    assert 0.2 < red < 0.6, "padding brings in context around the box"
    wide = cut_crops(image, boxes[1:2], (64, 32), mode="letterbox")[0]
    assert (wide[0] == 114).all() and (wide[-1] == 114).all(), "letterbox pads a wide box top and bottom"
    assert (wide[32, :] != 114).any()


def test_crop_size_and_mode_come_from_config() -> None:
    stage, _ = make_stage(crop_size=[96, 48], crop_mode="letterbox", crop_padding=0.0)
    image = np.zeros((240, 320, 3), np.uint8)
    image[40:120, 20:50] = 200
    _, crops = step(stage, "cam", 0, dets(walker(0)), image)
    assert crops.crops.shape == (1, 96, 48, 3)
    assert crops.crops[0].mean() > 150


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "track.yaml"
    cases = {
        "track_low_thresh: 0.5\ntrack_high_thresh: 0.3\n": r"track_low_thresh \(0.5\) must be <= track_high",
        "with_reid: true\n": "with_reid needs tracker: botsort",
        "crop_size: [4, 2]\n": r"crop_size: bad value \[4, 2\]",
        "tracker: sort\n": r"tracker: bad value 'sort'",
        "buffer: 3\n": "buffer: unknown key",
    }
    for text, message in cases.items():
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(TrackConfig, cfg)
    stage = TrackStage(
        TrackConfig(tracker="botsort", with_reid=True, reid_model=str(tmp_path / "no.pt")),
        StageContext("track"),
    )
    with pytest.raises(FileNotFoundError, match="no.pt.*--set track.reid_model"):
        stage.on_start()


def test_botsort_with_reid_tracks_with_the_project_reid_network() -> None:
    """with_reid: BoT-SORT matches on appearance with the shipped OAMN network (through our backend
    layer): every detection gets an embedding and the walkers keep their ids."""
    stage, _ = make_stage(tracker="botsort", with_reid=True)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    calls = []
    encoder = stage._encoder
    assert encoder is not None

    def counting(img, dets):
        calls.append(len(dets))
        return encoder(img, dets)

    for i in range(8):
        for state in stage._streams.values():
            state.tracker.tracker.encoder = counting
        _, crops = step(stage, "cam", i, dets(walker(i), walker(i, x0=200, vx=-3)), image)
        if i == 0:
            assert stage._streams["cam"].tracker.tracker.args.with_reid
    assert states(crops.tracks) == {1: UPDATED, 2: UPDATED}
    assert sum(calls) >= 2 * 7, "an embedding per detection"


def test_reid_weights_that_are_not_an_oamn_checkpoint_are_a_config_error(shared_dir: Path) -> None:
    weights = shared_dir / "models" / "osnet_x0_25_msmt17.pth"  # torchreid layout, not ours
    stage = TrackStage(
        TrackConfig(tracker="botsort", with_reid=True, reid_model=str(weights)), StageContext("track")
    )
    with pytest.raises(ConfigError, match="track.reid_model .* is not an OAMN ReID checkpoint"):
        stage.on_start()


@pytest.mark.shared_assets
def test_real_footage_with_detector_every_other_frame(shared_dir: Path) -> None:
    """Crosswalk footage, shared OpenVINO YOLOv8n on every 2nd frame: people keep their ids through
    the predicted frames (>= 5 tracks present in 30+ of 48 frames) and every ENDED comes once."""
    import threading

    from stages.detect import DetectConfig, DetectStage
    from stages.media.decoder import DecodedFrame, DecoderOptions, StreamDecoder
    from stages.media.sources import resolve_source

    detect = DetectStage(
        DetectConfig(
            weights=str(shared_dir / "models" / "yolov8n_int8_openvino_model"), interval=2, threads=1
        ),
        StageContext("detect"),
    )
    detect.on_start()
    stage, _ = make_stage(tracker="botsort")
    video = resolve_source(str(shared_dir / "media" / "crosswalk-occlusions.mp4"))
    present: dict[int, int] = {}
    ended: dict[int, int] = {}
    for item in StreamDecoder("cw", video, DecoderOptions(max_frames=48)).frames(threading.Event()):
        if not isinstance(item, DecodedFrame):
            break
        (frame,) = detect.process_batch([Frame("cw", item.seq, item.pts, item.capture_time, item.image)])
        _, crops = list(stage.process(frame))[:2]
        for tid, state in states(crops.tracks).items():
            if state in (NEW, UPDATED):
                present[tid] = present.get(tid, 0) + 1
            if state == ENDED:
                ended[tid] = ended.get(tid, 0) + 1
    for final in stage.process(EndOfStream("cw", "finished")):
        if isinstance(final, TrackEnd):
            continue
        for tid in final.tracks.track_id.tolist():
            ended[tid] = ended.get(tid, 0) + 1
    assert sum(n >= 30 for n in present.values()) >= 5, present
    assert set(ended) == set(present) and set(ended.values()) == {1}
