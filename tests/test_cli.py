"""The amodal command: check, exit codes, one-line errors, the built-in replay graph, run + SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from amodal.cli import main
from amodal.graphs import builtin_replay_graph, load_app_graph
from pipeline.configfile import load_yaml
from tests.test_pipeline_support import PLUGIN, frames_and_eos, read_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("basic", [False, True])
def test_the_builtin_replay_graphs_are_the_configs_yaml_files_and_valid(basic: bool) -> None:
    name = "replay_basic.yaml" if basic else "replay.yaml"
    raw = builtin_replay_graph(basic=basic)
    assert raw == load_yaml(REPO / "configs" / name)
    graph = load_app_graph(data=raw)
    assert graph.plugins == ["stages"]  # so a stage process started from it registers them too
    for extra in (
        'plugins=["tests.test_pipeline_support"]',
        'plugins=["stages", "tests.test_pipeline_support"]',
    ):
        # --set cannot drop the application's plugins, and each is listed once
        assert load_app_graph(data=raw, overrides=[extra]).plugins == [
            "stages",
            "tests.test_pipeline_support",
        ]
    assert graph.stages[0].type == "ingest" and graph.stages[-1].type == "video_sink"


def test_check_prints_the_resolved_graph_with_credentials_masked(capsys, monkeypatch, shared_dir) -> None:
    monkeypatch.setenv("AMODAL_DETECTOR", str(shared_dir / "models/yolov8n_int8_openvino_model"))
    monkeypatch.setenv("CAM1_URL", "rtsp://admin:s3cret@10.0.0.5:554/stream1")
    monkeypatch.setenv("CAM2_URL", "rtsp://10.0.0.6/stream1")
    assert main(["check", str(REPO / "configs/edge.yaml"), "--set", "detect.conf=0.5"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "rtsp://admin:***@10.0.0.5:554/stream1" in out
    assert "mode: process   transport: ipc" in out
    assert "<- ingest       policy=drop_oldest hwm=4" in out and "ipc://" in out
    assert "conf = 0.5" in out and "metrics port 9102" in out
    for stage in ("[ingest]", "[detect]", "[track]", "[events]", "[live]"):
        assert stage in out


@pytest.mark.parametrize("json_out", [False, True])
def test_check_masks_query_string_credentials(capsys, monkeypatch, shared_dir, json_out) -> None:
    monkeypatch.setenv("AMODAL_DETECTOR", str(shared_dir / "models/yolov8n_int8_openvino_model"))
    monkeypatch.setenv("CAM1_URL", "rtsp://10.0.0.5/live?token=abc123&channel=1")
    monkeypatch.setenv("CAM2_URL", "rtsp://u:pw1@10.0.0.6/x?user=admin&password=hunter2")
    args = ["check", str(REPO / "configs/edge.yaml")] + (["--json"] if json_out else [])
    assert main(args) == 0
    out = capsys.readouterr().out
    for secret in ("abc123", "hunter2", "pw1"):
        assert secret not in out
    assert "token=***&channel=1" in out and "user=admin&password=***" in out


_TRACKING = ["ingest", "detect", "track"]
_SINKS = ["events", "jsonl", "video"]


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ("replay.yaml", [*_TRACKING, "grade", "deocclude", "describe", "identify", *_SINKS]),
        ("replay_basic.yaml", [*_TRACKING, *_SINKS]),
    ],
)
def test_check_replay_yaml_json(
    capsys, tmp_path: Path, shared_dir: Path, config: str, names: list[str]
) -> None:
    from stages.media.testclip import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=5, width=64, height=48)
    args = [
        "check",
        str(REPO / "configs" / config),
        "--json",
        "--set",
        f"ingest.streams=[{{id: a, source: {clip}}}]",
    ]
    args += ["--set", f"detect.weights={shared_dir / 'models/yolov8n_int8_openvino_model'}"]
    assert main(args) == 0
    import json

    desc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in desc["stages"]] == names
    assert desc["transport"] == "inproc" and desc["stages"][1]["inputs"][0]["policy"] == "block"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["check", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (
            ["check", str(REPO / "configs/replay.yaml"), "--set", "detect.confidence=0.3"],
            r"stages\[1\]\.detect\.config\.confidence: unknown key",
        ),
        (
            ["check", str(REPO / "configs/replay.yaml"), "--set", "links.hwm=lots"],
            r"links\.hwm: bad value 'lots'",
        ),
        (["check", str(REPO / "configs/edge.yaml")], r"environment variable \$\{CAM1_URL\} is not set"),
        (["replay", "no-such-video.mp4"], "video file 'no-such-video.mp4' does not exist"),
    ],
)
def test_config_errors_exit_2_with_one_line(capsys, monkeypatch, args, match) -> None:
    monkeypatch.delenv("CAM1_URL", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("amodal: config error: ") and "\n" not in err
    import re

    assert re.search(match, err), err


def test_missing_default_weights_offline_exit_2_and_say_how_to_fix(tmp_path: Path, capsys) -> None:
    from stages.media.testclip import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=5, width=64, height=48)
    code = main(["replay", str(clip), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("amodal: config error: detect.weights: detector weights 'yolo11n.pt'")
    assert "--set detect.weights=" in err[-1]
    assert not (tmp_path / "out").exists(), "found out before anything started: no outputs"


def test_check_and_replay_name_every_missing_file_before_starting(tmp_path: Path, capsys, shared_dir) -> None:
    weights = str(shared_dir / "models/yolov8n_int8_openvino_model")
    code = main(
        [
            "check",
            str(REPO / "configs/replay.yaml"),
            "--set",
            f"detect.weights={weights}",
            "--set",
            "grade.model.weights=/nope/g.pt",
            "--set",
            "describe.model.onnx=/nope/d.onnx",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    for key in (
        "ingest.streams[0].source",
        "grade.model.weights '/nope/g.pt'",
        "describe.model.onnx '/nope/d.onnx'",
    ):
        assert key in err
    clip = tmp_path / "clip.mp4"
    from stages.media.testclip import write_clip

    write_clip(clip, frames=5, width=64, height=48)
    code = main(
        [
            "replay",
            str(clip),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--set",
            f"detect.weights={weights}",
            "--set",
            "identify.model.weights=/nope/i.pt",
        ]
    )
    assert code == 2 and "identify.model.weights '/nope/i.pt' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_drains_on_sigint_and_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "graph.yaml"
    config.write_text(
        f"plugins: [{PLUGIN}]\n"
        f"output_dir: {tmp_path}\n"
        "stages:\n"
        "  - {name: src, type: test_source, config: {streams: [a], frames: 0, fps: 100}}\n"
        "  - {name: sink, type: test_collect, inputs: [src], config: {path: rows.jsonl}}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "amodal", "run", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rows_path = tmp_path / "rows.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (rows_path.exists() and len(read_rows(rows_path)) > 20):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "done in" in out
    rows = read_rows(tmp_path / "rows.jsonl")
    frames, eos = frames_and_eos(rows)
    assert len(frames) > 20 and eos == [("a", "stopped")] and rows[-1] == {"stopped": True}


def test_replay_into_a_folder_with_earlier_results_refuses_appends_or_overwrites(
    tmp_path: Path, capsys, shared_dir: Path
) -> None:
    import sqlite3

    from stages.media.testclip import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=5, width=64, height=48)
    out = tmp_path / "out"
    base = [
        "replay",
        str(clip),
        "--basic",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"detect.weights={shared_dir / 'models/yolov8n_int8_openvino_model'}",
    ]

    def frames() -> int:
        with sqlite3.connect(out / "events.db") as db:
            return db.execute("SELECT frames FROM streams").fetchone()[0]

    assert main(base) == 0 and frames() == 5
    jsonl = (out / "events.jsonl").read_text()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "already holds the results of an earlier run" in err and "events.db" in err
    assert "--overwrite" in err and "--append" in err
    assert frames() == 5 and (out / "events.jsonl").read_text() == jsonl, "nothing touched"
    assert main([*base, "--append"]) == 0 and frames() == 10
    assert main([*base, "--overwrite"]) == 0 and frames() == 5
    assert (out / "events.jsonl").read_text().count('"end_of_stream"') == 1, "the earlier lines are gone"
    with pytest.raises(SystemExit):
        main([*base, "--append", "--overwrite"])


def test_a_source_that_cannot_be_read_exits_3_after_the_others_and_keeps_its_row(
    tmp_path: Path, capsys, shared_dir: Path
) -> None:
    import json
    import sqlite3

    from amodal.outcome import EXIT_SOURCE_ERROR
    from stages.media.testclip import write_clip

    folder = tmp_path / "videos"
    folder.mkdir()
    write_clip(folder / "good.mp4", frames=5, width=64, height=48)
    (folder / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    out = tmp_path / "out"
    weights = shared_dir / "models/yolov8n_int8_openvino_model"
    code = main(
        [
            "replay",
            str(folder),
            "--basic",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            f"detect.weights={weights}",
        ]
    )
    assert code == EXIT_SOURCE_ERROR == 3
    assert "1 source(s) could not be read: noise" in capsys.readouterr().err
    with sqlite3.connect(out / "events.db") as db:
        rows = {r[0]: r[1:] for r in db.execute("SELECT stream_id, frames, ended_reason FROM streams")}
    assert rows == {"good": (5, "finished"), "noise": (0, "error")}, (
        "every stream has its row, with the reason"
    )
    ends = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert {e["stream_id"]: e["reason"] for e in ends if e["type"] == "end_of_stream"} == {
        "good": "finished",
        "noise": "error",
    }


def test_run_in_process_mode_exits_3_when_a_source_cannot_be_read(tmp_path: Path, capsys) -> None:
    """``amodal run`` finishes the readable streams, then says which one failed (exit 3)."""
    from amodal.outcome import EXIT_SOURCE_ERROR
    from stages.media.testclip import write_clip

    write_clip(tmp_path / "good.mp4", frames=5, width=64, height=48)
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 20000, np.uint8).tobytes())
    config = tmp_path / "graph.yaml"
    config.write_text(
        f"plugins: [{PLUGIN}]\n"
        "mode: process\n"
        f"output_dir: {tmp_path}\n"
        "stages:\n"
        "  - name: ingest\n"
        "    type: ingest\n"
        f"    config: {{streams: [{{id: good, source: {tmp_path / 'good.mp4'}}}, "
        f"{{id: noise, source: {tmp_path / 'noise.mp4'}}}]}}\n"
        "  - {name: relay, type: test_relay, inputs: [ingest], config: {to_crops: true}}\n"
        "  - {name: events, type: jsonl_sink, inputs: [relay], config: {path: events.jsonl}}\n"
    )
    code = main(["run", str(config)])
    assert code == EXIT_SOURCE_ERROR == 3
    assert "1 source(s) could not be read: noise" in capsys.readouterr().err
    ends = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {e["stream_id"]: e["reason"] for e in ends if e["type"] == "end_of_stream"} == {
        "good": "finished",
        "noise": "error",
    }


def test_check_finds_each_options_description() -> None:
    """``amodal check`` prints every option's description beside its value: nested, in lists, in
    optional blocks; a key that is not a field has none."""
    from pipeline.config_docs import option_description
    from stages.deocclude import DeoccludeConfig
    from stages.ingest import IngestConfig

    reconnect = IngestConfig.model_fields["reconnect"].annotation.model_fields["max_s"].description
    assert option_description(IngestConfig, "reconnect.max_s") == reconnect
    assert option_description(IngestConfig, "streams[1].id").startswith("Stream id")
    assert option_description(DeoccludeConfig, "model.backend.device") == "'cpu', 'cuda' or 'cuda:N'."
    # inside the discriminated union of runtime blocks: each member's own fields
    threads = option_description(DeoccludeConfig, "model.backend.preference[1].threads")
    assert threads is not None and threads.startswith("ONNX Runtime intra-op threads")
    cache = option_description(DeoccludeConfig, "model.backend.preference[0].engine_cache_dir")
    assert cache is not None and "TensorRT engines" in cache
    assert option_description(IngestConfig, "reconnect.no_such_key") is None
    assert option_description(IngestConfig, "no_such_key") is None
