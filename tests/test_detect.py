"""Detect stage: weights resolution (offline, no download), config errors, batching across streams
with ``interval``, on a YOLO built from YAML and on the shared OpenVINO YOLOv8n with real footage."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from amodal.program_env import set_program_env_defaults
from pipeline.configfile import ConfigError, load_config
from pipeline.messages import Detections, EndOfStream, Frame
from pipeline.stage import StageContext
from stages.detect import DetectConfig, DetectStage, resolve_weights
from stages.media.decoder import to_bgr
from stages.media.testclip import synthetic_frame


def make_stage(**config) -> DetectStage:
    return DetectStage(DetectConfig.model_validate(config), StageContext("detect"))


def frame(stream: str, seq: int, image: np.ndarray) -> Frame:
    return Frame(stream, seq, seq / 25, 1_700_000_000.0 + seq / 25, image)


def test_missing_default_weights_offline_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no yolo11n.pt in the working directory
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    stage = make_stage()
    with pytest.raises(FileNotFoundError, match=r"'yolo11n.pt' not found.*--set detect.weights="):
        stage.on_start()
    with pytest.raises(FileNotFoundError, match=r"models/nope.onnx"):
        resolve_weights(str(tmp_path / "models" / "nope.onnx"))


def test_bad_weight_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "weights.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"unsupported format '.txt'"):
        resolve_weights(str(tmp_path / "weights.txt"))
    (tmp_path / "empty_openvino_model").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no OpenVINO .xml"):
        resolve_weights(str(tmp_path / "empty_openvino_model"))


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "detect.yaml"
    cfg.write_text("imgsz: 100\n")
    with pytest.raises(ConfigError, match=r"imgsz: bad value 100: .*multiples of 32"):
        load_config(DetectConfig, cfg)
    cfg.write_text("conf: 1.5\n")
    with pytest.raises(ConfigError, match=r"conf: bad value 1.5"):
        load_config(DetectConfig, cfg)
    cfg.write_text("confidence: 0.5\n")
    with pytest.raises(ConfigError, match=r"confidence: unknown key"):
        load_config(DetectConfig, cfg)
    cfg.write_text("classes: []\n")
    with pytest.raises(ConfigError, match=r"classes: bad value \[\]: .*non-empty list"):
        load_config(DetectConfig, cfg)
    cfg.write_text("interval: 0\n")
    with pytest.raises(ConfigError, match=r"interval: bad value 0"):
        load_config(DetectConfig, cfg)
    assert load_config(DetectConfig, cfg, overrides=["interval=3"]).classes == [0]


@pytest.fixture(scope="module")
def yaml_weights(tmp_path_factory) -> Path:
    """An untrained YOLOv8n built from ultralytics' YAML and saved as .pt (no download involved)."""
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("weights") / "yolov8n_untrained.pt"
    YOLO("yolov8n.yaml").save(str(path))
    return path


def test_pt_weights_built_from_yaml_run_batched(yaml_weights: Path) -> None:
    stage = make_stage(
        weights=str(yaml_weights), imgsz=64, conf=0.001, classes=None, max_batch=4, warmup=False
    )
    assert stage.max_batch == 4 and stage.max_wait_s == pytest.approx(0.005)
    stage.on_start()
    frames = [frame("a", i, synthetic_frame(i, 160, 96)) for i in range(3)]
    out = list(stage.process_batch(frames))
    assert [(f.stream_id, f.seq) for f in out] == [("a", 0), ("a", 1), ("a", 2)]
    for f in out:
        assert isinstance(f.detections, Detections)
        dets = f.detections
        assert np.all(dets.confidence >= 0.001)
        assert np.all(dets.xyxy[:, [0, 2]] <= 160 + 1e-3) and np.all(dets.xyxy[:, [1, 3]] <= 96 + 1e-3)
        assert np.all(dets.xyxy >= -1e-3)
        assert f.image is frames[f.seq].image, "the frame image is passed on, not copied"


def test_starting_the_stage_leaves_the_environment_alone(yaml_weights: Path, monkeypatch) -> None:
    """The programs set ultralytics' environment defaults (amodal.program_env); a stage never does."""
    monkeypatch.delenv("YOLO_AUTOINSTALL", raising=False)
    before = dict(os.environ)
    make_stage(weights=str(yaml_weights), imgsz=64, warmup=False).on_start()
    assert dict(os.environ) == before
    env = {"YOLO_AUTOINSTALL": "true"}
    set_program_env_defaults(env)
    assert env == {"YOLO_AUTOINSTALL": "true"}, "a variable the user set wins"
    env.clear()
    set_program_env_defaults(env)
    assert env == {"YOLO_AUTOINSTALL": "false"}


@pytest.fixture(scope="module")
def crosswalk(shared_dir: Path) -> list[np.ndarray]:
    with av.open(str(shared_dir / "media" / "crosswalk-occlusions.mp4")) as container:
        return [to_bgr(f) for _, f in zip(range(4), container.decode(video=0), strict=False)]


@pytest.fixture(scope="module")
def openvino_stage(shared_dir: Path) -> DetectStage:
    stage = make_stage(
        weights=str(shared_dir / "models" / "yolov8n_int8_openvino_model"), interval=2, max_batch=4, threads=1
    )
    stage.on_start()
    return stage


@pytest.mark.shared_assets
def test_openvino_finds_people_and_interval_skips_per_stream(
    openvino_stage: DetectStage, crosswalk: list[np.ndarray]
) -> None:
    stage = openvino_stage
    batch = [
        frame("a", 0, crosswalk[0]),
        frame("b", 0, crosswalk[1]),
        frame("a", 1, crosswalk[1]),
        frame("b", 1, crosswalk[2]),
    ]
    out = list(stage.process_batch(batch))
    assert [(f.stream_id, f.seq) for f in out] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    a0, b0, a1, b1 = out
    assert a1.detections is None and b1.detections is None, "interval=2: every other frame is skipped"
    for f in (a0, b0):
        assert len(f.detections) >= 5, "the crosswalk frame shows a crowd"
        assert set(f.detections.class_id.tolist()) == {0}, "person class only by default"
        assert np.all(f.detections.confidence >= 0.25)
        w = f.detections.xyxy[:, 2] - f.detections.xyxy[:, 0]
        h = f.detections.xyxy[:, 3] - f.detections.xyxy[:, 1]
        assert np.median(h / w) > 1.2, "people are taller than wide"
    out = list(stage.process_batch([frame("a", 2, crosswalk[2])]))
    assert out[0].detections is not None
    # End of stream resets that stream's cadence: its next frame is detected again.
    assert list(stage.process(EndOfStream("b", "finished"))) == []
    (again,) = stage.process_batch([frame("b", 0, crosswalk[3])])
    assert again.detections is not None and len(again.detections) >= 5


@pytest.mark.shared_assets
def test_threads_option_caps_openvino_inference_threads(openvino_stage: DetectStage) -> None:
    compiled = openvino_stage._model.predictor.model.backend.ov_compiled_model
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_onnx_export_of_the_yaml_model_runs_in_the_stage(yaml_weights: Path, tmp_path: Path) -> None:
    from ultralytics import YOLO

    onnx_path = Path(YOLO(str(yaml_weights)).export(format="onnx", imgsz=64, dynamic=True, simplify=False))
    assert onnx_path.suffix == ".onnx" and onnx_path.is_file()
    stage = make_stage(weights=str(onnx_path), imgsz=64, conf=0.001, classes=[0, 1], warmup=False)
    stage.on_start()
    out = list(stage.process_batch([frame("a", i, synthetic_frame(i, 160, 96)) for i in range(2)]))
    assert [f.seq for f in out] == [0, 1]
    for f in out:
        assert isinstance(f.detections, Detections)
        assert set(f.detections.class_id.tolist()) <= {0, 1}
