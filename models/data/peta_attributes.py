"""PETA attribute annotations (Deng et al., ACM MM 2014) read from each subset's ``archive/Label.txt``.

Layout: ``<root>/<subset>/archive/Label.txt`` with lines ``<person id> <attribute tokens...>`` and
images in the same folder whose file names start with that person id (``0001_002.jpg``,
``100_3_FRAME_26_RGB.bmp``). Every image of a person gets that person's labels.

Two label sets:

* ``"peta35"``: the 35 attributes used since DeepMAR (order of ``../shared/ASSETS.md``);
* ``"all"``: the whole PETA vocabulary of the dataset's ReadMe: 65 binary attributes (including
  the four it discards for having < 10 samples) plus the four 11-colour multi-class attributes as
  one-hot binaries (``upperBodyBlack`` ...), 109 in all, in a fixed order so train and test agree;
* or an explicit list of attribute names from that vocabulary.

A few tokens in ``Label.txt`` are spelled differently from the published list
(``footwearSneakers`` -> ``footwearSneaker``); they are mapped and counted. Tokens that are not in the
vocabulary at all are counted as ``unmapped`` and reported, never silently dropped.

Matching a label line to images: the first token of a line is a person id (``0001``), or in some
subsets of the full PETA release an image file name with its extension (``0606.png``). An image is
labelled by the line whose key is its file name, its stem, or its person id (the file name up to the
first ``_`` or ``.``; leading zeros do not matter). Per subset the reader logs the images found, the
images labelled, the images without a label line, the label lines that matched no image and the
label tokens it could not map, and refuses (``ValueError``) a subset where no image got a label: a
layout it does not understand must not turn into an empty or silently shrunken training set.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import is_image

__all__ = [
    "PETA_35_ATTRIBUTES",
    "PETA_BINARY_ATTRIBUTES",
    "PETA_COLOURS",
    "PETA_ALL_ATTRIBUTES",
    "PETA_SUBSETS",
    "PETA_TRAIN_SUBSETS",
    "PETA_TEST_SUBSETS",
    "TOKEN_ALIASES",
    "AttributeRecord",
    "AttributeRecords",
    "ReaderCounts",
    "check_reader_counts",
    "read_peta_attributes",
    "resolve_attribute_names",
]

logger = logging.getLogger(__name__)

PETA_35_ATTRIBUTES: tuple[str, ...] = (
    "accessoryHat",
    "accessoryMuffler",
    "accessoryNothing",
    "accessorySunglasses",
    "hairLong",
    "upperBodyCasual",
    "upperBodyFormal",
    "upperBodyJacket",
    "upperBodyLogo",
    "upperBodyPlaid",
    "upperBodyShortSleeve",
    "upperBodyThinStripes",
    "upperBodyTshirt",
    "upperBodyOther",
    "upperBodyVNeck",
    "lowerBodyCasual",
    "lowerBodyFormal",
    "lowerBodyJeans",
    "lowerBodyShorts",
    "lowerBodyShortSkirt",
    "lowerBodyTrousers",
    "footwearLeatherShoes",
    "footwearSandals",
    "footwearShoes",
    "footwearSneaker",
    "carryingBackpack",
    "carryingOther",
    "carryingMessengerBag",
    "carryingNothing",
    "carryingPlasticBags",
    "personalLess30",
    "personalLess45",
    "personalLess60",
    "personalLarger60",
    "personalMale",
)

# The ReadMe's binary list (ids 1-65), including the four it discards for having < 10 samples.
PETA_BINARY_ATTRIBUTES: tuple[str, ...] = (
    "accessoryFaceMask",
    "accessoryHeadphone",
    "accessoryShawl",
    "personalLess15",
    "personalLess30",
    "personalLess45",
    "personalLess60",
    "personalLarger60",
    "carryingBabyBuggy",
    "carryingBackpack",
    "hairBald",
    "footwearBoots",
    "lowerBodyCapri",
    "carryingOther",
    "carryingShoppingTro",
    "carryingUmbrella",
    "lowerBodyCasual",
    "upperBodyCasual",
    "personalFemale",
    "carryingFolder",
    "lowerBodyFormal",
    "upperBodyFormal",
    "accessoryHairBand",
    "accessoryHat",
    "lowerBodyHotPants",
    "upperBodyJacket",
    "lowerBodyJeans",
    "accessoryKerchief",
    "footwearLeatherShoes",
    "upperBodyLogo",
    "hairLong",
    "lowerBodyLongSkirt",
    "upperBodyLongSleeve",
    "lowerBodyLogo",
    "lowerBodyPlaid",
    "lowerBodyThickStripes",
    "lowerBodyThinStripes",
    "carryingLuggageCase",
    "personalMale",
    "carryingMessengerBag",
    "accessoryMuffler",
    "accessoryNothing",
    "carryingNothing",
    "upperBodyNoSleeve",
    "upperBodyPlaid",
    "carryingPlasticBags",
    "footwearSandals",
    "footwearShoes",
    "hairShort",
    "lowerBodyShorts",
    "upperBodyShortSleeve",
    "lowerBodyShortSkirt",
    "footwearSneaker",
    "footwearStocking",
    "upperBodyThinStripes",
    "upperBodySuit",
    "carryingSuitcase",
    "lowerBodySuits",
    "accessorySunglasses",
    "upperBodySweater",
    "upperBodyThickStripes",
    "lowerBodyTrousers",
    "upperBodyTshirt",
    "upperBodyOther",
    "upperBodyVNeck",
)
PETA_COLOURS: tuple[str, ...] = (
    "Black",
    "Blue",
    "Brown",
    "Green",
    "Grey",
    "Orange",
    "Pink",
    "Purple",
    "Red",
    "White",
    "Yellow",
)
PETA_ALL_ATTRIBUTES: tuple[str, ...] = PETA_BINARY_ATTRIBUTES + tuple(
    f"{part}{colour}" for part in ("footwear", "hair", "lowerBody", "upperBody") for colour in PETA_COLOURS
)
# Label.txt spellings that differ from the ReadMe's list.
TOKEN_ALIASES: dict[str, str] = {
    "footwearSneakers": "footwearSneaker",
    "carryingShoppingTrolley": "carryingShoppingTro",
}
PETA_SUBSETS: tuple[str, ...] = (
    "3DPeS",
    "CAVIAR4REID",
    "CUHK",
    "GRID",
    "i-LID",
    "MIT",
    "PRID",
    "SARC3D",
    "TownCentre",
    "VIPeR",
)
PETA_TRAIN_SUBSETS: tuple[str, ...] = ("3DPeS", "CAVIAR4REID", "GRID", "MIT", "SARC3D", "TownCentre")
PETA_TEST_SUBSETS: tuple[str, ...] = ("VIPeR",)
_ID_SPLIT = re.compile(r"[_.]")


@dataclass(frozen=True)
class AttributeRecord:
    """One image and its binary attribute vector (1 = present, 0 = absent, -1 = unknown)."""

    path: Path
    person_id: str
    labels: np.ndarray
    subset: str = ""


@dataclass
class ReaderCounts:
    """What an attribute reader saw in one subset / split / file (logged, and kept on the records)."""

    images: int = 0  # image files found (or listed by the annotation, for RAP / PA-100K)
    labelled: int = 0  # images that got a label vector (= records produced)
    images_without_label: int = 0  # images whose key matched no label entry
    labels: int = 0  # label entries (lines, rows, identities) read
    labels_without_image: int = 0  # label entries that matched no image
    unmapped_tokens: int = 0  # label tokens / values the reader could not map to an attribute

    def log(self, log: logging.Logger, dataset: str, subset: str) -> None:
        """One INFO line (WARNING when something did not match)."""
        level = (
            logging.WARNING
            if self.images_without_label or self.labels_without_image or self.unmapped_tokens
            else logging.INFO
        )
        log.log(
            level,
            "%s %s: %d images found, %d labelled, %d without a label; %d label entries, %d matched no "
            "image; %d label tokens could not be mapped",
            dataset,
            subset,
            self.images,
            self.labelled,
            self.images_without_label,
            self.labels,
            self.labels_without_image,
            self.unmapped_tokens,
        )


def check_reader_counts(
    counts: ReaderCounts, dataset: str, subset: str, where: str | Path, log: logging.Logger | None = None
) -> None:
    """Log ``counts`` (on ``log``, default this module's logger) and refuse a subset where the reader
    labelled no image (ValueError naming the dataset, the subset and its folder or file)."""
    counts.log(log or logger, dataset, subset)
    if counts.labelled == 0:
        raise ValueError(
            f"{dataset} {subset!r} ({where}): no image could be matched to a label "
            f"({counts.images} images found, {counts.labels} label entries); check the layout"
        )


@dataclass
class AttributeRecords:
    """A sequence of records plus what the reader saw: names, per-subset counts, mapped/unmapped tokens.

    ``labelled`` lists the attributes this data actually labels (None = all of ``names``); a
    vocabulary-mapped set (``models.data.attribute_vocabulary``) has every vocabulary name in ``names``
    and -1 in the columns its dataset does not label.
    """

    records: list[AttributeRecord]
    names: tuple[str, ...]
    subset_counts: dict[str, int] = field(default_factory=dict)
    aliased: Counter = field(default_factory=Counter)
    unmapped: Counter = field(default_factory=Counter)
    outside_selection: Counter = field(default_factory=Counter)
    images_without_label: int = 0
    counts: dict[str, ReaderCounts] = field(default_factory=dict)
    labelled: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[AttributeRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> AttributeRecord:
        return self.records[index]

    def label_matrix(self) -> np.ndarray:
        """All labels stacked, (N, A) float32."""
        if not self.records:
            return np.zeros((0, len(self.names)), np.float32)
        return np.stack([r.labels for r in self.records]).astype(np.float32)


def resolve_attribute_names(attributes: str | Sequence[str]) -> tuple[str, ...]:
    """``"peta35"`` / ``"all"`` / an explicit list checked against the PETA vocabulary."""
    if isinstance(attributes, str):
        if attributes == "peta35":
            return PETA_35_ATTRIBUTES
        if attributes == "all":
            return PETA_ALL_ATTRIBUTES
        raise ValueError(f"attributes must be 'peta35', 'all' or a list of names, got {attributes!r}")
    names = tuple(TOKEN_ALIASES.get(a, a) for a in attributes)
    unknown = [a for a in names if a not in PETA_ALL_ATTRIBUTES]
    if unknown:
        raise ValueError(f"not PETA attributes: {', '.join(unknown)}")
    if len(set(names)) != len(names):
        raise ValueError("attribute list has duplicates")
    return names


def _person_id(file_name: str) -> str:
    return _ID_SPLIT.split(file_name, maxsplit=1)[0]


def _label_key(token: str) -> str:
    """A Label.txt key without an image extension (``0606.png`` -> ``0606``)."""
    stem, dot, _ = token.rpartition(".")
    return stem if dot and is_image(token) else token


def _int_key(key: str) -> int | None:
    return int(key) if key.isdigit() else None


def read_peta_attributes(
    root: str | Path,
    subsets: Sequence[str] | None = None,
    attributes: str | Sequence[str] = "peta35",
) -> AttributeRecords:
    """Read ``Label.txt`` of each subset under ``root`` (the folder holding ``VIPeR/``, ``MIT/``, ...).

    ``subsets=None`` reads every subset present. Images whose key has no label line are counted
    (``images_without_label``) and skipped; label lines that match no image are counted too; a subset
    where nothing matched is a ``ValueError``. Per-subset counts are in ``.counts``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"PETA root {root} is not a directory")
    names = resolve_attribute_names(attributes)
    index = {n: i for i, n in enumerate(names)}
    if subsets is None:
        subsets = [s for s in PETA_SUBSETS if (root / s / "archive" / "Label.txt").is_file()]
        if not subsets:
            raise ValueError(f"no PETA subset with archive/Label.txt under {root}")
    out = AttributeRecords(records=[], names=names)
    for subset in subsets:
        folder = root / subset / "archive"
        label_file = folder / "Label.txt"
        if not label_file.is_file():
            raise ValueError(f"PETA subset {subset!r}: {label_file} not found")
        counts = ReaderCounts()
        by_key: dict[str, np.ndarray] = {}
        lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines()
        for line_no, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            vec = np.zeros(len(names), np.float32)
            for token in parts[1:]:
                if token in TOKEN_ALIASES:
                    out.aliased[token] += 1
                    token = TOKEN_ALIASES[token]
                if token not in PETA_ALL_ATTRIBUTES:
                    out.unmapped[token] += 1
                    counts.unmapped_tokens += 1
                elif token in index:
                    vec[index[token]] = 1.0
                else:
                    out.outside_selection[token] += 1
            key = _label_key(parts[0])
            if key in by_key:
                logger.warning(
                    "%s:%d: person id %s labelled twice; keeping the last line", label_file, line_no, parts[0]
                )
            by_key[key] = vec
        counts.labels = len(by_key)
        by_int = {k: v for k, v in ((_int_key(k), v) for k, v in by_key.items()) if k is not None}
        key_of_int = {_int_key(k): k for k in by_key if _int_key(k) is not None}
        used: set[str] = set()
        for image in sorted(folder.iterdir()):
            if not is_image(image):
                continue
            counts.images += 1
            pid = _person_id(image.name)
            key = next((k for k in (image.name, image.stem, pid) if k in by_key), None)
            if key is None and pid.isdigit() and int(pid) in by_int:
                key = key_of_int[int(pid)]
            if key is None:
                counts.images_without_label += 1
                continue
            used.add(key)
            out.records.append(
                AttributeRecord(path=image, person_id=f"{subset}/{pid}", labels=by_key[key], subset=subset)
            )
            counts.labelled += 1
        counts.labels_without_image = counts.labels - len(used)
        check_reader_counts(counts, "PETA", subset, folder)
        out.images_without_label += counts.images_without_label
        out.subset_counts[subset] = counts.labelled
        out.counts[subset] = counts
    if out.unmapped:
        logger.warning(
            "PETA: %d label tokens could not be mapped: %s", sum(out.unmapped.values()), dict(out.unmapped)
        )
    return out
