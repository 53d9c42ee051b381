"""What every registered stage promises, checked over the registry rather than a hand-kept list, so a
new stage type is held to it the day it is registered (boxmot's habit over its trackers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from amodal.graphs import load_app_graph, register_stages
from pipeline.configfile import ConfigError
from pipeline.messages import EndOfStream, PersonCrops, Tracks
from pipeline.registry import stage_types
from pipeline.stage import SourceStage, Stage, StageContext
from tests.test_pipeline_support import PLUGIN

register_stages()  # the shipped stage types, looked up below before any graph is loaded

#: the stage types the product ships (the test plugin's own stages are registered too, and skipped)
TYPES = sorted(name for name, cls in stage_types().items() if cls.__module__.startswith("stages."))
#: the smallest valid config of the types that have required keys
MINIMAL: dict[str, dict[str, Any]] = {"ingest": {"streams": [{"id": "a", "source": "video.mp4"}]}}
#: stages whose on_start loads no network (the model stages and detect are held to the same
#: lifecycle in test_person_stages.py and test_detect.py, with real weights)
LIGHT = ["crop_sink", "jsonl_sink", "sqlite_sink", "track", "video_sink"]


def _graph(type_name: str, config: dict[str, Any], out: Path) -> dict[str, Any]:
    stage = {"name": "under_test", "type": type_name, "config": config}
    if issubclass(stage_types()[type_name], SourceStage):
        return {"plugins": [PLUGIN], "output_dir": str(out), "stages": [stage]}
    stage["inputs"] = ["src"]
    source = {"name": "src", "type": "test_source", "config": {}}
    return {"plugins": [PLUGIN], "output_dir": str(out), "stages": [source, stage]}


def _undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
    missing = []
    for name, info in model.model_fields.items():
        if not info.description:
            missing.append(prefix + name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _undescribed(annotation, f"{prefix}{name}.")
    return missing


@pytest.mark.parametrize("type_name", TYPES)
def test_an_unknown_config_key_is_refused_naming_it(type_name: str, tmp_path: Path) -> None:
    config = dict(MINIMAL.get(type_name, {}), no_such_option=1)
    with pytest.raises(ConfigError, match="no_such_option"):
        load_app_graph(data=_graph(type_name, config, tmp_path))


@pytest.mark.parametrize("type_name", TYPES)
def test_every_option_has_a_description(type_name: str) -> None:
    """``amodal check`` prints each option with its description; an option without one is a gap."""
    assert _undescribed(stage_types()[type_name].Config) == []


@pytest.mark.parametrize("type_name", TYPES)
def test_file_checks_and_outputs_answer_with_plain_lists(type_name: str, tmp_path: Path) -> None:
    """``check_files`` (amodal check / replay preflight) names keys as ``<stage>.<key>``; ``output_files``
    lists paths under the output folder (replay's --overwrite / --append)."""
    graph = load_app_graph(data=_graph(type_name, dict(MINIMAL.get(type_name, {})), tmp_path))
    spec = graph.stage("under_test")
    problems = spec.stage_class.check_files(spec.config, spec.name)
    assert isinstance(problems, list) and all(p.startswith("under_test.") for p in problems), problems
    outputs = spec.stage_class.output_files(spec.config, tmp_path)
    assert all(isinstance(p, Path) and tmp_path in p.parents for p in outputs), outputs


@pytest.mark.parametrize("type_name", LIGHT)
def test_a_stage_ends_a_stream_it_never_saw_and_stops_cleanly(type_name: str, tmp_path: Path) -> None:
    """EndOfStream of an unknown stream (a camera that never sent a frame) and an empty frame never
    raise; on_stop after that returns (sinks leave their files consistent)."""
    graph = load_app_graph(data=_graph(type_name, {}, tmp_path))
    spec = graph.stage("under_test")
    stage: Stage = spec.stage_class.from_config(spec.config, StageContext("under_test", output_dir=tmp_path))
    stage.on_start()
    list(stage.process(EndOfStream("never-seen", "error", "could not open")) or ())
    if PersonCrops in spec.stage_class.accepts:
        empty = PersonCrops("cam", 0, 0.0, 1.0, (48, 64), Tracks.empty(), np.zeros((0, 8, 4, 3), np.uint8))
        list(stage.process(empty) or ())
    stage.flush()
    list(stage.on_stop() or ())
