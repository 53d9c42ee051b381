"""The model programs behind ``amodal train | eval | export | build-engine | bench | ...``.

Each module is one command: ``build_parser()`` (its options, each with a one-line description) and
``main(argv) -> exit code``, which tests call directly. ``COMMANDS`` maps the words a user types to
the module and the line ``amodal --help`` shows; the modules are imported only when their command
runs, so ``amodal --help`` and ``amodal replay`` do not pay for torch training code.
"""

from __future__ import annotations

import argparse

__all__ = ["COMMANDS", "GROUPS", "prog_of", "command_parser"]

#: (group, name) or (name,) -> (module under amodal.commands, one-line description)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("train", "reid"): ("train_reid", "train an OAMN ReID model from a recipe (configs/reid_*.yaml)"),
    ("train", "attributes"): (
        "train_attributes",
        "train a pedestrian-attribute model from a recipe (configs/attributes_*.yaml)",
    ),
    ("train", "deocclusion"): (
        "train_deocclusion",
        "train the U-Net de-occlusion generator (configs/deocclusion_*.yaml)",
    ),
    ("train", "two-stage"): (
        "train_two_stage",
        "train one stage of the two-stage de-occluder (configs/deocclusion_two_stage_*.yaml)",
    ),
    ("train", "superres"): ("train_superres", "train a super-resolution net (configs/superres_*.yaml)"),
    ("eval", "reid"): ("eval_reid", "rank-1 / mAP of ReID weights on Market-1501 or a PETA subset"),
    ("eval", "attributes"): ("eval_attributes", "mA / F1 of attribute weights on a labelled test split"),
    ("eval", "deocclusion"): (
        "eval_deocclusion",
        "image, attribute and ReID figures of de-occlusion weights on held-out pairs",
    ),
    ("eval", "grader"): ("eval_grader", "the occlusion grader against labelled or site footage"),
    ("eval", "identity"): ("eval_identity", "track-level identity: unification variants and thresholds"),
    ("eval", "superres"): ("eval_superres", "PSNR / SSIM and attribute mA of super-resolution weights"),
    ("export", "reid"): ("export_reid", "export ReID weights to ONNX (with a parity check)"),
    ("export", "attributes"): ("export_attributes", "export attribute weights to ONNX (with a parity check)"),
    ("export", "deocclusion"): (
        "export_deocclusion",
        "export de-occlusion weights (either kind) to ONNX (with a parity check)",
    ),
    ("build-engine",): ("build_engine", "build (or check) the TensorRT engine of an ONNX model"),
    ("bench",): ("bench_pipeline", "benchmark a graph's stages on real footage against each stage run bare"),
    ("adapt-grader",): ("adapt_grader", "fit the occlusion grader to a site's recording and its tracks"),
    ("calibrate-reid",): ("calibrate_reid", "redo a ReID checkpoint's match-threshold calibration"),
}

#: the command groups and what each holds, for ``amodal --help``
GROUPS: dict[str, str] = {
    "train": "train a model from a YAML recipe",
    "eval": "evaluate weights on a benchmark",
    "export": "export weights to ONNX",
}


def prog_of(module_name: str) -> str:
    """``amodal train reid`` for ``amodal.commands.train_reid``: the name a command's ``--help`` shows."""
    short = module_name.rsplit(".", 1)[-1]
    for words, (module, _) in COMMANDS.items():
        if module == short:
            return "amodal " + " ".join(words)
    raise KeyError(f"{module_name} is not an amodal command")


def command_parser(module_name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser a command's ``build_parser`` starts from: its ``amodal ...`` name and its module
    docstring as the description, shown as written."""
    return argparse.ArgumentParser(
        prog=prog_of(module_name), description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
