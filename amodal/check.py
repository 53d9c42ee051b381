"""``amodal check``: the resolved graph as plain data and as text, and the files it needs.

``preflight`` is also what ``replay`` and ``run`` do before they start anything: every weights file,
input video and link key the graph names must exist (exit 2 naming each key otherwise).
"""

from __future__ import annotations

import json
from typing import Any

from amodal.outcome import CommandFailed
from pipeline.config_docs import option_description
from pipeline.graph import GraphConfig
from pipeline.security import check_security
from pipeline.urls import mask_urls_in

__all__ = ["describe_graph", "print_description", "preflight"]


def describe_graph(graph: GraphConfig) -> dict[str, Any]:
    """The resolved graph as plain data (credentials masked): what ``amodal check`` prints."""
    kind = graph.transport_kind
    stages = []
    for index, spec in enumerate(graph.stages):
        links = []
        for item in spec.input_specs():
            tag = f"{item.source}--{spec.name}"
            if kind == "inproc":
                endpoint = f"inproc://amodal-<run>/{tag}"
            elif kind == "ipc":
                endpoint = f"ipc://{graph.transport.ipc_dir or '<private temp dir>'}/{tag}.sock"
            else:
                endpoint = item.endpoint or f"tcp://{graph.transport.tcp_host}:<auto>"
            links.append(
                {
                    "from": item.source,
                    "policy": item.policy or graph.links.policy,
                    "hwm": item.hwm or graph.links.hwm,
                    "endpoint": endpoint,
                }
            )
        cls = spec.stage_class
        entry = {
            "name": spec.name,
            "type": spec.type,
            "class": f"{cls.__module__}.{cls.__name__}",
            "accepts": [t.__name__ for t in cls.accepts],
            "inputs": links,
            "config": json.loads(mask_urls_in(json.dumps(spec.config.model_dump(mode="json")))),
        }
        entry["descriptions"] = {
            key: text
            for key, _ in _flatten(entry["config"])
            if (text := option_description(type(spec.config), key))
        }
        if graph.metrics.port and graph.mode == "process":
            entry["metrics_port"] = graph.metrics.port + 1 + index
        stages.append(entry)
    return {
        "mode": graph.mode,
        "transport": kind,
        "output_dir": graph.output_dir,
        "metrics": f"http://{graph.metrics.host}:{graph.metrics.port}/metrics"
        if graph.metrics.port
        else "off",
        "stages": stages,
    }


def print_description(desc: dict[str, Any]) -> None:
    """``describe_graph``'s data as the text ``amodal check`` prints: one block per stage."""
    print(
        f"mode: {desc['mode']}   transport: {desc['transport']}   output_dir: {desc['output_dir']}   "
        f"metrics: {desc['metrics']}"
    )
    for stage in desc["stages"]:
        accepts = ", ".join(stage["accepts"]) or "- (source)"
        port = f"   metrics port {stage['metrics_port']}" if "metrics_port" in stage else ""
        print(f"\n[{stage['name']}] type={stage['type']} ({stage['class']}) accepts: {accepts}{port}")
        for link in stage["inputs"]:
            print(
                f"  <- {link['from']:<12} policy={link['policy']:<11} hwm={link['hwm']:<5} {link['endpoint']}"
            )
        for key, value in _flatten(stage["config"]):
            text = stage["descriptions"].get(key)
            print(f"    {key} = {json.dumps(value)}" + (f"   # {text}" if text else ""))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config -> [("reconnect.max_s", 30.0), ("streams[0].id", "cam1"), ...]."""
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for key, item in value.items():
            out.extend(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        out = []
        for index, item in enumerate(value):
            out.extend(_flatten(item, f"{prefix}[{index}]"))
        return out
    return [(prefix, value)]


def preflight(graph: GraphConfig, only: list[str] | None = None) -> None:
    """Every file the graph names (weights, input videos, link keys) exists, before anything starts:
    exit 2 naming each key otherwise. ``only``: the stages this host runs (their peers need only their
    public keys here)."""
    local = [spec for spec in graph.stages if not only or spec.name in only]
    problems = [p for spec in local for p in spec.stage_class.check_files(spec.config, spec.name)]
    peers = [spec.name for spec in graph.stages if spec not in local]
    problems += check_security(graph.transport_kind, graph.security, [s.name for s in local], peers)
    if problems:
        raise CommandFailed(2, "; ".join(problems))
