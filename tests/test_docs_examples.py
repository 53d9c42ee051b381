"""The code in docs/extending.md runs and does what the page says, so the page cannot rot.

Each fenced ``python`` block is taken from the page as written. A block whose first line is a file
name comment is that file: ``# people_counter.py`` is written to a folder and imported through the
graph's ``plugins:`` list, as a user would; ``# models/backbones/tiny_cnn.py`` runs as a module body
(its ``@register_backbone`` registration is undone after the test); the other blocks run in order
in the same namespace.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from amodal.check import describe_graph, print_description
from amodal.graphs import load_app_graph
from models.backbones import registry as backbone_registry
from pipeline.configfile import ConfigError
from pipeline.messages import EndOfStream, PersonCrops, Tracks, TrackState
from pipeline.registry import stage_types
from pipeline.stage import MetricSink, StageContext

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
ROOT = DOC.parents[1]
_FENCE = re.compile(r"^[ \t]*```(\w+)\n(.*?)^[ \t]*```", re.S | re.M)


def _blocks(lang: str, section: str) -> list[str]:
    """The ``lang`` blocks of one ``## section`` of the page, in order, dedented."""
    text = DOC.read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    (body,) = [p for p in parts if p.startswith(section)]
    blocks = []
    for found, code in _FENCE.findall(body):
        if found == lang:
            indent = min(len(line) - len(line.lstrip()) for line in code.splitlines() if line.strip())
            blocks.append("\n".join(line[indent:] for line in code.splitlines()) + "\n")
    return blocks


def _file_name(block: str) -> str | None:
    first = block.splitlines()[0]
    match = re.fullmatch(r"# ([\w/]+\.py)", first.strip())
    return match.group(1) if match else None


class _Gauges(MetricSink):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float, dict[str, str]]] = []

    def observe(self, stage: str, metric: str, value: float, labels: dict[str, str]) -> None:
        self.seen.append((stage, metric, value, labels))


def _crops(heights: list[float]) -> PersonCrops:
    n = len(heights)
    boxes = np.array(
        [[10 + 60 * i, 300 - h, 10 + 60 * i + h / 2, 300] for i, h in enumerate(heights)], np.float32
    ).reshape(n, 4)
    tracks = Tracks(
        np.arange(n, dtype=np.int64),
        boxes,
        np.full(n, 0.9, np.float32),
        np.full(n, TrackState.UPDATED, np.uint8),
    )
    return PersonCrops("cam", 0, 0.0, 1000.0, (480, 640), tracks, np.zeros((n, 16, 8, 3), np.uint8))


@pytest.fixture
def plugin_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """configs/replay_basic.yaml with the page's YAML block added, the page's plugin file in the working
    directory (and forgotten again afterwards)."""
    (code,) = [b for b in _blocks("python", "Add a stage") if _file_name(b)]
    module = _file_name(code).removesuffix(".py")
    (tmp_path / f"{module}.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    (block,) = _blocks("yaml", "Add a stage")
    added = yaml.safe_load(block)
    assert added["plugins"] == [module]
    graph = yaml.safe_load((ROOT / "configs" / "replay_basic.yaml").read_text())
    graph["plugins"] = added["plugins"]
    graph["stages"] += added["stages"]
    graph["output_dir"] = str(tmp_path / "out")
    yield graph
    sys.modules.pop(module, None)


def test_the_stage_example_loads_in_a_graph_after_track(plugin_graph: dict[str, Any]) -> None:
    graph = load_app_graph(data=plugin_graph)
    spec = graph.stage("count")
    assert spec.type == "count_people" and stage_types()["count_people"] is spec.stage_class
    assert spec.stage_class.__module__ == "people_counter"  # not under stages.: no contract test runs
    assert [i.source for i in spec.input_specs()] == ["track"]
    assert spec.config.min_height == 40.0


def test_the_stage_example_counts_and_passes_the_message_on(plugin_graph: dict[str, Any]) -> None:
    spec = load_app_graph(data=plugin_graph).stage("count")
    gauges = _Gauges()
    stage = spec.stage_class.from_config(spec.config, StageContext("count", metrics=gauges))
    stage.on_start()
    message = _crops([20.0, 40.0, 120.0])
    assert list(stage.process(message)) == [message]
    assert list(stage.process(_crops([]))) and list(stage.process(EndOfStream("cam", "finished"))) == []
    assert list(stage.on_stop() or ()) == []
    assert gauges.seen == [
        ("count", "people", 2, {"stream": "cam"}),
        ("count", "people", 0, {"stream": "cam"}),
    ]


def test_the_runtime_promises_of_the_stage_section_hold(
    plugin_graph: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt key is refused by name; ``amodal check`` prints the lines the page shows."""
    bad = {**plugin_graph, "stages": [*plugin_graph["stages"][:-1], dict(plugin_graph["stages"][-1])]}
    bad["stages"][-1]["config"] = {"min_heigth": 40}
    with pytest.raises(ConfigError, match="min_heigth"):
        load_app_graph(data=bad)
    print_description(describe_graph(load_app_graph(data=plugin_graph)))
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    (shown,) = _blocks("text", "Add a stage")
    for line in shown.strip().splitlines():
        assert line.strip() in printed


def test_the_backbone_example_builds_by_name_and_in_a_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_registry, "_REGISTERED", {})  # the page's registration ends with the test
    namespace: dict[str, Any] = {"__name__": "docs_extending_backbone"}
    for block in _blocks("python", "Add a backbone"):
        exec(compile(block, str(DOC), "exec"), namespace)  # the asserts are the page's own
    assert "tiny_cnn" in backbone_registry.list_backbones()
    (recipe,) = _blocks("yaml", "Add a backbone")
    from models.attributes.model import AttributeModelConfig, build_attribute_model
    from models.reid.config import OAMNModelConfig

    assert OAMNModelConfig.model_validate(yaml.safe_load(recipe)["model"]).backbone == "tiny_cnn"
    config = AttributeModelConfig(backbone="tiny_cnn", backbone_kwargs={"width": 16})
    model = build_attribute_model(config, ["male", "hat"], load_backbone_weights=False)
    assert model.backbone.feature_dim == 128


def test_the_page_is_linked_from_the_readme() -> None:
    assert "(docs/extending.md)" in (ROOT / "README.md").read_text()
