"""One pedestrian-attribute vocabulary for every dataset, and an exact mapping from each dataset into it.

Datasets label different attributes, and the same word can mean different things in two of them:
PETA's ``lowerBodyTrousers`` excludes jeans (PETA labels jeans separately and the two almost never
co-occur), PA-100K's ``Trousers`` does not. A model trained on several datasets, or evaluated on a
dataset it was not trained on, therefore works in this module's vocabulary (``VOCABULARY_NAMES``),
and each dataset reaches it through an explicit table (``MAPPINGS``):

* a rule maps one dataset attribute (or one value of a multi-valued field) to one vocabulary
  attribute: ``same`` (1 -> 1, 0 -> 0), ``inverted`` (1 -> 0, 0 -> 1; PA-100K / RAP ``Female`` ->
  ``personalMale``) or ``equals`` (Market-1501's raw field values: ``gender == 1`` -> ``personalMale``);
* a dataset attribute with no exact equivalent is listed in ``unmapped`` with the reason;
* a vocabulary attribute the dataset does not map stays unknown (-1) for that dataset's images:
  the loss and the metrics leave those entries out (they are not negatives).

Choices (only exact semantics are mapped; near misses are listed as unmapped, not guessed):

* Names follow PETA's camelCase convention (``personalMale``, ``upperBodyBlack``), so the
  attribute-task grouping and the display names of the rest of the code apply unchanged. A PETA
  attribute keeps its name where the vocabulary has it, with PETA's meaning; every one of the
  PETA-35 attributes is in the vocabulary.
* Gender: ``personalMale``. PETA ``personalFemale`` is its exact complement (every PETA person has
  exactly one of the two) and is listed unmapped rather than mapped twice.
* Age: the datasets bin age differently, so each distinct bin is its own attribute and only equal
  bins share one. PETA's ``personalLess15 / Less30 / Less45 / Less60 / Larger60`` are <= 15, 16-30,
  31-45, 46-60, > 60 (its ReadMe) -> ``personalAgeLess16``, ``personalAge16to30``,
  ``personalAge31to45``, ``personalAge46to60``, ``personalAgeOver60``. PA-100K's ``AgeOver60`` equals
  PETA's > 60; its ``AgeLess18`` and ``Age18-60`` straddle PETA's bins and get their own
  (``personalAgeLess18``, ``personalAge18to60``). RAP's ``AgeLess16`` and ``Age31-45`` equal PETA's
  bins by their names; RAP ``Age17-30`` does not (17 vs 16) and is unmapped. Market-1501's 4-class
  ``age`` (young, teenager, adult, old, with no year boundaries published) becomes four attributes of
  its own (``personalAgeYoung`` ... ``personalAgeOld``), one per class.
* Head: ``accessoryGlasses`` (any glasses: PA-100K ``Glasses``, RAP ``hs-Glasses``) is not PETA's
  ``accessorySunglasses``; both are kept. ``hairLong`` is PETA ``hairLong``, Market ``hair == 2``
  (long), RAP ``hs-LongHair``. ``accessoryNothing`` is PETA's "none of PETA's accessories" and
  only PETA maps it.
* Sleeves: Market ``up`` is long sleeve (1) / short sleeve (2) -> ``upperBodyLongSleeve`` and
  ``upperBodyShortSleeve`` from the same field (Market has no sleeveless class; its rare sleeveless
  tops are labelled "short", whereas PETA has ``upperBodyNoSleeve``).
* Lower body: Market ``clothes`` is dress (1) / pants (2); "dress" is its only non-trousers option
  and covers skirts, as PA-100K's ``Skirt&Dress`` does -> ``lowerBodySkirtOrDress``. Market ``down``
  is long (1) / short (2) lower-body clothing -> ``lowerBodyShortLength`` (checked on the human-parsing
  masks: value 2 shows ~14x more leg skin). PA-100K ``Trousers`` (any long trousers) ->
  ``lowerBodyLongTrousers``; PETA ``lowerBodyTrousers`` (trousers other than jeans) keeps its own name.
* Colours: PETA's 11 colours of the upper and lower body (the multi-class attributes as one-hot
  binaries, read with ``attributes="all"``) and Market's 8 upper / 9 lower colours (``gray`` -> Grey).
  Market marks one dominant colour per identity, PETA may mark several: a Market "no" for a second
  colour of a two-coloured garment would be a PETA "yes". Footwear and hair colours are not in the
  vocabulary.
* Bags: ``carryingBackpack`` (all four), ``carryingHandbag`` (Market, PA-100K, RAP),
  ``carryingShoulderBag`` (PA-100K ``ShoulderBag``, RAP ``attach-SingleShoulderBag``), PETA's
  ``carryingMessengerBag`` (a kind of shoulder bag, not all of them: kept apart),
  ``carryingPlasticBags`` (PETA, RAP), and PETA's ``carryingNothing`` / ``carryingOther`` (defined by
  PETA's list of carried things: only PETA maps them). Market's ``bag`` (a bag that is neither a
  backpack nor a handbag, not defined further) is unmapped.
* Footwear: RAP ``shoes-Sport`` = PETA ``footwearSneaker``; ``footwearBoots`` from PETA (all tokens),
  PA-100K ``boots`` and RAP ``shoes-Boots``.

The RAP table is for the 51 attributes of the common protocol in RAP v1's spelling (what
``read_rap`` reads); PA-100K's for its 26. Neither dataset is on this machine: those two tables are
written from the published attribute lists, and the data-dependent claims above were checked only
on PETA and Market-1501.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .peta_attributes import PETA_ALL_ATTRIBUTES, PETA_COLOURS, AttributeRecord, AttributeRecords

__all__ = [
    "VOCABULARY",
    "VOCABULARY_NAMES",
    "VocabularyAttribute",
    "MappingRule",
    "DatasetMapping",
    "MAPPINGS",
    "MARKET_FIELDS",
    "PA100K_ATTRIBUTES",
    "RAP_51_ATTRIBUTES",
    "mapping_for_names",
    "to_vocabulary",
    "select_vocabulary",
]

logger = logging.getLogger(__name__)

RuleKind = Literal["same", "inverted", "equals"]


@dataclass(frozen=True)
class VocabularyAttribute:
    """One binary attribute of the vocabulary."""

    name: str
    description: str


def _colours(part: str, where: str) -> list[VocabularyAttribute]:
    return [
        VocabularyAttribute(f"{part}{c}", f"{where} garment is (partly) {c.lower()}") for c in PETA_COLOURS
    ]


VOCABULARY: tuple[VocabularyAttribute, ...] = tuple(
    [
        VocabularyAttribute("personalMale", "male (0 = female)"),
        VocabularyAttribute("personalAgeLess16", "age 15 or less"),
        VocabularyAttribute("personalAge16to30", "age 16-30"),
        VocabularyAttribute("personalAge31to45", "age 31-45"),
        VocabularyAttribute("personalAge46to60", "age 46-60"),
        VocabularyAttribute("personalAgeOver60", "age over 60"),
        VocabularyAttribute("personalAgeLess18", "age under 18"),
        VocabularyAttribute("personalAge18to60", "age 18-60"),
        VocabularyAttribute("personalAgeYoung", "Market-1501 age class 'young' (no year range published)"),
        VocabularyAttribute("personalAgeTeenager", "Market-1501 age class 'teenager'"),
        VocabularyAttribute("personalAgeAdult", "Market-1501 age class 'adult'"),
        VocabularyAttribute("personalAgeOld", "Market-1501 age class 'old'"),
        VocabularyAttribute("accessoryHat", "wears a hat or cap"),
        VocabularyAttribute("accessoryGlasses", "wears glasses of any kind"),
        VocabularyAttribute("accessorySunglasses", "wears sunglasses"),
        VocabularyAttribute("accessoryMuffler", "wears a muffler / scarf"),
        VocabularyAttribute("accessoryNothing", "none of PETA's head accessories"),
        VocabularyAttribute("hairLong", "long hair"),
        VocabularyAttribute("hairBald", "bald"),
        VocabularyAttribute("upperBodyShortSleeve", "short sleeves"),
        VocabularyAttribute("upperBodyLongSleeve", "long sleeves"),
        VocabularyAttribute("upperBodyNoSleeve", "sleeveless top"),
        VocabularyAttribute("upperBodyCasual", "casual upper-body wear"),
        VocabularyAttribute("upperBodyFormal", "formal upper-body wear"),
        VocabularyAttribute("upperBodyJacket", "jacket"),
        VocabularyAttribute("upperBodyLongCoat", "long coat"),
        VocabularyAttribute("upperBodySuit", "suit jacket"),
        VocabularyAttribute("upperBodySweater", "sweater"),
        VocabularyAttribute("upperBodyTshirt", "T-shirt"),
        VocabularyAttribute("upperBodyVNeck", "V-neck"),
        VocabularyAttribute("upperBodyOther", "PETA's 'other' upper-body garment"),
        VocabularyAttribute("upperBodyLogo", "logo on the top"),
        VocabularyAttribute("upperBodyPlaid", "plaid top"),
        VocabularyAttribute("upperBodyThinStripes", "thin stripes on the top"),
        *_colours("upperBody", "upper-body"),
        VocabularyAttribute("lowerBodyCasual", "casual lower-body wear"),
        VocabularyAttribute("lowerBodyFormal", "formal lower-body wear"),
        VocabularyAttribute("lowerBodyJeans", "jeans"),
        VocabularyAttribute("lowerBodyTrousers", "trousers other than jeans (PETA's usage)"),
        VocabularyAttribute("lowerBodyLongTrousers", "long trousers of any kind, jeans included"),
        VocabularyAttribute("lowerBodyShorts", "shorts"),
        VocabularyAttribute("lowerBodyShortSkirt", "short skirt"),
        VocabularyAttribute("lowerBodySkirtOrDress", "skirt or dress (not trousers)"),
        VocabularyAttribute("lowerBodyShortLength", "short lower-body clothing (above the knee)"),
        *_colours("lowerBody", "lower-body"),
        VocabularyAttribute("footwearLeatherShoes", "leather shoes"),
        VocabularyAttribute("footwearSandals", "sandals"),
        VocabularyAttribute("footwearShoes", "PETA's generic 'shoes'"),
        VocabularyAttribute("footwearSneaker", "sneakers / sport shoes"),
        VocabularyAttribute("footwearBoots", "boots"),
        VocabularyAttribute("carryingBackpack", "backpack"),
        VocabularyAttribute("carryingHandbag", "handbag"),
        VocabularyAttribute("carryingShoulderBag", "shoulder bag (any single-strap bag on the shoulder)"),
        VocabularyAttribute("carryingMessengerBag", "messenger bag"),
        VocabularyAttribute("carryingPlasticBags", "plastic bag(s)"),
        VocabularyAttribute("carryingOther", "PETA's 'other' carried thing"),
        VocabularyAttribute("carryingNothing", "carries none of PETA's carried things"),
    ]
)
VOCABULARY_NAMES: tuple[str, ...] = tuple(a.name for a in VOCABULARY)
_VOCAB_INDEX = {n: i for i, n in enumerate(VOCABULARY_NAMES)}


@dataclass(frozen=True)
class MappingRule:
    """``target`` (vocabulary) <- ``source`` (dataset attribute or field) by ``kind``.

    ``same``: labels 1 / 0 pass through; ``inverted``: 1 <-> 0; ``equals``: positive when the raw
    field value is ``value``, negative for any other valid value (>= 1). Unknown (-1, NaN, a raw 0)
    stays unknown under every kind.
    """

    target: str
    source: str
    kind: RuleKind = "same"
    value: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if (self.kind == "equals") != (self.value is not None):
            raise ValueError(f"rule {self.source} -> {self.target}: 'equals' needs a value, the others none")

    def apply(self, column: np.ndarray) -> np.ndarray:
        """One dataset column -> one vocabulary column (float32, -1 = unknown)."""
        x = np.asarray(column, np.float64)
        out = np.full(x.shape, -1.0, np.float32)
        if self.kind == "equals":
            valid = np.isfinite(x) & (x >= 1)
            out[valid] = (x[valid] == self.value).astype(np.float32)
            return out
        valid = np.isfinite(x) & ((x == 0) | (x == 1))
        out[valid] = x[valid] if self.kind == "same" else 1.0 - x[valid]
        return out


@dataclass(frozen=True)
class DatasetMapping:
    """A dataset's attributes (``source_names``) and how each reaches the vocabulary: by one or more
    ``rules``, or listed in ``unmapped`` with the reason. Checked when built."""

    dataset: str
    source_names: tuple[str, ...]
    rules: tuple[MappingRule, ...]
    unmapped: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(self.source_names)
        if len(known) != len(self.source_names):
            raise ValueError(f"{self.dataset}: duplicate source attribute names")
        mapped = {r.source for r in self.rules}
        for problem, names in (
            ("rules name unknown source attributes", mapped - known),
            ("unmapped lists unknown source attributes", set(self.unmapped) - known),
            ("attributes both mapped and unmapped", mapped & set(self.unmapped)),
            ("attributes neither mapped nor listed unmapped", known - mapped - set(self.unmapped)),
            (
                "rules target names outside the vocabulary",
                {r.target for r in self.rules} - set(VOCABULARY_NAMES),
            ),
        ):
            if names:
                raise ValueError(f"{self.dataset} mapping: {problem}: {sorted(names)}")
        targets = [r.target for r in self.rules]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"{self.dataset} mapping: vocabulary attributes mapped twice: {twice}")

    @property
    def mapped_sources(self) -> tuple[str, ...]:
        """Source attributes with at least one rule, in ``source_names`` order."""
        mapped = {r.source for r in self.rules}
        return tuple(n for n in self.source_names if n in mapped)

    def labelled(self, present: Sequence[str] | None = None) -> tuple[str, ...]:
        """Vocabulary attributes this dataset labels (given the source columns ``present``), in
        vocabulary order."""
        have = set(self.source_names if present is None else present)
        targets = {r.target for r in self.rules if r.source in have}
        return tuple(n for n in VOCABULARY_NAMES if n in targets)

    def apply(self, values: np.ndarray, source_names: Sequence[str]) -> np.ndarray:
        """(N, S) dataset labels (columns ``source_names``) -> (N, V) vocabulary labels, -1 where the
        dataset does not label an attribute."""
        x = np.asarray(values)
        if x.ndim != 2 or x.shape[1] != len(source_names):
            raise ValueError(f"values must be (N, {len(source_names)}), got {x.shape}")
        col = {n: i for i, n in enumerate(source_names)}
        out = np.full((x.shape[0], len(VOCABULARY_NAMES)), -1.0, np.float32)
        for rule in self.rules:
            if rule.source in col:
                out[:, _VOCAB_INDEX[rule.target]] = rule.apply(x[:, col[rule.source]])
        return out

    def output_rules(self, names: Sequence[str]) -> list[MappingRule | None]:
        """For a model's outputs named in this dataset's terms: the rule that turns each output's
        probability into a vocabulary probability (None: no exact equivalent). Only ``same`` /
        ``inverted`` rules apply to a probability; an output with several rules takes the first."""
        by_source: dict[str, MappingRule] = {}
        for rule in self.rules:
            if rule.kind != "equals":
                by_source.setdefault(rule.source, rule)
        return [by_source.get(n) for n in names]


def _same(dataset_names: Sequence[str]) -> list[MappingRule]:
    return [MappingRule(n, n) for n in dataset_names]


# ---- PETA (all 109 names of models.data.peta_attributes; the PETA-35 are among them) -------------
_PETA_AGE = {
    "personalLess15": "personalAgeLess16",
    "personalLess30": "personalAge16to30",
    "personalLess45": "personalAge31to45",
    "personalLess60": "personalAge46to60",
    "personalLarger60": "personalAgeOver60",
}
_PETA_SAME = [n for n in PETA_ALL_ATTRIBUTES if n in _VOCAB_INDEX]
_NOT_IN_VOCAB = "not in the vocabulary"
_PETA_UNMAPPED = {
    "personalFemale": "the exact complement of personalMale (every PETA person has one of the two)",
    "hairShort": "PETA splits hair into short / long / bald; hairLong and hairBald are mapped",
    **{
        n: _NOT_IN_VOCAB
        for n in (
            "accessoryFaceMask",
            "accessoryHeadphone",
            "accessoryShawl",
            "accessoryHairBand",
            "accessoryKerchief",
            "carryingBabyBuggy",
            "carryingShoppingTro",
            "carryingUmbrella",
            "carryingFolder",
            "carryingLuggageCase",
            "carryingSuitcase",
            "footwearStocking",
            "lowerBodyCapri",
            "lowerBodyHotPants",
            "lowerBodyLongSkirt",
            "lowerBodyLogo",
            "lowerBodyPlaid",
            "lowerBodyThickStripes",
            "lowerBodyThinStripes",
            "lowerBodySuits",
            "upperBodyThickStripes",
        )
    },
    **{
        f"{part}{c}": f"{part} colour: {_NOT_IN_VOCAB}" for part in ("footwear", "hair") for c in PETA_COLOURS
    },
}
PETA_MAPPING = DatasetMapping(
    "peta",
    PETA_ALL_ATTRIBUTES,
    tuple(
        [MappingRule(v, k, note="PETA age bin, renamed by its years") for k, v in _PETA_AGE.items()]
        + _same(_PETA_SAME)
    ),
    _PETA_UNMAPPED,
)

# ---- Market-1501 (market_attribute.mat; values 1 = no / first option, 2 = yes / second option) ----
_MARKET_UP = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
_MARKET_DOWN = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
MARKET_FIELDS: tuple[str, ...] = (
    "gender",
    "hair",
    "up",
    "down",
    "clothes",
    "hat",
    "backpack",
    "bag",
    "handbag",
    "age",
    *(f"up{c}" for c in _MARKET_UP),
    *(f"down{c}" for c in _MARKET_DOWN),
)


def _market_colour(c: str) -> str:
    return "Grey" if c == "gray" else c.capitalize()


MARKET_MAPPING = DatasetMapping(
    "market",
    MARKET_FIELDS,
    tuple(
        [
            MappingRule("personalMale", "gender", "equals", 1, "gender: male (1), female (2)"),
            MappingRule("hairLong", "hair", "equals", 2, "hair: short (1), long (2)"),
            MappingRule("upperBodyLongSleeve", "up", "equals", 1, "up: long sleeve (1), short sleeve (2)"),
            MappingRule("upperBodyShortSleeve", "up", "equals", 2, "up: long sleeve (1), short sleeve (2)"),
            MappingRule(
                "lowerBodyShortLength", "down", "equals", 2, "down: long (1), short (2) lower clothing"
            ),
            MappingRule(
                "lowerBodySkirtOrDress", "clothes", "equals", 1, "clothes: dress/skirt (1), pants (2)"
            ),
            MappingRule("accessoryHat", "hat", "equals", 2),
            MappingRule("carryingBackpack", "backpack", "equals", 2),
            MappingRule("carryingHandbag", "handbag", "equals", 2),
            MappingRule("personalAgeYoung", "age", "equals", 1, "age: young (1)"),
            MappingRule("personalAgeTeenager", "age", "equals", 2, "age: teenager (2)"),
            MappingRule("personalAgeAdult", "age", "equals", 3, "age: adult (3)"),
            MappingRule("personalAgeOld", "age", "equals", 4, "age: old (4)"),
        ]
        + [MappingRule(f"upperBody{_market_colour(c)}", f"up{c}", "equals", 2) for c in _MARKET_UP]
        + [MappingRule(f"lowerBody{_market_colour(c)}", f"down{c}", "equals", 2) for c in _MARKET_DOWN]
    ),
    {"bag": "a bag that is neither a backpack nor a handbag, not defined further: no exact equivalent"},
)

# ---- PA-100K (26) ------------------------------------------------------------------------------------
PA100K_ATTRIBUTES: tuple[str, ...] = (
    "Female",
    "AgeOver60",
    "Age18-60",
    "AgeLess18",
    "Front",
    "Side",
    "Back",
    "Hat",
    "Glasses",
    "HandBag",
    "ShoulderBag",
    "Backpack",
    "HoldObjectsInFront",
    "ShortSleeve",
    "LongSleeve",
    "UpperStride",
    "UpperLogo",
    "UpperPlaid",
    "UpperSplice",
    "LowerStripe",
    "LowerPattern",
    "LongCoat",
    "Trousers",
    "Shorts",
    "Skirt&Dress",
    "boots",
)
_VIEW = "viewpoint of the crop, not an attribute of the person"
PA100K_MAPPING = DatasetMapping(
    "pa100k",
    PA100K_ATTRIBUTES,
    (
        MappingRule("personalMale", "Female", "inverted", note="derived: male = not female"),
        MappingRule("personalAgeOver60", "AgeOver60"),
        MappingRule("personalAge18to60", "Age18-60"),
        MappingRule("personalAgeLess18", "AgeLess18"),
        MappingRule("accessoryHat", "Hat"),
        MappingRule("accessoryGlasses", "Glasses"),
        MappingRule("carryingHandbag", "HandBag"),
        MappingRule("carryingShoulderBag", "ShoulderBag"),
        MappingRule("carryingBackpack", "Backpack"),
        MappingRule("upperBodyShortSleeve", "ShortSleeve"),
        MappingRule("upperBodyLongSleeve", "LongSleeve"),
        MappingRule("upperBodyLogo", "UpperLogo"),
        MappingRule("upperBodyPlaid", "UpperPlaid"),
        MappingRule("upperBodyLongCoat", "LongCoat"),
        MappingRule("lowerBodyLongTrousers", "Trousers"),
        MappingRule("lowerBodyShorts", "Shorts"),
        MappingRule("lowerBodySkirtOrDress", "Skirt&Dress"),
        MappingRule("footwearBoots", "boots"),
    ),
    {
        "Front": _VIEW,
        "Side": _VIEW,
        "Back": _VIEW,
        "HoldObjectsInFront": "no equivalent (PETA's carryingOther has a different list)",
        "UpperStride": "stripes of any width; the vocabulary (PETA) has thin stripes only",
        "UpperSplice": _NOT_IN_VOCAB,
        "LowerStripe": _NOT_IN_VOCAB,
        "LowerPattern": _NOT_IN_VOCAB,
    },
)

# ---- RAP v1, the 51 attributes of the common protocol ------------------------------------------------
RAP_51_ATTRIBUTES: tuple[str, ...] = (
    "Female",
    "AgeLess16",
    "Age17-30",
    "Age31-45",
    "BodyFat",
    "BodyNormal",
    "BodyThin",
    "Customer",
    "Clerk",
    "hs-BaldHead",
    "hs-LongHair",
    "hs-BlackHair",
    "hs-Hat",
    "hs-Glasses",
    "hs-Muffler",
    "ub-Shirt",
    "ub-Sweater",
    "ub-Vest",
    "ub-TShirt",
    "ub-Cotton",
    "ub-Jacket",
    "ub-SuitUp",
    "ub-Tight",
    "ub-ShortSleeve",
    "lb-LongTrousers",
    "lb-Skirt",
    "lb-ShortSkirt",
    "lb-Dress",
    "lb-Jeans",
    "lb-TightTrousers",
    "shoes-Leather",
    "shoes-Sport",
    "shoes-Boots",
    "shoes-Cloth",
    "shoes-Casual",
    "attach-Backpack",
    "attach-SingleShoulderBag",
    "attach-HandBag",
    "attach-Box",
    "attach-PlasticBag",
    "attach-PaperBag",
    "attach-HandTrunk",
    "attach-Other",
    "action-Calling",
    "action-Talking",
    "action-Gathering",
    "action-Holding",
    "action-Pusing",
    "action-Pulling",
    "action-CarrybyArm",
    "action-CarrybyHand",
)
_ACTION = "an action, not an appearance attribute"
RAP_MAPPING = DatasetMapping(
    "rap",
    RAP_51_ATTRIBUTES,
    (
        MappingRule("personalMale", "Female", "inverted", note="derived: male = not female"),
        MappingRule("personalAgeLess16", "AgeLess16"),
        MappingRule("personalAge31to45", "Age31-45"),
        MappingRule("hairBald", "hs-BaldHead"),
        MappingRule("hairLong", "hs-LongHair"),
        MappingRule("accessoryHat", "hs-Hat"),
        MappingRule("accessoryGlasses", "hs-Glasses"),
        MappingRule("accessoryMuffler", "hs-Muffler"),
        MappingRule("upperBodySweater", "ub-Sweater"),
        MappingRule("upperBodyTshirt", "ub-TShirt"),
        MappingRule("upperBodyJacket", "ub-Jacket"),
        MappingRule("upperBodySuit", "ub-SuitUp"),
        MappingRule("upperBodyShortSleeve", "ub-ShortSleeve"),
        MappingRule("lowerBodyJeans", "lb-Jeans"),
        MappingRule("lowerBodyShortSkirt", "lb-ShortSkirt"),
        MappingRule("footwearLeatherShoes", "shoes-Leather"),
        MappingRule("footwearSneaker", "shoes-Sport"),
        MappingRule("footwearBoots", "shoes-Boots"),
        MappingRule("carryingBackpack", "attach-Backpack"),
        MappingRule("carryingShoulderBag", "attach-SingleShoulderBag"),
        MappingRule("carryingHandbag", "attach-HandBag"),
        MappingRule("carryingPlasticBags", "attach-PlasticBag"),
    ),
    {
        "Age17-30": "17-30; the vocabulary's bin (PETA's) is 16-30",
        "BodyFat": _NOT_IN_VOCAB,
        "BodyNormal": _NOT_IN_VOCAB,
        "BodyThin": _NOT_IN_VOCAB,
        "Customer": "a role, not an appearance attribute",
        "Clerk": "a role, not an appearance attribute",
        "hs-BlackHair": "hair colour: " + _NOT_IN_VOCAB,
        "ub-Shirt": _NOT_IN_VOCAB,
        "ub-Vest": _NOT_IN_VOCAB,
        "ub-Cotton": _NOT_IN_VOCAB,
        "ub-Tight": _NOT_IN_VOCAB,
        "lb-LongTrousers": "RAP lists jeans apart; whether its long trousers include jeans is not stated",
        "lb-Skirt": "RAP splits skirt / short skirt / dress; none alone equals skirt-or-dress",
        "lb-Dress": "RAP splits skirt / short skirt / dress; none alone equals skirt-or-dress",
        "lb-TightTrousers": _NOT_IN_VOCAB,
        "shoes-Cloth": _NOT_IN_VOCAB,
        "shoes-Casual": _NOT_IN_VOCAB,
        "attach-Box": _NOT_IN_VOCAB,
        "attach-PaperBag": _NOT_IN_VOCAB,
        "attach-HandTrunk": _NOT_IN_VOCAB,
        "attach-Other": "RAP's 'other' covers a different list than PETA's carryingOther",
        **{n: _ACTION for n in RAP_51_ATTRIBUTES if n.startswith("action-")},
    },
)

# ---- the vocabulary itself (a CSV / JSON file whose columns are vocabulary names) --------------------
VOCABULARY_MAPPING = DatasetMapping("vocabulary", VOCABULARY_NAMES, tuple(_same(VOCABULARY_NAMES)))

MAPPINGS: dict[str, DatasetMapping] = {
    m.dataset: m for m in (PETA_MAPPING, MARKET_MAPPING, PA100K_MAPPING, RAP_MAPPING, VOCABULARY_MAPPING)
}


def mapping_for_names(names: Sequence[str]) -> DatasetMapping | None:
    """The mapping whose source names include all of ``names`` (vocabulary first, then PETA, PA-100K,
    RAP); None when no table knows them all (a user's own attribute names)."""
    have = set(names)
    for key in ("vocabulary", "peta", "pa100k", "rap"):
        if have <= set(MAPPINGS[key].source_names):
            return MAPPINGS[key]
    return None


def to_vocabulary(records: AttributeRecords, dataset: str | DatasetMapping) -> AttributeRecords:
    """Records labelled in a dataset's attributes -> the same images labelled in the vocabulary
    (``names`` = every vocabulary name, -1 where unlabelled; ``labelled`` = what this data labels).

    Columns of ``records`` that the mapping does not know are reported (they cannot be used)."""
    mapping = MAPPINGS[dataset] if isinstance(dataset, str) else dataset
    unknown = [n for n in records.names if n not in mapping.source_names]
    if unknown:
        logger.warning(
            "%s: %d columns are not in the %s mapping table and are dropped: %s",
            mapping.dataset,
            len(unknown),
            mapping.dataset,
            unknown,
        )
    labels = mapping.apply(records.label_matrix(), records.names)
    out = [AttributeRecord(r.path, r.person_id, labels[i], r.subset) for i, r in enumerate(records.records)]
    labelled = mapping.labelled(records.names)
    logger.info(
        "%s -> vocabulary: %d of %d vocabulary attributes labelled (%d images)",
        mapping.dataset,
        len(labelled),
        len(VOCABULARY_NAMES),
        len(out),
    )
    return AttributeRecords(
        records=out,
        names=VOCABULARY_NAMES,
        subset_counts=dict(records.subset_counts),
        aliased=records.aliased,
        unmapped=records.unmapped,
        images_without_label=records.images_without_label,
        counts=dict(records.counts),
        labelled=labelled,
    )


def select_vocabulary(records: AttributeRecords, names: Sequence[str]) -> AttributeRecords:
    """Vocabulary-labelled records restricted (and reordered) to ``names``, keeping -1 for unlabelled."""
    unknown = [n for n in names if n not in records.names]
    if unknown:
        raise ValueError(f"not vocabulary attributes: {', '.join(unknown)}")
    idx = [records.names.index(n) for n in names]
    recs = [AttributeRecord(r.path, r.person_id, r.labels[idx], r.subset) for r in records]
    labelled = None if records.labelled is None else tuple(n for n in names if n in records.labelled)
    return AttributeRecords(
        records=recs,
        names=tuple(names),
        subset_counts=dict(records.subset_counts),
        aliased=records.aliased,
        unmapped=records.unmapped,
        images_without_label=records.images_without_label,
        counts=dict(records.counts),
        labelled=labelled,
    )
