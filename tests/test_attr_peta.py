"""PETA attribute reader on the shared data: counts, alias mapping, label parsing."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.peta_attributes import (
    PETA_35_ATTRIBUTES,
    PETA_TRAIN_SUBSETS,
    read_peta_attributes,
    resolve_attribute_names,
)

pytestmark = pytest.mark.shared_assets


def test_counts_and_parsing(shared_dir):
    root = shared_dir / "datasets" / "PETA"
    test = read_peta_attributes(root, ["VIPeR"])
    assert len(test) == 1264 and len(test.names) == 35
    assert test.unmapped == {} and test.images_without_label == 0
    # VIPeR label line "806 upperBodyBlack ... footwearSneakers carryingNothing accessoryNothing"
    rec = next(r for r in test if r.person_id == "VIPeR/806")
    on = {n for n, v in zip(test.names, rec.labels, strict=True) if v == 1}
    assert on == {
        "lowerBodyCasual",
        "lowerBodyTrousers",
        "personalLess30",
        "personalMale",
        "upperBodyCasual",
        "upperBodyLogo",
        "upperBodyShortSleeve",
        "upperBodyTshirt",
        "footwearSneaker",
        "carryingNothing",
        "accessoryNothing",
    }
    train = read_peta_attributes(root, PETA_TRAIN_SUBSETS)
    assert train.subset_counts == {
        "3DPeS": 1012,
        "CAVIAR4REID": 1220,
        "GRID": 1275,
        "MIT": 888,
        "SARC3D": 200,
        "TownCentre": 6967,
    }
    assert train.aliased["footwearSneakers"] > 0 and sum(train.unmapped.values()) == 0
    y = train.label_matrix()
    assert y.shape == (11562, 35) and set(np.unique(y)) == {0.0, 1.0}


def test_all_tokens_mode(shared_dir):
    recs = read_peta_attributes(shared_dir / "datasets" / "PETA", ["SARC3D"], attributes="all")
    assert len(recs.names) == 109 and "upperBodyYellow" in recs.names
    assert recs.outside_selection == {}
    assert recs.label_matrix().sum(1).min() >= 5  # every person has colours + clothing tokens


def test_bad_arguments(tmp_path):
    assert resolve_attribute_names(["footwearSneakers"]) == ("footwearSneaker",)
    assert resolve_attribute_names("peta35") == PETA_35_ATTRIBUTES
    with pytest.raises(ValueError, match="not PETA attributes: wings"):
        resolve_attribute_names(["wings"])
    with pytest.raises(ValueError, match="not found"):
        read_peta_attributes(tmp_path, ["VIPeR"])
