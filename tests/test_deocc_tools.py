"""The de-occlusion programs end to end on a tiny PETA-layout dataset made in the test (offline, CPU)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str):
    return importlib.import_module(f"amodal.commands.{name}")


def _make_subset(root: Path, subset: str, persons: int, per_person: int, seed: int) -> None:
    folder = root / subset / "archive"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for pid in range(persons):
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        lines.append(
            f"{pid:04d} personalMale upperBodyCasual" if pid % 2 else f"{pid:04d} hairLong lowerBodyJeans"
        )
        for k in range(per_person):
            img = np.empty((80, 40, 3), np.uint8)
            img[:] = rng.integers(60, 200, 3)
            cv2.rectangle(img, (12, 10), (28, 40), tuple(int(c) for c in top), -1)
            cv2.rectangle(img, (13, 40), (27, 76), tuple(int(c) for c in bottom), -1)
            cv2.circle(img, (20, 6), 5, (200, 170, 150), -1)
            cv2.imwrite(str(folder / f"{pid:04d}_{k}.bmp"), img)
    (folder / "Label.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def peta(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("peta")
    _make_subset(root, "MIT", persons=12, per_person=2, seed=0)
    _make_subset(root, "VIPeR", persons=6, per_person=2, seed=1)
    return root


def test_train_eval_export_roundtrip(peta, tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: {image_size: [32, 16], base_channels: 4, discriminator_channels: 4}\n"
        "loss: {content: mse, lambda_content: 10.0, lambda_pixel: 1.0}\n"
        f"data: {{root: {peta}, train_subsets: [MIT], val_images: 4, occluder_pool: 8}}\n"
        "optim: {batch_size: 4, epochs: 1, max_iters: 3}\n"
        f"run: {{out_dir: {out}, device: cpu, threads: 1, val_every: 2, log_every: 1}}\n"
    )
    assert _tool("train_deocclusion").main(["--config", str(recipe), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and len(metrics["history"]) == 2
    assert (out / "generator.pt").is_file() and list(out.glob("grid_step*.png"))
    grid = cv2.imread(str(next(out.glob("grid_step*.png"))))
    assert grid.shape[1] == 2 * (3 * 16 + 4)  # occluded | generated | ground truth, scaled x2
    # resume continues from last.pt instead of starting again
    assert (
        _tool("train_deocclusion").main(
            ["--config", str(recipe), "--no-progress", "--resume", "--set", "optim.max_iters=4"]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4

    report = tmp_path / "eval.json"
    rc = _tool("eval_deocclusion").main(
        [
            "--weights",
            str(out / "generator.pt"),
            "--data",
            str(peta),
            "--json",
            str(report),
            "--subsets",
            "VIPeR",
            "--backend",
            "onnxruntime",
            "torch",
            "--occluder-pool",
            "6",
            "--grid",
            str(tmp_path / "grid.png"),
        ]
    )
    assert rc == 0
    result = json.loads(report.read_text())
    assert result["backend"] == "onnxruntime" and result["crops"] == 12
    assert set(result["modes"]) == {"silhouette", "bottom", "corner"}
    bottom = result["modes"]["bottom"]
    assert 0.5 <= bottom["occluded_fraction"] <= 0.81
    assert 0 < bottom["ssim_occluded"] < 1 and 0 < bottom["psnr_generated"] < 60
    assert (tmp_path / "grid.png").is_file()

    # Tables 3-6 layout with D's attribute network (random weights here: checks the wiring, not accuracy)
    from models.attributes.model import (
        AttributeModelBundle,
        AttributeModelConfig,
        build_attribute_model,
        save_attribute_model,
    )
    from models.data.peta_attributes import PETA_35_ATTRIBUTES

    attr_cfg = AttributeModelConfig()
    attr_net = build_attribute_model(attr_cfg, list(PETA_35_ATTRIBUTES))
    bundle = AttributeModelBundle(
        model=attr_cfg, attribute_names=list(PETA_35_ATTRIBUTES), input_size=(64, 32)
    )
    save_attribute_model(tmp_path / "attr.pt", attr_net, bundle)
    rc = _tool("eval_deocclusion").main(
        [
            "--weights",
            str(out / "generator.pt"),
            "--data",
            str(peta),
            "--json",
            str(report),
            "--subsets",
            "VIPeR",
            "--modes",
            "silhouette",
            "--occluder-pool",
            "6",
            "--attribute-model",
            str(tmp_path / "attr.pt"),
        ]
    )
    assert rc == 0
    table = json.loads(report.read_text())["modes"]["silhouette"]["attributes"]
    assert set(table) == {"occluded", "generated", "clean"}
    assert all(
        0.0 <= row["mA"] <= 1.0 and set(row) == {"mA", "accuracy", "precision", "recall", "f1"}
        for row in table.values()
    )

    bench = tmp_path / "bench.json"
    rc = _tool("export_deocclusion").main(
        [
            "--weights",
            str(out / "generator.pt"),
            "--onnx",
            str(tmp_path / "g.onnx"),
            "--bench",
            "--runs",
            "1",
            "--batches",
            "1",
            "2",
            "--json",
            str(bench),
        ]
    )
    assert rc == 0
    timings = json.loads(bench.read_text())
    assert timings["max_abs_diff"] <= 1e-4
    assert [r["batch"] for r in timings["timings"]["onnxruntime"]["rows"]] == [1, 2]


def test_recipe_errors_name_the_key(tmp_path):
    from models.deocclusion.recipe import DeocclusionRecipe
    from pipeline.configfile import ConfigError, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: {lambda_attribute: 5.0}\n")
    with pytest.raises(ConfigError, match="attribute_model"):
        load_config(DeocclusionRecipe, bad)
    bad.write_text("optim: {batch_size: 0}\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(DeocclusionRecipe, bad)
    bad.write_text("model: {widht: 3}\n")
    with pytest.raises(ConfigError, match="widht"):
        load_config(DeocclusionRecipe, bad)
    bad.write_text("out_dir: runs/x\nseed: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(DeocclusionRecipe, bad)
    assert "out_dir: bad value 'runs/x': moved: write run.out_dir" in str(err.value)
    assert "seed: bad value 3: moved: write run.seed" in str(err.value)
    with pytest.raises(ConfigError, match=r"device: .*moved: write run\.device"):
        load_config(DeocclusionRecipe, REPO / "configs" / "deocclusion_cpu.yaml", overrides=["device=cpu"])
    shipped = REPO / "configs" / "deocclusion_cpu_bilinear.yaml"
    out = str(tmp_path / "x")
    recipe = load_config(
        DeocclusionRecipe, shipped, overrides=["run.device=cuda", "run.threads=8", f"run.out_dir={out}"]
    )
    assert (recipe.run.device, recipe.run.threads, recipe.run.out_dir) == ("cuda", 8, out)
    assert (recipe.run.val_every, recipe.run.log_every) == (150, 20)  # this file, then its base
    assert recipe.data.seed == 0 and recipe.run.seed == 0  # two seeds: data and training
    partial = DeocclusionRecipe.model_validate({"run": {"threads": 2}}).run
    assert (partial.out_dir, partial.log_every, partial.val_every) == ("runs/deocclusion", 20, 200)
    for name in (
        "deocclusion_cpu.yaml",
        "deocclusion_cpu_scratch.yaml",
        "deocclusion_cpu_bilinear.yaml",
        "deocclusion_paper.yaml",
        "deocclusion_baseline_mse.yaml",
    ):
        assert load_config(DeocclusionRecipe, REPO / "configs" / name).model.image_size[0] % 16 == 0
