"""amodal bench: its stream feeder, fan-in merge, graph walk, probe rule, overrides and schedule check
on made-up inputs and the built-in graphs; the whole tool on a few frames of the real footage, and on a
graph of its own given by --config (the JSON's keys, types and sanity, not speed)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from amodal.commands.bench_pipeline import (
    PROBE,
    build_graph,
    calls_vs_length,
    main,
    merge_inputs,
    parse_args,
    probe_source,
    run_stream,
    sink_names,
    topological_order,
    truncate_stream,
)
from amodal.graphs import builtin_replay_graph, load_app_graph, register_stages
from pipeline.configfile import ConfigError
from pipeline.graph_settings import InputSpec
from pipeline.messages import EndOfStream, Frame, PersonCrops, TrackEnd
from pipeline.registry import get_stage
from pipeline.stage import Stage, StageContext
from stages.media.testclip import write_clip
from stages.person_stage import PersonStage
from stages.scheduling import ScheduleConfig

register_stages()  # the shipped stage types, looked up below before any graph is loaded


def _frame(seq: int) -> Frame:
    return Frame("cam", seq, seq / 25.0, 1000.0 + seq / 25.0, np.zeros((4, 4, 3), np.uint8))


class _Recorder(Stage):
    """Records the calls the runtime would make; answers one TrackEnd with its own."""

    accepts: ClassVar[tuple[type, ...]] = (Frame, TrackEnd)
    max_batch = 3

    def __init__(self) -> None:
        super().__init__(None, StageContext("recorder"))
        self.calls: list[Any] = []

    def process(self, message: Any) -> list[Any]:
        self.calls.append(type(message).__name__)
        if isinstance(message, TrackEnd) and message.seq == 4:
            return [TrackEnd("cam", 4, message.capture_time, np.array([9]))]
        return []

    def process_batch(self, messages: list[Any]) -> list[Any]:
        self.calls.append(len(messages))
        return list(messages)


def test_run_stream_batches_like_the_runtime():
    end_a = TrackEnd("cam", 4, 1000.2, np.array([1]))
    end_b = TrackEnd("cam", 6, 1000.3, np.array([2]))
    stream = [*map(_frame, range(5)), end_a, _frame(5), _frame(6), end_b, EndOfStream("cam", "finished")]
    stage = _Recorder()
    fps, out = run_stream(stage, stream, warmup=0)
    # data runs in batches of max_batch, cut at control messages; each control message alone
    assert stage.calls == [3, 2, "TrackEnd", 2, "TrackEnd", "EndOfStream"]
    assert fps > 0
    ends = [m for m in out if isinstance(m, TrackEnd)]
    assert [e.track_id.tolist() for e in ends] == [[9], [2]]  # its own answer replaces end_a
    assert isinstance(out[-1], EndOfStream)
    assert sum(isinstance(m, Frame) for m in out) == 7


def test_truncate_stream_closes_the_stream():
    stream = [
        *map(_frame, range(4)),
        TrackEnd("cam", 3, 1000.1, np.array([1])),
        _frame(4),
        EndOfStream("cam", "finished"),
    ]
    cut = truncate_stream(stream, 4)
    assert [type(m).__name__ for m in cut] == ["Frame"] * 4 + ["TrackEnd", "EndOfStream"]
    assert truncate_stream(stream, 100) == stream


class _CropsOnly(Stage):
    accepts: ClassVar[tuple[type, ...]] = (PersonCrops,)


def _spec(stage_class: type, *sources: str) -> SimpleNamespace:
    """What merge_inputs reads of a stage spec: its class and its inputs."""
    return SimpleNamespace(
        stage_class=stage_class, input_specs=lambda: [InputSpec(source=s) for s in sources]
    )


def test_merge_inputs_orders_a_fan_in_by_frame():
    end = TrackEnd("cam", 1, 1000.04, np.array([1]))
    outputs = {
        "a": [_frame(0), _frame(1), end, EndOfStream("cam", "finished")],
        "b": [_frame(0), _frame(1), EndOfStream("cam", "finished")],
    }
    merged = merge_inputs(_spec(_Recorder, "a", "b"), outputs)
    # sequence order, each input's own order kept, the first-listed input first on a tie; one EndOfStream
    assert [(type(m).__name__, getattr(m, "seq", None)) for m in merged] == [
        ("Frame", 0),
        ("Frame", 0),
        ("Frame", 1),
        ("TrackEnd", 1),
        ("Frame", 1),
        ("EndOfStream", None),
    ]
    assert merged[0] is outputs["a"][0] and merged[1] is outputs["b"][0]
    # one input: as recorded, less the data the stage does not accept (control messages always pass)
    assert merge_inputs(_spec(_Recorder, "a"), outputs) == outputs["a"]
    assert merge_inputs(_spec(_CropsOnly, "a"), outputs) == outputs["a"][2:]


@pytest.mark.parametrize(("basic", "feeds_probe"), [(False, "identify"), (True, "track")])
def test_probe_rule_on_the_builtin_graphs(basic, feeds_probe):
    raw = builtin_replay_graph(basic=basic)
    graph = load_app_graph(data=raw)
    assert probe_source(graph) == feeds_probe
    assert sink_names(graph) == {"events", "jsonl", "video"}
    # --no-sinks: the same stage feeds the probe
    raw["stages"] = [s for s in raw["stages"] if s["name"] not in sink_names(graph)]
    assert probe_source(load_app_graph(data=raw)) == feeds_probe
    # the walk follows the inputs, not the order the stages are listed in
    names = [s["name"] for s in raw["stages"]]
    raw["stages"].reverse()
    assert [s.name for s in topological_order(load_app_graph(data=raw))] == names


def test_graphs_get_the_video_the_overrides_and_the_probe(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    weights = tmp_path / "weights.pt"  # never read: the graphs are only loaded
    argv = [
        str(clip), "--weights", str(weights), "--set", "detect.conf=0.4", "--set", "detect.interval=2",
        "--set", "grade.schedule.every_s=3", "--no-sinks",
    ]  # fmt: skip
    args = parse_args(argv)
    full, basic = (
        build_graph(args, "embedded", tmp_path / "out", tmp_path / "probe.json", False, 5, basic=b)
        for b in (False, True)
    )
    for graph, feeds_probe in ((full, "identify"), (basic, "track")):
        detect = graph.stage("detect").config
        assert (detect.weights, detect.conf, detect.interval) == (str(weights.resolve()), 0.4, 2)
        ingest = graph.stage("ingest").config
        assert ingest.max_frames == 5 and [s.source for s in ingest.streams] == [str(clip.resolve())]
        assert graph.stage(PROBE).input_specs()[0].source == feeds_probe
        assert sink_names(graph) == {PROBE}  # --no-sinks dropped the graph's own
    assert full.stage("grade").config.schedule.every_s == 3  # skipped for the basic graph
    args = parse_args([str(clip), "--weights", str(weights), "--set", "detet.conf=0.4"])
    with pytest.raises(ConfigError, match="detet"):  # a typo still fails
        build_graph(args, "embedded", tmp_path / "out", None, False, 5)


def test_calls_vs_length():
    spans = {("cam", 1): (0.0, 9.0), ("cam", 2): (0.0, 0.0), ("cam", 3): (1.0, 5.0)}
    runs = Counter({("cam", 1): 10, ("cam", 2): 2, ("cam", 3): 5})
    check = calls_vs_length(runs, spans, ScheduleConfig(every_s=1.0), video_fps=25.0)
    assert check["tracks_run"] == 3 and check["runs"] == 17
    assert check["schedule_rate_per_s"] == 1.0
    assert check["max_runs_over_schedule"] == 2.0  # track 2: 2 runs in a track of no length
    assert check["worst_track"]["track_id"] == 2
    assert check["slope_runs_per_s"] == pytest.approx(np.polyfit([9, 0, 4], [10, 2, 5], 1)[0], abs=1e-3)
    frames_only = calls_vs_length(runs, spans, ScheduleConfig(every_s=None, every_frames=5), video_fps=25.0)
    assert frames_only["schedule_rate_per_s"] == 5.0
    assert calls_vs_length(Counter(), spans, None, 25.0)["max_runs_over_schedule"] is None


def _positive(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


@pytest.mark.shared_assets
def test_bench_pipeline_on_a_few_frames(shared_dir, tmp_path):
    out = tmp_path / "bench.json"
    argv = [
        str(shared_dir / "media" / "crosswalk-occlusions.mp4"),
        "--weights", str(shared_dir / "models" / "yolov8n_int8_openvino_model"),
        "--frames", "20", "--warmup", "2", "--repeats", "1", "--modes", "embedded",
        "--realtime-frames", "0", "--recheck-frames", "10", "--transport-messages", "10",
        "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())

    graph = builtin_replay_graph()["stages"]
    names = [spec["name"] for spec in graph]
    person = [spec["name"] for spec in graph if issubclass(get_stage(spec["type"]), PersonStage)]
    assert person, "the default graph has model stages after the tracker"
    assert data["graph_stages"] == names
    assert set(data["stage_fps"]) == set(names)
    assert all(_positive(v) for v in data["stage_fps"].values()), data["stage_fps"]
    assert data["frames"] == 20

    # existing keys
    for key in ("decode_fps", "slowest_stage_fps", "embedded_fps", "embedded_ratio"):
        assert _positive(data[key]), key
    assert data["process_fps"] is None and data["process_ratio"] is None
    assert data["slowest_stage"] in names
    assert "transport_us" in data and "latency_ms" in data

    # basic vs full
    assert _positive(data["basic_fps"]) and _positive(data["full_fps"])
    assert data["full_vs_basic"] == pytest.approx(data["full_fps"] / data["basic_fps"], abs=1e-3)
    assert data["embedded_fps"] == data["full_fps"]
    assert [r["graph"] for r in data["graph_runs"]] == ["basic", "full"]
    assert all(r["frames"] == 20 for r in data["graph_runs"])
    basic_metrics, full_metrics = data["graph_stage_metrics"]["basic"], data["graph_stage_metrics"]["full"]
    assert not set(person) & set(basic_metrics)
    assert set(person) <= set(full_metrics)
    assert full_metrics[person[0]]["model_rows"] > 0

    # model stages bare, and calls per track
    assert set(data["person_stages"]) == set(person)
    assert set(data["model_calls_per_track"]) == set(person)
    for name in person:
        bare = data["person_stages"][name]
        assert _positive(bare["fps"]) and bare["messages"] >= 20
        check = data["model_calls_vs_track_length"][name]
        assert check["runs"] == bare.get("model_rows", 0)
        per_track = data["model_calls_per_track"][name]
        if check["tracks_run"]:
            assert per_track >= 1.0 and _positive(check["max_runs_over_schedule"])
            every_s = get_stage(name).Config().schedule.every_s  # stage names are their types here
            assert check["schedule_rate_per_s"] == pytest.approx(1.0 / every_s)
        else:
            assert per_track is None
    first = data["model_calls_per_track"][person[0]]
    assert _positive(first), "people are visible in the first 20 frames"
    assert data["tracks_seen"] >= data["model_calls_vs_track_length"][person[0]]["tracks_run"]


@pytest.fixture(scope="module")
def yaml_weights(tmp_path_factory) -> Path:
    """An untrained YOLOv8n built from ultralytics' YAML and saved as .pt (no download involved)."""
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("weights") / "yolov8n_untrained.pt"
    YOLO("yolov8n.yaml").save(str(path))
    return path


_OWN_GRAPH = """
stages:
  - {name: source, type: ingest, config: {}}
  - {name: people, type: detect, inputs: [source], config: {imgsz: 64, max_batch: 4, warmup: false}}
  - {name: tracker, type: track, inputs: [people]}
"""


def test_bench_runs_the_graph_given_by_config(tmp_path, yaml_weights):
    clip = write_clip(tmp_path / "clip.mp4", frames=12)
    full, basic = tmp_path / "full.yaml", tmp_path / "basic.yaml"
    full.write_text(
        _OWN_GRAPH + "  - {name: log, type: jsonl_sink, inputs: [tracker], config: {path: e.jsonl}}\n"
    )
    basic.write_text(_OWN_GRAPH)
    out = tmp_path / "bench.json"
    argv = [
        str(clip), "--config", str(full), "--basic-config", str(basic),
        "--set", f"people.weights={yaml_weights}", "--set", "log.include_empty=true",
        "--frames", "12", "--warmup", "2", "--repeats", "1", "--modes", "embedded",
        "--realtime-frames", "0", "--recheck-frames", "6", "--transport-messages", "5",
        "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())

    names = ["source", "people", "tracker", "log"]
    assert data["graph_stages"] == names
    assert list(data["stage_fps"]) == list(data["bare_stages"]) == names  # walked in graph order
    assert all(_positive(v) for v in data["stage_fps"].values()), data["stage_fps"]
    assert data["bare_stages"]["people"]["max_batch"] == 4  # the detector's batch, from its config
    assert data["bare_stages"]["log"]["inputs"] == ["tracker"]
    assert data["frames"] == 12 and data["slowest_stage"] in names
    assert data["person_stages"] == {} and data["model_calls_per_track"] == {}
    assert data["full_run"]["probe_source"] == data["basic_run"]["probe_source"] == "tracker"
    assert "people" in data["graph_stage_metrics"]["full"]
    assert set(data["graph_stage_metrics"]["full"]) <= {*names, PROBE}
    assert not {"log"} & set(data["graph_stage_metrics"]["basic"])
    assert _positive(data["embedded_fps"]) and _positive(data["basic_fps"])
