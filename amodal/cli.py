"""The ``amodal`` command: every program of the project behind one name.

* ``amodal replay VIDEO...``: recorded footage through the occlusion-aware graph (``amodal.replay``).
* ``amodal run CONFIG``: a graph in its own mode (an edge box: one supervised process per stage).
* ``amodal check CONFIG``: validate and print the resolved graph; starts nothing (``amodal.check``).
* ``amodal keys``: CURVE key pairs for ``tcp://`` links.
* ``amodal train | eval | export NAME ...``, ``build-engine``, ``bench``, ``adapt-grader``,
  ``calibrate-reid``: the model programs (``amodal.commands``), each with its own ``--help``.

Exit codes: 0 done, 2 config error, 3 a source could not be read, 1 runtime failure; on 1, 2 and 3
one line on stderr says why (``amodal.outcome``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from typing import Any

from amodal.check import describe_graph, preflight, print_description
from amodal.commands import COMMANDS, GROUPS
from amodal.graphs import load_app_graph
from amodal.outcome import CommandFailed, failed_sources, finish, report_failure
from amodal.program_env import set_program_env_defaults
from amodal.progress import run_with_signals
from amodal.replay import replay
from pipeline.configfile import ConfigError
from pipeline.logs import setup_logging
from pipeline.runtime import EmbeddedRuntime
from pipeline.security import add_keys_parser, keys_command
from pipeline.urls import mask_url

__all__ = ["main", "build_parser"]

logger = logging.getLogger("amodal")


def build_parser() -> argparse.ArgumentParser:
    """The graph commands' options, and the model programs listed by name (they parse their own)."""
    parser = argparse.ArgumentParser(prog="amodal", description="Occlusion-aware people analytics pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value; STAGE.key addresses the stage named STAGE "
            "(detect.weights=models/yolov8n.pt), other keys the top level (metrics.port=9100)",
        )
        p.add_argument(
            "--log-level",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            default=None,
            help="override logging.level",
        )

    replay_p = sub.add_parser("replay", help="run recorded videos through the graph (embedded mode)")
    replay_p.add_argument("videos", nargs="+", help="video files (or folders of videos) to replay")
    replay_p.add_argument(
        "--config", help="graph YAML (default: the built-in replay graph = configs/replay.yaml)"
    )
    replay_p.add_argument("--out", help="output folder for events.db, events.jsonl and videos (default: out)")
    replay_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    earlier = replay_p.add_mutually_exclusive_group()
    earlier.add_argument(
        "--overwrite",
        action="store_true",
        help="the output folder holds an earlier run's results: delete them first",
    )
    earlier.add_argument(
        "--append",
        action="store_true",
        help="the output folder holds an earlier run's results: add this run to them (same database, "
        "JSONL and gallery; each run's tracks keep their own session)",
    )
    replay_p.add_argument(
        "--basic",
        action="store_true",
        help="detect-and-track only (configs/replay_basic.yaml): no grade, deocclude, describe, identify",
    )
    common(replay_p)

    run = sub.add_parser("run", help="run a graph config until its sources end or Ctrl-C")
    run.add_argument("config", help="graph YAML (e.g. configs/edge.yaml)")
    run.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STAGE",
        help="run only these stages on this host (repeatable; links to the others need explicit "
        "tcp:// endpoints); they run as threads of this process",
    )
    common(run)

    check = sub.add_parser("check", help="validate a graph config and print the resolved graph")
    check.add_argument("config", help="graph YAML")
    check.add_argument("--json", action="store_true", help="print the resolved graph as JSON")
    common(check)

    add_keys_parser(sub)

    for group, text in GROUPS.items():
        group_parser = sub.add_parser(group, help=text, description=text)
        names = group_parser.add_subparsers(dest="program", required=True)
        for words, (_, line) in COMMANDS.items():
            if words[0] == group:
                names.add_parser(words[1], help=line, add_help=False)
    for words, (_, line) in COMMANDS.items():
        if len(words) == 1:
            sub.add_parser(words[0], help=line, add_help=False)
    return parser


def program_for(argv: list[str]) -> tuple[str, list[str]] | None:
    """The model program ``argv`` names (its module under ``amodal.commands``, its own arguments)."""
    for size in (2, 1):
        words = tuple(argv[:size])
        if len(words) == size and words in COMMANDS:
            return COMMANDS[words][0], argv[size:]
    return None


def main(argv: list[str] | None = None) -> int:
    """``amodal ...``: the exit code."""
    set_program_env_defaults()  # before any stage or program imports ultralytics
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        program = program_for(argv)
        if program is not None:
            module, rest = program
            return int(importlib.import_module(f"amodal.commands.{module}").main(rest) or 0)
        args = build_parser().parse_args(argv)
        if args.command == "check":
            return _check(args)
        if args.command == "replay":
            return replay(args)
        if args.command == "keys":
            return keys_command(args)
        return _run(args)
    except CommandFailed as exc:
        return report_failure(exc.code, str(exc))
    except ConfigError as exc:
        return report_failure(2, str(exc))


def _check(args: argparse.Namespace) -> int:
    graph = load_app_graph(args.config, args.overrides)
    preflight(graph)
    desc = describe_graph(graph)
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        print_description(desc)
        print(f"\nOK: {args.config} is valid ({len(graph.stages)} stages)")
    return 0


def _run(args: argparse.Namespace) -> int:
    graph = load_app_graph(args.config, args.overrides)
    preflight(graph, args.only or None)
    setup_logging(args.log_level or graph.logging.level, graph.logging.format)
    if graph.mode == "process" and not args.only:
        from pipeline.supervisor import ProcessRuntime

        runtime: Any = ProcessRuntime(graph)
    else:
        runtime = EmbeddedRuntime(graph, only=args.only or None)
    logger.info("running %s in %s mode (%d stages)", mask_url(args.config), graph.mode, len(graph.stages))
    started = time.monotonic()
    report = run_with_signals(runtime, None, None)
    frames = {name: r.messages_in for name, r in report.stages.items()}
    restarts = {k: v for k, v in report.restarts.items() if v}
    print(
        f"done in {time.monotonic() - started:.1f} s; messages in per stage: {frames}"
        + (f"; restarts: {restarts}" if restarts else "")
    )
    return finish(report) or failed_sources(report.failed_streams)


if __name__ == "__main__":
    sys.exit(main())
