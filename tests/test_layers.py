"""The layers: ``pipeline`` (the runtime) and ``models`` (the networks) know nothing above them,
``stages`` (the product's stages) builds on both, ``amodal`` (the application) sits on top.

Checked twice: statically over every import statement in each package, and by running the runtime in
a fresh interpreter, where loading and validating a graph imports no product module unless the
graph (or the application) names it as a plugin.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package -> the project packages it must never import
FORBIDDEN = {
    "pipeline": {"stages", "models", "amodal", "tools"},
    "models": {"pipeline", "stages", "amodal", "tools"},
    "stages": {"amodal", "tools"},
}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_from_the_layers_above_it(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(_imported_roots(path) & FORBIDDEN[package])
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_the_runtime_loads_a_graph_without_importing_a_product_module() -> None:
    code = """
import sys
from pipeline.configfile import ConfigError
from pipeline.graph import load_graph
from pipeline.runtime import EmbeddedRuntime
from pipeline.supervisor import ProcessRuntime
graph = load_graph(data={"plugins": ["tests.test_pipeline_support"], "stages": [
    {"name": "src", "type": "test_source", "config": {"frames": 1}},
    {"name": "sink", "type": "test_collect", "inputs": ["src"], "config": {"path": "x.jsonl"}}]})
assert [s.type for s in graph.stages] == ["test_source", "test_collect"]
try:
    load_graph(data={"stages": [{"name": "detect", "type": "detect"}]})
except ConfigError as exc:
    print("refused:", exc)
print(sorted({m.split(".")[0] for m in sys.modules} & {"stages", "models", "amodal", "torch", "ultralytics"}))
"""
    out = _run(code).splitlines()
    assert out[-1] == "[]"
    assert "refused:" in out[0] and "'detect'" in out[0]


def test_the_application_registers_the_stages_as_plugins_of_the_graphs_it_loads() -> None:
    code = """
import sys
from amodal.graphs import builtin_replay_graph, load_app_graph
graph = load_app_graph(data=builtin_replay_graph(basic=True))
print(graph.plugins, [s.type for s in graph.stages])
"""
    assert _run(code) == "['stages'] ['ingest', 'detect', 'track', 'sqlite_sink', 'jsonl_sink', 'video_sink']"
