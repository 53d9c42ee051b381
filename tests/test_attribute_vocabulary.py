"""The shared attribute vocabulary: mapping tables, partial labels in the loss and the metrics, the
Market-1501 reader on a fake .mat, multi-source training and cross-vocabulary evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.attributes.losses import weighted_bce
from models.attributes.metrics import attribute_metrics, choose_thresholds
from models.data.attribute_vocabulary import (
    MAPPINGS,
    MARKET_FIELDS,
    PA100K_ATTRIBUTES,
    RAP_51_ATTRIBUTES,
    VOCABULARY_NAMES,
    DatasetMapping,
    MappingRule,
    mapping_for_names,
    to_vocabulary,
)
from models.data.market_attributes import read_market_attributes
from models.data.peta_attributes import (
    PETA_35_ATTRIBUTES,
    PETA_ALL_ATTRIBUTES,
    AttributeRecord,
    AttributeRecords,
)

REPO = Path(__file__).resolve().parents[1]


# ---- mapping tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, names",
    [
        ("peta", PETA_ALL_ATTRIBUTES),
        ("market", MARKET_FIELDS),
        ("pa100k", PA100K_ATTRIBUTES),
        ("rap", RAP_51_ATTRIBUTES),
    ],
)
def test_every_dataset_name_is_mapped_or_listed_unmapped(dataset, names):
    m = MAPPINGS[dataset]
    assert set(m.source_names) == set(names)
    mapped = {r.source for r in m.rules}
    assert mapped.isdisjoint(m.unmapped) and mapped | set(m.unmapped) == set(names)
    assert all(reason for reason in m.unmapped.values())
    targets = [r.target for r in m.rules]
    assert len(targets) == len(set(targets)), "a vocabulary attribute mapped twice from one dataset"
    assert set(targets) <= set(VOCABULARY_NAMES)


def test_table_sizes_and_peta35_coverage():
    assert (len(MARKET_FIELDS), len(PA100K_ATTRIBUTES), len(RAP_51_ATTRIBUTES)) == (27, 26, 51)
    assert len(set(VOCABULARY_NAMES)) == len(VOCABULARY_NAMES)
    peta = MAPPINGS["peta"]
    assert all(n not in peta.unmapped for n in PETA_35_ATTRIBUTES)
    assert len(peta.labelled(PETA_35_ATTRIBUTES)) == 35
    # a PETA name that is also a vocabulary name means the same thing (identity rule)
    for rule in peta.rules:
        if rule.source in VOCABULARY_NAMES:
            assert rule.target == rule.source and rule.kind == "same"
    # every vocabulary attribute is labelled by at least one dataset
    labelled = set().union(*(MAPPINGS[d].labelled() for d in ("peta", "market", "pa100k", "rap")))
    assert labelled == set(VOCABULARY_NAMES)
    shared = set(peta.labelled(PETA_35_ATTRIBUTES)) & set(MAPPINGS["market"].labelled())
    assert shared == {"personalMale", "accessoryHat", "hairLong", "upperBodyShortSleeve", "carryingBackpack"}
    assert mapping_for_names(list(PETA_35_ATTRIBUTES)) is peta
    assert mapping_for_names(["Female", "Hat"]) is MAPPINGS["pa100k"]
    assert mapping_for_names(["upperRed"]) is None


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match=r"mapped twice: \['personalMale'\]"):
        DatasetMapping(
            "x", ("a", "b"), (MappingRule("personalMale", "a"), MappingRule("personalMale", "b", "inverted"))
        )
    with pytest.raises(ValueError, match=r"neither mapped nor listed unmapped: \['b'\]"):
        DatasetMapping("x", ("a", "b"), (MappingRule("personalMale", "a"),))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        DatasetMapping("x", ("a",), (MappingRule("wings", "a"),))
    with pytest.raises(ValueError, match="'equals' needs a value"):
        MappingRule("personalMale", "gender", "equals")


def test_inverted_and_multi_valued_mappings_on_a_small_example():
    male = VOCABULARY_NAMES.index("personalMale")
    pa = MAPPINGS["pa100k"].apply(np.array([[1.0], [0.0], [-1.0]]), ["Female"])
    assert pa[:, male].tolist() == [0.0, 1.0, -1.0]
    assert (np.delete(pa, male, axis=1) == -1).all()  # nothing else is labelled by one column
    rap = MAPPINGS["rap"].apply(np.array([[0.0, 1.0], [1.0, 0.0]]), ["Female", "AgeLess16"])
    assert rap[:, male].tolist() == [1.0, 0.0]
    assert rap[:, VOCABULARY_NAMES.index("personalAgeLess16")].tolist() == [1.0, 0.0]
    raw = np.zeros((5, len(MARKET_FIELDS)))
    raw[:, MARKET_FIELDS.index("gender")] = [1, 2, 1, 2, 0]  # 0: not a Market value -> unknown
    raw[:, MARKET_FIELDS.index("age")] = [1, 2, 3, 4, 2]
    raw[:, MARKET_FIELDS.index("up")] = [1, 2, 1, 2, 1]
    mk = MAPPINGS["market"].apply(raw, MARKET_FIELDS)
    assert mk[:, male].tolist() == [1.0, 0.0, 1.0, 0.0, -1.0]
    ages = ["personalAgeYoung", "personalAgeTeenager", "personalAgeAdult", "personalAgeOld"]
    onehot = mk[:, [VOCABULARY_NAMES.index(a) for a in ages]]
    assert onehot[:4].tolist() == np.eye(4).tolist()
    assert mk[:, VOCABULARY_NAMES.index("upperBodyLongSleeve")].tolist() == [1, 0, 1, 0, 1]
    assert mk[:, VOCABULARY_NAMES.index("upperBodyShortSleeve")].tolist() == [0, 1, 0, 1, 0]
    # PETA-35 records -> vocabulary: renamed age bins, -1 where PETA-35 does not label
    recs = AttributeRecords(
        records=[AttributeRecord(Path("x.png"), "p", np.eye(35, dtype=np.float32)[30])],  # personalLess30
        names=PETA_35_ATTRIBUTES,
    )
    voc = to_vocabulary(recs, "peta")
    y = voc[0].labels
    assert y[VOCABULARY_NAMES.index("personalAge16to30")] == 1 and y[male] == 0
    assert y[VOCABULARY_NAMES.index("upperBodyBlack")] == -1 and len(voc.labelled) == 35


# ---- partial labels: loss and metrics ---------------------------------------------------------------


def test_masked_loss_equals_the_loss_on_labelled_entries_only():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    targets = torch.tensor(
        [
            [1, 0, -1, 1],
            [0, float("nan"), 1, 0],
            [-1, -1, -1, 1],
            [1, 1, 0, float("nan")],
            [0, 0, 1, 1],
            [1, -1, 0, 0],
        ]
    )
    ratio = np.array([0.3, 0.4, 0.2, 0.6], np.float32)
    loss = weighted_bce(logits, targets, ratio, "reconstruction")
    known = torch.isfinite(targets) & (targets >= 0)
    r = torch.as_tensor(ratio)
    w = torch.where(targets > 0.5, 1 / (2 * r), 1 / (2 * (1 - r)))  # Fabbri eq. 2 weight of each entry
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known], targets[known], weight=w[known], reduction="mean"
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[~known] == 0).all()
    assert (logits.grad[known] != 0).all()
    # an explicit mask gives the same as unknown labels
    mask = known.clone()
    filled = torch.where(known, targets, torch.zeros_like(targets))
    assert weighted_bce(logits, filled, ratio, "reconstruction", mask=mask).item() == pytest.approx(
        loss.item()
    )


def test_metrics_ignore_unlabelled_entries():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (20, 3)).astype(float)
    labels[:, 1] = np.where(rng.random(20) < 0.5, labels[:, 1], 1.0)
    probs = rng.random((20, 3))
    ref = attribute_metrics(probs[:, :2], labels[:, :2], ["a", "b"])
    partial = labels.copy()
    partial[:, 2] = -1  # attribute c unlabelled everywhere
    m = attribute_metrics(probs, partial, ["a", "b", "c"])
    for key in ("mA", "accuracy", "precision", "recall", "f1"):
        assert m[key] == pytest.approx(ref[key])
    assert m["scored_attributes"] == ["a", "b"] and m["unscored_attributes"] == ["c"]
    # predictions on unknown entries change nothing
    partial[:5, 0] = np.nan
    flipped = probs.copy()
    flipped[:5, 0] = 1 - flipped[:5, 0]
    flipped[:, 2] = 1 - flipped[:, 2]
    a, b = (
        attribute_metrics(probs, partial, ["a", "b", "c"]),
        attribute_metrics(flipped, partial, ["a", "b", "c"]),
    )
    for key in ("mA", "accuracy", "precision", "recall", "f1"):
        assert a[key] == pytest.approx(b[key])
    assert a["per_attribute"][0]["positives"] + a["per_attribute"][0]["negatives"] == 15


def test_thresholds_chosen_per_attribute():
    probs = np.array([[0.2, 0.9], [0.3, 0.8], [0.1, 0.7], [0.05, 0.95]])
    labels = np.array([[1, 1], [1, 0], [0, -1], [0, 1]])
    t = choose_thresholds(probs, labels)
    assert 0.1 < t[0] <= 0.2 and 0.8 < t[1] <= 0.9
    assert choose_thresholds(probs, np.zeros((4, 2))).tolist() == [0.5, 0.5]  # no positives: default


# ---- Market-1501 reader on a fake .mat ------------------------------------------------------------------


def _jpg(path: Path, value: int = 90) -> None:
    cv2.imwrite(str(path), np.full((32, 16, 3), value, np.uint8))


def _market_part(ids: list[str], rng: np.random.Generator) -> dict:
    part = {f: rng.integers(1, 3, (1, len(ids))).astype(np.uint8) for f in MARKET_FIELDS}
    part["age"] = rng.integers(1, 5, (1, len(ids))).astype(np.uint8)
    index = np.empty((1, len(ids)), dtype=object)
    index[0, :] = ids
    part["image_index"] = index
    return part


def _fake_market(root: Path) -> dict:
    import scipy.io as sio

    rng = np.random.default_rng(0)
    train, test = _market_part(["0002", "0007"], rng), _market_part(["0001", "0003"], rng)
    train["gender"][0] = [1, 2]
    sio.savemat(root / "market_attribute.mat", {"market_attribute": {"train": train, "test": test}})
    for folder, names in {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c1s2_0001_01.jpg"],
        "query": ["0001_c1s1_001051_00.jpg", "0003_c3s1_000123_00.jpg"],
        "bounding_box_test": ["0001_c2s1_000001_01.jpg", "0000_c1s1_000002_01.jpg", "-1_c1s1_000003_01.jpg"],
    }.items():
        (root / folder).mkdir()
        for i, name in enumerate(names):
            _jpg(root / folder / name, 40 + 30 * i)
    return {"train": train, "test": test}


def test_market_reader_on_a_fake_mat(tmp_path, caplog):
    parts = _fake_market(tmp_path)
    with caplog.at_level(logging.INFO, logger="models.data.market_attributes"):
        train = read_market_attributes(tmp_path, "train")
    assert len(train) == 3 and train.names == VOCABULARY_NAMES and len(train.labelled) == 30
    male = VOCABULARY_NAMES.index("personalMale")
    assert [(r.person_id, r.labels[male]) for r in train] == [
        ("market/0002", 1.0),
        ("market/0002", 1.0),
        ("market/0007", 0.0),
    ]
    assert (train.label_matrix()[:, VOCABULARY_NAMES.index("footwearBoots")] == -1).all()
    c = train.counts["bounding_box_train"]
    assert (c.images, c.labelled, c.labels, c.labels_without_image) == (3, 3, 2, 0)
    with caplog.at_level(logging.INFO, logger="models.data.market_attributes"):
        test = read_market_attributes(tmp_path, "test")
    assert [r.person_id for r in test] == ["market/0001", "market/0003", "market/0001"]  # query, then gallery
    g = test.counts["bounding_box_test"]
    assert (g.images, g.labelled, g.labels_without_image) == (3, 1, 1)  # distractor + junk left out
    assert any("1 distractor and 1 junk" in r.getMessage() for r in caplog.records)
    raw = read_market_attributes(tmp_path, "test", vocabulary=False)
    assert (
        raw.names == MARKET_FIELDS and raw[0].labels[MARKET_FIELDS.index("age")] == parts["test"]["age"][0, 0]
    )
    (tmp_path / "bounding_box_train" / "0002_c1s1_000451_03.jpg").rename(
        tmp_path / "bounding_box_train" / "x.txt"
    )
    for p in (tmp_path / "bounding_box_train").glob("*.jpg"):
        p.rename(p.with_name("9999" + p.name[4:]))  # identities the .mat does not have
    with pytest.raises(ValueError, match="Market-1501 'bounding_box_train'.*no image could be matched"):
        read_market_attributes(tmp_path, "train")


@pytest.mark.shared_assets
def test_market_reader_on_the_real_data(shared_dir):
    root = shared_dir / "datasets" / "Market-1501"
    assert len(read_market_attributes(root, "train")) == 12936
    test = read_market_attributes(root, "test")
    assert test.subset_counts == {"query": 3368, "bounding_box_test": 13115}


# ---- multi-source training and cross-vocabulary evaluation ---------------------------------------------


def _csv_source(root: Path, name: str, columns: list[str], n: int = 8) -> Path:
    folder = root / name
    folder.mkdir()
    rows = ["image,person_id," + ",".join(columns)]
    for i in range(n):
        _jpg(folder / f"{i}.png", 30 + 25 * i)
        rows.append(f"{i}.png,{i}," + ",".join(str((i + k) % 2) for k in range(len(columns))))
    (folder / "ann.csv").write_text("\n".join(rows) + "\n")
    return folder / "ann.csv"


def test_two_step_training_on_two_sources_with_different_labels(tmp_path):
    from amodal.commands import eval_attributes, train_attributes
    from models.attributes.model import load_attribute_model
    from models.attributes.recipe import AttributeRecipe

    a = _csv_source(tmp_path, "a", ["personalMale", "accessoryHat"])
    b = _csv_source(tmp_path, "b", ["personalMale", "carryingBackpack"])
    recipe = AttributeRecipe.model_validate(
        {
            "model": {"arch": "mask", "backbone": "osnet_x0_25", "hidden": [16]},
            "data": {
                "sources": [
                    {"name": "a", "format": "csv", "root": str(a)},
                    {"name": "b", "format": "csv", "root": str(b)},
                ],
                "attributes": "vocabulary",
                "holdout_fraction": 0.25,
                "input_size": [64, 32],
            },
            "optim": {"epochs": 1, "batch_size": 4, "max_iters_per_epoch": 2, "warmup_iters": 0},
            "selection": {"thresholds": "balanced_accuracy"},
            "run": {"device": "cpu", "out_dir": str(tmp_path / "run"), "progress": False},
        }
    )
    payload = train_attributes.train(recipe)
    assert payload["attributes"] == ["personalMale", "accessoryHat", "carryingBackpack"]
    assert np.isfinite(payload["history"][0]["train_loss"])
    assert payload["sources"] == {"a": 8, "b": 8}
    best = tmp_path / "run" / "best.pt"
    _, bundle = load_attribute_model(best)
    assert len(bundle.thresholds) == 3 and bundle.info["vocabulary"] is True

    # evaluation on source a: scores its two attributes, says carryingBackpack could not be
    out = tmp_path / "eval.json"
    argv = ["--weights", str(best), "--data", str(a), "--format", "csv", "--json", str(out), "--quiet"]
    assert eval_attributes.main(argv) == 0
    m = json.loads(out.read_text())
    assert m["scored_attributes"] == ["personalMale", "accessoryHat"]
    assert m["not_scored"]["model_attributes_not_labelled_here"] == ["carryingBackpack"]
    assert len(m["threshold"]) == 2  # the checkpoint's per-attribute thresholds


def test_a_peta35_model_evaluates_on_market_and_peta(tmp_path):
    from amodal.commands import eval_attributes
    from models.attributes.model import (
        AttributeModelBundle,
        AttributeModelConfig,
        build_attribute_model,
        save_attribute_model,
    )

    cfg = AttributeModelConfig(arch="part", backbone="osnet_x0_25")
    model = build_attribute_model(cfg, list(PETA_35_ATTRIBUTES)).eval()
    weights = save_attribute_model(
        tmp_path / "peta35.pt",
        model,
        AttributeModelBundle(model=cfg, attribute_names=list(PETA_35_ATTRIBUTES), input_size=(64, 32)),
    )
    market = tmp_path / "market"
    market.mkdir()
    _fake_market(market)
    out = tmp_path / "market.json"
    argv = [
        "--weights",
        str(weights),
        "--data",
        str(market),
        "--format",
        "market",
        "--json",
        str(out),
        "--quiet",
    ]
    assert eval_attributes.main(argv) == 0
    m = json.loads(out.read_text())
    assert m["num_samples"] == 3 and m["model_naming"] == "peta" and m["data_naming"] == "vocabulary"
    assert {x["name"] for x in m["attribute_matches"]} == {
        "personalMale",
        "accessoryHat",
        "hairLong",
        "upperBodyShortSleeve",
        "carryingBackpack",
    }
    assert len(m["not_scored"]["model_attributes_not_labelled_here"]) == 30
    assert "personalAgeYoung" in m["not_scored"]["labelled_attributes_not_predicted"]

    peta = tmp_path / "peta" / "VIPeR" / "archive"
    peta.mkdir(parents=True)
    for i, name in enumerate(["000_45_1.bmp", "000_45_2.bmp", "001_90_1.bmp"]):
        _jpg(peta / name, 50 + 60 * i)
    (peta / "Label.txt").write_text("000 personalMale personalLess30\n001 personalFemale hairLong\n")
    out = tmp_path / "peta.json"
    argv = ["--weights", str(weights), "--data", str(tmp_path / "peta"), "--json", str(out), "--quiet"]
    assert eval_attributes.main(argv) == 0
    m = json.loads(out.read_text())
    assert m["data_naming"] == "peta" and len(m["scored_attributes"]) == 35 and m["num_samples"] == 3


@pytest.mark.parametrize(
    "name", ["attributes_vocab_osnet_market_peta.yaml", "attributes_vocab_osnet_market_reid.yaml"]
)
def test_vocabulary_recipe_loads_and_names_bad_keys(name):
    from models.attributes.recipe import AttributeRecipe
    from pipeline.configfile import ConfigError, load_config

    path = REPO / "configs" / name
    recipe = load_config(AttributeRecipe, path)
    assert [s.label for s in recipe.data.sources] == ["peta", "market"]
    assert recipe.data.attributes == "vocabulary" and recipe.selection.thresholds == "balanced_accuracy"
    assert recipe.model.arch == "part" and recipe.data.holdout_fraction > 0
    with pytest.raises(ConfigError, match="data.sources replaces data.format"):
        load_config(AttributeRecipe, path, overrides=["data.format=csv"])
    with pytest.raises(ConfigError, match="'vocabulary' or a list of vocabulary names"):
        load_config(AttributeRecipe, path, overrides=["data.attributes=peta35"])
    with pytest.raises(ConfigError, match="holdout_fraction > 0"):
        load_config(AttributeRecipe, path, overrides=["data.holdout_fraction=0"])
