"""Attribute readers are honest: PETA Label.txt keys with and without an image extension, counts of
what matched and what did not (logged), and a refusal of a subset where nothing matched. PETA-layout
folders are built in tmp_path (the reader lists file names; it does not decode images)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from models.data.attribute_files import read_attribute_csv, read_pa100k
from models.data.peta_attributes import read_peta_attributes


def _subset(root: Path, subset: str, images: list[str], lines: list[str]) -> Path:
    folder = root / subset / "archive"
    folder.mkdir(parents=True)
    for name in images:
        (folder / name).touch()
    (folder / "Label.txt").write_text("\n".join(lines) + "\n")
    return folder


def _on(recs, person_id: str) -> set[str]:
    rec = next(r for r in recs if r.person_id == person_id)
    return {n for n, v in zip(recs.names, rec.labels, strict=True) if v == 1}


def test_plain_keys_counts_and_log(tmp_path, caplog):
    _subset(
        tmp_path,
        "VIPeR",
        ["000_45_1.bmp", "000_45_2.bmp", "001_90_1.bmp", "099_0_1.bmp"],
        [
            "000 personalMale hairLong footwearSneakers",
            "1 personalFemale accessoryHat wingsOnBack",  # no leading zeros; one unknown token
            "005 carryingBackpack",  # no image has person id 005
        ],
    )
    with caplog.at_level(logging.INFO, logger="models.data.peta_attributes"):
        recs = read_peta_attributes(tmp_path, ["VIPeR"])
    assert len(recs) == 3 and recs.images_without_label == 1
    c = recs.counts["VIPeR"]
    assert (c.images, c.labelled, c.images_without_label) == (4, 3, 1)
    assert (c.labels, c.labels_without_image, c.unmapped_tokens) == (3, 1, 1)
    assert recs.unmapped == {"wingsOnBack": 1} and recs.aliased == {"footwearSneakers": 1}
    assert _on(recs, "VIPeR/000") == {"personalMale", "hairLong", "footwearSneaker"}
    assert _on(recs, "VIPeR/001") == {"accessoryHat"}
    line = next(r for r in caplog.records if "VIPeR" in r.getMessage() and "images found" in r.getMessage())
    assert line.levelno == logging.WARNING  # something did not match
    assert (
        "4 images found, 3 labelled, 1 without a label; 3 label entries, 1 matched no image"
        in line.getMessage()
    )
    assert "1 label tokens could not be mapped" in line.getMessage()


def test_keys_with_an_image_extension_are_matched(tmp_path, caplog):
    _subset(
        tmp_path,
        "CUHK",
        ["0606.png", "0607.png", "0608_1.jpg", "0608_2.jpg"],
        ["0606.png personalMale", "0607.PNG accessoryHat", "0608.jpg hairLong"],
    )
    # a label line may also name one image file of a person with several
    _subset(tmp_path, "PRID", ["0001_a.png", "0001_b.png"], ["0001_b.png carryingBackpack", "0001 hairLong"])
    with caplog.at_level(logging.INFO, logger="models.data.peta_attributes"):
        recs = read_peta_attributes(tmp_path, ["CUHK", "PRID"])
    cuhk = recs.counts["CUHK"]
    assert (cuhk.images, cuhk.labelled, cuhk.labels_without_image, cuhk.images_without_label) == (4, 4, 0, 0)
    assert _on(recs, "CUHK/0606") == {"personalMale"} and _on(recs, "CUHK/0607") == {"accessoryHat"}
    assert sum(r.person_id == "CUHK/0608" for r in recs) == 2
    by_file = {r.path.name: {n for n, v in zip(recs.names, r.labels, strict=True) if v == 1} for r in recs}
    assert by_file["0001_b.png"] == {"carryingBackpack"} and by_file["0001_a.png"] == {"hairLong"}
    assert recs.counts["PRID"].labels_without_image == 0
    assert any("CUHK: 4 images found, 4 labelled" in r.getMessage() for r in caplog.records)


def test_a_subset_where_nothing_matches_is_refused(tmp_path):
    folder = _subset(
        tmp_path, "GRID", ["0001_1_a.jpeg", "0002_1_b.jpeg"], ["0999 personalMale", "0998 hairLong"]
    )
    with pytest.raises(ValueError, match=r"PETA 'GRID' \(.*GRID/archive\): no image could be matched") as err:
        read_peta_attributes(tmp_path, ["GRID"])
    assert "2 images found, 2 label entries" in str(err.value) and str(folder) in str(err.value)
    _subset(tmp_path, "MIT", [], ["00001 personalMale"])
    with pytest.raises(ValueError, match="PETA 'MIT'"):
        read_peta_attributes(tmp_path, ["MIT"])


def test_all_tokens_mode_counts_match_peta35(tmp_path):
    _subset(
        tmp_path,
        "SARC3D",
        ["001_front.bmp", "002_back.bmp"],
        ["001 upperBodyRed personalMale", "002 hairBlack"],
    )
    all_tokens = read_peta_attributes(tmp_path, ["SARC3D"], attributes="all")
    peta35 = read_peta_attributes(tmp_path, ["SARC3D"])
    assert all_tokens.counts == peta35.counts and len(all_tokens) == 2
    assert peta35.outside_selection == {"upperBodyRed": 1, "hairBlack": 1}
    assert np.array_equal(all_tokens.label_matrix().sum(1), [2, 1])


def test_other_readers_count_and_refuse(tmp_path, caplog):
    import scipy.io as sio

    (tmp_path / "a.png").touch()
    (tmp_path / "ann.csv").write_text("image,hat\na.png,1\n")
    with caplog.at_level(logging.INFO, logger="models.data.attribute_files"):
        assert len(read_attribute_csv(tmp_path / "ann.csv")) == 1
    assert any("CSV ann: 1 images found, 1 labelled" in r.getMessage() for r in caplog.records)
    names = np.empty((2, 1), dtype=object)
    names[:, 0] = ["000001.jpg", "000002.jpg"]
    sio.savemat(
        tmp_path / "annotation.mat",
        {"attributes": names[:1], "test_images_name": names, "test_label": np.array([[1], [0]], np.uint8)},
    )
    with pytest.raises(ValueError, match=r"PA-100K 'test' .*no image could be matched"):
        read_pa100k(tmp_path, "test")  # the listed images are not there
    (tmp_path / "000002.jpg").touch()
    recs = read_pa100k(tmp_path, "test")
    assert len(recs) == 1 and recs.counts["test"].labels_without_image == 1
