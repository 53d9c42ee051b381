"""User CSV/JSON attribute files, shared transforms, recipe configs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.attributes.recipe import AttributeRecipe, cap_images_per_id, split_holdout
from models.data.attribute_files import read_attribute_csv, read_attribute_json, select_attributes
from models.data.transforms import AttributeTransform, occlude_bottom, random_crop, resize
from pipeline.configfile import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, value: int = 128) -> None:
    cv2.imwrite(str(path), np.full((40, 20, 3), value, np.uint8))


def test_csv_and_json(tmp_path):
    for name in ("a.png", "b.png"):
        _image(tmp_path / name)
    (tmp_path / "ann.csv").write_text("image,person_id,male,hat\na.png,1,1,0\nb.png,2,,1\n")
    recs = read_attribute_csv(tmp_path / "ann.csv")
    assert recs.names == ("male", "hat") and len(recs) == 2
    assert recs[1].labels.tolist() == [-1.0, 1.0] and recs[1].person_id == "2"
    assert select_attributes(recs, ["hat"])[0].labels.tolist() == [0.0]
    doc = {
        "attributes": ["male", "hat"],
        "samples": [{"image": "a.png", "labels": {"hat": 1}}, {"image": "b.png", "labels": [0, 0]}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    recs = read_attribute_json(tmp_path / "ann.json")
    assert recs[0].labels.tolist() == [-1.0, 1.0] and recs[1].labels.tolist() == [0.0, 0.0]


def test_file_errors(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "bad.csv").write_text("image,male\na.png,2\n")
    with pytest.raises(ValueError, match="bad.csv:2: label '2' is not 1, 0 or -1"):
        read_attribute_csv(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("image,male\nnope.png,1\n")
    with pytest.raises(ValueError, match="image .*nope.png not found"):
        read_attribute_csv(tmp_path / "missing.csv")
    (tmp_path / "bad.json").write_text(
        json.dumps({"attributes": ["x"], "samples": [{"image": "a.png", "labels": {"y": 1}}]})
    )
    with pytest.raises(ValueError, match="unknown attribute 'y'"):
        read_attribute_json(tmp_path / "bad.json")


def test_transforms_are_seeded_and_shaped():
    img = np.random.default_rng(0).integers(0, 255, (100, 50, 3), dtype=np.uint8)
    t = AttributeTransform((64, 32), train=True)
    a = t(img, np.random.default_rng(5))
    b = t(img, np.random.default_rng(5))
    assert a.shape == (3, 64, 32) and a.dtype == torch.float32 and np.array_equal(a.numpy(), b.numpy())
    assert random_crop(resize(img, (64, 32)), np.random.default_rng(1), pad=4).shape == (64, 32, 3)
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        t(img)


def test_occlude_bottom_covers_the_fraction():
    img = np.zeros((100, 40, 3), np.uint8)
    other = np.full((80, 30, 3), 200, np.uint8)
    out = occlude_bottom(img, other, 0.6)
    assert (out[:40] == 0).all() and (out[40:] == 200).all()
    with pytest.raises(ValueError, match="fraction must be in"):
        occlude_bottom(img, other, 1.2)


@pytest.mark.parametrize("name", ["attributes_part_osnet.yaml", "attributes_mask_osnet.yaml"])
def test_recipes_load(name):
    recipe = load_config(AttributeRecipe, REPO / "configs" / name)
    assert recipe.data.attributes == "peta35" and recipe.run.threads == 1
    with pytest.raises(ConfigError, match="loss.scheme"):
        load_config(AttributeRecipe, REPO / "configs" / name, overrides=["loss.scheme=focal"])


def test_recipe_run_section_takes_overrides_and_refuses_runtime(tmp_path):
    path = REPO / "configs" / "attributes_mask_osnet.yaml"
    out = str(tmp_path / "x")
    recipe = load_config(
        AttributeRecipe, path, overrides=["run.device=cpu", "run.threads=2", f"run.out_dir={out}"]
    )
    assert (recipe.run.device, recipe.run.threads, recipe.run.out_dir) == ("cpu", 2, out)
    assert recipe.run.preload and recipe.run.seed == 0  # the rest of the base recipe's run: section
    partial = AttributeRecipe.model_validate({"run": {"device": "cpu"}}).run
    assert partial.out_dir == "runs/attributes" and partial.preload
    with pytest.raises(
        ConfigError, match=r"runtime: bad value .*: renamed run: write run\.device, run\.seed"
    ):
        load_config(AttributeRecipe, data={"runtime": {"device": "cpu", "seed": 1}})
    with pytest.raises(ConfigError, match="runtime: .*renamed run: write run.threads"):
        load_config(AttributeRecipe, path, overrides=["runtime.threads=2"])


def test_holdout_split_by_person(shared_dir):
    from models.data.peta_attributes import read_peta_attributes

    full = read_peta_attributes(shared_dir / "datasets" / "PETA", ["CAVIAR4REID"])
    recs = cap_images_per_id(full, 6)
    per_id = {pid: sum(r.person_id == pid for r in recs) for pid in {r.person_id for r in full}}
    assert len(per_id) == 72 and max(per_id.values()) == 6 and len(recs) < len(full)
    train, held = split_holdout(recs, 0.2, seed=0)
    assert {r.person_id for r in train}.isdisjoint({r.person_id for r in held})
    assert len(train) + len(held) == len(recs) and 0 < len(held) < len(train)


def _cell(items: list[str]) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    out[:, 0] = items
    return out


def test_pa100k_and_rap_readers_on_synthetic_mat_files(tmp_path):
    """The documented .mat layouts written with scipy (NOT the real annotation files, which are not here)."""
    import scipy.io as sio

    from models.data.attribute_files import read_pa100k, read_rap

    sio.savemat(
        tmp_path / "annotation.mat",
        {
            "attributes": _cell(["Female", "Hat", "Backpack"]),
            "train_images_name": _cell(["000001.jpg", "000002.jpg"]),
            "val_images_name": _cell(["000003.jpg"]),
            "test_images_name": _cell(["000004.jpg"]),
            "train_label": np.array([[1, 0, 1], [0, 1, 0]], np.uint8),
            "val_label": np.array([[1, 1, 1]], np.uint8),
            "test_label": np.array([[0, 0, 1]], np.uint8),
        },
    )
    (tmp_path / "data").mkdir()
    for name in ("000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"):
        (tmp_path / "data" / name).touch()  # the readers check that each listed image exists
    pa = read_pa100k(tmp_path, "trainval")
    assert pa.names == ("Female", "Hat", "Backpack") and len(pa) == 3 and pa[2].labels.tolist() == [1, 1, 1]
    assert read_pa100k(tmp_path, "test")[0].path.name == "000004.jpg"

    partitions = np.empty((1, 1), dtype=object)
    partitions[0, 0] = {"train_index": np.array([[1, 2]]), "test_index": np.array([[3]])}
    labels = np.zeros((3, 53), np.int64)
    labels[2, :3] = [1, 2, 0]  # 2 = RAP's "uncertain"
    sio.savemat(
        tmp_path / "RAP_annotation.mat",
        {
            "RAP_annotation": {
                "imagesname": _cell(["a.png", "b.png", "c.png"]),
                "attribute": _cell([f"att{i}" for i in range(53)]),
                "label": labels,
                "partion": partitions,
            }
        },
    )
    (tmp_path / "RAP_dataset").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "RAP_dataset" / name).touch()
    rap = read_rap(tmp_path, partition=0, split="test")
    assert len(rap.names) == 51 and len(rap) == 1 and rap[0].path.name == "c.png"
    assert rap[0].labels[:3].tolist() == [1.0, -1.0, 0.0]
    assert [r.path.name for r in read_rap(tmp_path, 0, "train")] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="RAP split must be"):
        read_rap(tmp_path, 0, "val")
