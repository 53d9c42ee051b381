"""Which outputs of an attribute model can be scored on which columns of a labelled dataset.

A model and a dataset named alike (PETA-35 on PETA) are matched by name; a vocabulary model on a
dataset with its own naming (or the reverse) through the shared attribute vocabulary's rules, where
an inverted rule scores the complement.
"""

from __future__ import annotations

import logging

from models.data.attribute_vocabulary import VOCABULARY_NAMES, DatasetMapping, mapping_for_names
from models.data.peta_attributes import AttributeRecords

__all__ = ["match_attributes"]

logger = logging.getLogger(__name__)


def match_attributes(
    names: list[str], model_naming: str | None, records: AttributeRecords, data_naming: str | None
) -> tuple[list[dict], dict[str, list[str]]]:
    """Which model outputs can be scored on which dataset columns.

    Returns one dict per scored output (``output`` index, ``name``, ``column`` index in the dataset's
    labels, ``vocabulary`` name or None, ``inverted``) and the attributes that could not be scored."""
    labelled = set(records.labelled if records.labelled is not None else records.names)
    column = {n: i for i, n in enumerate(records.names)}
    pairs: list[dict] = []
    model_only: list[str] = []
    if data_naming == model_naming or data_naming is None or model_naming is None:
        if data_naming != model_naming:
            logger.warning("model and data are named differently; matching attribute names literally")
        for i, n in enumerate(names):
            if n in labelled:
                pairs.append(
                    {"output": i, "name": n, "column": column[n], "vocabulary": None, "inverted": False}
                )
            else:
                model_only.append(n)
        scored = {p["name"] for p in pairs}
        data_only = [n for n in records.names if n in labelled and n not in scored]
    else:
        mapping: DatasetMapping = mapping_for_names(names)  # type: ignore[assignment]
        for i, (n, rule) in enumerate(zip(names, mapping.output_rules(names), strict=True)):
            if rule is None or rule.target not in labelled:
                model_only.append(n)
                continue
            pairs.append(
                {
                    "output": i,
                    "name": n,
                    "column": column[rule.target],
                    "vocabulary": rule.target,
                    "inverted": rule.kind == "inverted",
                }
            )
        covered = {p["vocabulary"] for p in pairs}
        data_only = [n for n in VOCABULARY_NAMES if n in labelled and n not in covered]
    return pairs, {
        "model_attributes_not_labelled_here": model_only,
        "labelled_attributes_not_predicted": data_only,
    }
