"""Attribute categories (task groups) for MAN-PAR's task branches and its 1/R_c loss weighting.

MAN-PAR Table 3 groups PETA's 35 attributes into 6 tasks: full body (gender, age), head
(hat, long hair, muffler, sunglasses, no accessory), upper body, lower body, footwear and
carrying (their "accessories"). Other attribute lists (PETA's all-token mode, RAP, PA-100K, a
user's CSV) are grouped by name prefix, the PETA/RAP naming convention, with "other" as a fallback.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TASK_ORDER", "attribute_task", "group_attributes"]

TASK_ORDER: tuple[str, ...] = (
    "full_body",
    "head",
    "upper_body",
    "lower_body",
    "footwear",
    "carrying",
    "other",
)

_HEAD_NAMES = frozenset(
    {
        "accessoryHat",
        "accessoryMuffler",
        "accessorySunglasses",
        "accessoryNothing",
        "accessoryFaceMask",
        "accessoryHeadphone",
        "accessoryShawl",
        "accessoryHairBand",
        "accessoryKerchief",
    }
)
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("personal", "full_body"),
    ("gender", "full_body"),
    ("age", "full_body"),
    ("female", "full_body"),
    ("male", "full_body"),
    ("body", "full_body"),
    ("hair", "head"),
    ("hs-", "head"),
    ("hs_", "head"),
    ("accessory", "head"),
    ("hat", "head"),
    ("glasses", "head"),
    ("upperbody", "upper_body"),
    ("ub-", "upper_body"),
    ("ub_", "upper_body"),
    ("upper", "upper_body"),
    ("lowerbody", "lower_body"),
    ("lb-", "lower_body"),
    ("lb_", "lower_body"),
    ("lower", "lower_body"),
    ("footwear", "footwear"),
    ("shoes", "footwear"),
    ("boots", "footwear"),
    ("carrying", "carrying"),
    ("attachment", "carrying"),
    ("bag", "carrying"),
    ("backpack", "carrying"),
    ("handbag", "carrying"),
    ("shoulderbag", "carrying"),
    ("holdobjects", "carrying"),
)


def attribute_task(name: str) -> str:
    """The task (category) an attribute belongs to, from MAN-PAR Table 3 or the name's prefix."""
    if name in _HEAD_NAMES:
        return "head"
    low = name.lower()
    for prefix, task in _PREFIXES:
        if low.startswith(prefix):
            return task
    return "other"


def group_attributes(names: Sequence[str]) -> dict[str, list[int]]:
    """Task -> indices of its attributes (tasks in ``TASK_ORDER``, empty tasks left out)."""
    groups: dict[str, list[int]] = {t: [] for t in TASK_ORDER}
    for i, name in enumerate(names):
        groups[attribute_task(name)].append(i)
    return {t: idx for t, idx in groups.items() if idx}
