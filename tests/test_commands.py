"""Every ``amodal`` command: reachable by its words, with a ``--help`` that describes every option, and
the replay progress counting any message that carries a stream and a sequence number."""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass

import numpy as np
import pytest

from amodal.cli import build_parser, main, program_for
from amodal.commands import COMMANDS, GROUPS, prog_of
from amodal.graphs import builtin_replay_graph, load_app_graph
from amodal.progress import Progress, progress_stage
from pipeline.messages import EndOfStream, Frame, TrackEnd, Tracks

PROGRAMS = sorted(COMMANDS)


def _undescribed(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]


@pytest.mark.parametrize("words", PROGRAMS, ids=" ".join)
def test_each_program_is_reached_by_its_words_and_describes_every_option(words, capsys) -> None:
    module_name, line = COMMANDS[words]
    module = importlib.import_module(f"amodal.commands.{module_name}")
    parser = module.build_parser()
    assert parser.prog == "amodal " + " ".join(words) == prog_of(module.__name__)
    assert _undescribed(parser) == []
    assert line and program_for([*words, "--x"]) == (module_name, ["--x"])
    with pytest.raises(SystemExit) as stop:
        main([*words, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: amodal {' '.join(words)}")
    # a usage example keeps its line breaks (a lone backslash at a docstring line's end joins the
    # lines, and --help shows "... x.pt         --onnx ...")
    joined = [line for line in (module.__doc__ or "").splitlines() if re.search(r"\S {5,}\S", line)]
    assert joined == []


def test_the_graph_commands_describe_every_option_and_the_top_help_lists_every_command(capsys) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("replay", "run", "check", "keys"):
        assert _undescribed(sub.choices[name]) == [], name
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    listed = {words[0] for words in COMMANDS} | set(GROUPS) | {"replay", "run", "check", "keys"}
    assert all(f"    {name}" in top for name in listed)


def test_a_group_without_a_program_name_lists_its_programs(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert all(words[1] in err for words in COMMANDS if words[0] == "train")


def test_a_program_s_config_error_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("run:\n  threads: 1\n  thread: 2\n")
    assert main(["train", "superres", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("amodal: config error:") and "run.thread" in err[0]


# -- progress -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _NewMessage:
    """What a stage added later might send: a stream, a sequence number, nothing we know."""

    stream_id: str
    seq: int


def _frame(seq: int, stream: str = "a", tracks: list[int] | None = None) -> Frame:
    block = None
    if tracks is not None:
        n = len(tracks)
        block = Tracks(
            track_id=np.asarray(tracks, np.int64),
            xyxy=np.zeros((n, 4), np.float32),
            confidence=np.ones(n, np.float32),
            state=np.zeros(n, np.uint8),
        )
    return Frame(stream, seq, None, 0.0, np.zeros((4, 4, 3), np.uint8), tracks=block)


def test_progress_counts_each_stream_and_sequence_number_once_whatever_the_message() -> None:
    progress = Progress("sink")
    sent = (_frame(0, tracks=[1]), _frame(0, tracks=[1, 2]), _NewMessage("a", 1), _frame(2), _frame(0, "b"))
    for message in (*sent, _NewMessage("b", 0)):
        progress("sink", message)
    progress("other", _frame(9))  # another stage's traffic is not counted
    progress("sink", TrackEnd(stream_id="a", seq=2, capture_time=0.0, track_id=np.asarray([1])))
    progress("sink", EndOfStream("a", "finished"))
    assert progress.frames == 4  # a: 0, 1, 2; b: 0
    assert progress.tracks == {("a", 1), ("a", 2)}
    assert [e.stream_id for e in progress.ended] == ["a"]


def test_progress_stage_is_the_deepest_terminal_stage_of_any_graph() -> None:
    full = load_app_graph(data=builtin_replay_graph())
    basic = load_app_graph(data=builtin_replay_graph(basic=True))
    assert progress_stage(full) == "events" and progress_stage(basic) == "events"
    raw = builtin_replay_graph(basic=True)
    raw["stages"] = [s for s in raw["stages"] if s["name"] != "events"]
    raw["stages"].append(
        {"name": "late", "type": "jsonl_sink", "inputs": ["track"], "config": {"path": "x.jsonl"}}
    )
    assert progress_stage(load_app_graph(data=raw)) == "jsonl"
