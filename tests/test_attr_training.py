"""A tiny real training run (CSV data made in the test) that reduces the loss, then evaluation and
ONNX export of the checkpoint it wrote, through the command-line programs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from amodal.commands import eval_attributes, export_attributes, train_attributes
from models.attributes.recipe import AttributeRecipe

REPO = Path(__file__).resolve().parents[1]


def _make_dataset(root: Path, n: int = 16) -> Path:
    """Images whose top half is red or blue (attribute 'upperRed') and bottom dark or light ('lowerDark')."""
    rng = np.random.default_rng(0)
    rows = ["image,person_id,upperRed,lowerDark"]
    for i in range(n):
        red, dark = i % 2, (i // 2) % 2
        img = rng.integers(0, 40, (64, 32, 3), dtype=np.uint8)
        img[:32] += np.array([200, 0, 0] if red else [0, 0, 200], np.uint8)  # RGB
        img[32:] += 20 if dark else 200
        cv2.imwrite(str(root / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        rows.append(f"{i}.png,{i},{red},{dark}")
    (root / "ann.csv").write_text("\n".join(rows) + "\n")
    return root / "ann.csv"


def test_training_reduces_loss_then_eval_and_export(tmp_path):
    csv = _make_dataset(tmp_path)
    recipe = AttributeRecipe.model_validate(
        {
            "model": {"arch": "part", "backbone": "osnet_x0_25", "dropout": 0.0},
            "data": {
                "format": "csv",
                "root": str(csv),
                "attributes": ["upperRed", "lowerDark"],
                "holdout_fraction": 0.0,
                "input_size": [64, 32],
                "crop_pad": 0,
                "jitter": 0.0,
            },
            "loss": {"scheme": "reconstruction"},
            "optim": {"epochs": 8, "batch_size": 8, "lr": 0.01, "warmup_iters": 0},
            "run": {"device": "cpu", "threads": 1, "out_dir": str(tmp_path / "run"), "progress": False},
        }
    )
    payload = train_attributes.train(recipe)
    losses = [e["train_loss"] for e in payload["history"]]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert min(losses[-2:]) < 0.75 * losses[0], losses
    best = tmp_path / "run" / "best.pt"
    assert best.is_file() and (tmp_path / "run" / "metrics.json").is_file()

    # resuming a finished run trains nothing more and keeps the history
    again = train_attributes.train(recipe, resume=True)
    assert [e["train_loss"] for e in again["history"]] == losses

    out = tmp_path / "eval.json"
    assert (
        eval_attributes.main(
            ["--weights", str(best), "--data", str(csv), "--format", "csv", "--json", str(out), "--quiet"]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert metrics["num_samples"] == 16 and 0.0 <= metrics["mA"] <= 1.0 and metrics["backend"] == "torch"

    onnx_json = tmp_path / "export.json"
    assert (
        export_attributes.main(
            ["--weights", str(best), "--onnx", str(tmp_path / "a.onnx"), "--json", str(onnx_json)]
        )
        == 0
    )
    assert json.loads(onnx_json.read_text())["max_abs_diff"] < 1e-4
